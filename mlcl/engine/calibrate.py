"""Per-class thresholds that maximise each class's F1 on images training never saw.

One threshold of 0.5 for every class suits few of them: a rare class's probabilities rarely reach
it. :func:`calibrate_thresholds` picks, per class, the probability cut with the best F1 on the
"holdout" split (``data.holdout`` of the training images, drawn once and left out of training),
and stores it in the checkpoint, where ``mlcl predict`` and ``mlcl evaluate`` (``CF1@cal``,
``OF1@cal``) read it. The validation split is refused: thresholds tuned on the images that are
reported on would make those F1 scores optimistic.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mlcl.config import from_dict, with_overrides
from mlcl.engine.checkpoint import check_compatible, load_method, save_checkpoint
from mlcl.engine.evaluate import collect_outputs
from mlcl.engine.loaders import build_split, data_root, split_eval_loader
from mlcl.engine.process_group import resolve_device
from mlcl.errors import ConfigError, UsageError

DEFAULT_THRESHOLD = 0.5


def best_f1_thresholds(probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per class, the threshold ``[C]`` with the highest F1 of ``probabilities ≥ threshold``
    against bool ``targets`` ``[N, C]``: halfway between the last score kept and the next one.
    A class without a positive keeps 0.5."""
    scores, order = probabilities.float().sort(dim=0, descending=True)  # [N, C]
    hits = targets.gather(0, order).float()
    true_positives = hits.cumsum(0)  # keeping the k + 1 best
    kept = torch.arange(1, len(scores) + 1, dtype=torch.float32)[:, None]
    f1 = 2 * true_positives / (kept + hits.sum(0))  # [N, C]
    # Only the last of equal scores is a possible cut.
    f1[:-1][scores[:-1] == scores[1:]] = -1
    best = f1.argmax(dim=0)  # [C]
    columns = torch.arange(scores.shape[1])
    below = torch.cat([scores, torch.zeros_like(scores[:1])])[best + 1, columns]
    thresholds = (scores[best, columns] + below) / 2
    return torch.where(targets.any(dim=0), thresholds, torch.tensor(DEFAULT_THRESHOLD))


def stored_thresholds(checkpoint: dict[str, Any], ema: bool = False) -> torch.Tensor | None:
    """The calibrated thresholds ``[C]`` of a checkpoint's weights (EMA or not), if any."""
    calibrated = checkpoint.get("thresholds", {}).get("ema" if ema else "model")
    return None if calibrated is None else calibrated["values"].float()


def calibrate_thresholds(
    checkpoint: str | Path,
    *,
    split: str = "holdout",
    ema: bool = False,
    device: str = "auto",
    overrides: Sequence[str] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Thresholds ``[C]`` that maximise each class's F1 on ``split`` ("holdout"), also written
    into the checkpoint (``checkpoint["thresholds"]["ema" | "model"]``, with the split)."""
    if split == "val":
        raise UsageError(
            "thresholds are not calibrated on 'val', the split the metrics report on (they would "
            "flatter its F1); calibrate on 'holdout' (data.holdout > 0 at training)"
        )
    torch_device = resolve_device(device)
    method, state = load_method(checkpoint, ema=ema, device=torch_device)
    trained = from_dict(state["config"])
    config = with_overrides(trained, list(overrides)) if overrides else trained
    if config.data.holdout != trained.data.holdout:
        raise ConfigError(
            f"data.holdout: {config.data.holdout} differs from the training's "
            f"{trained.data.holdout}; the holdout split must be the images training left out"
        )
    dataset = build_split(config, split, data_root(config), train=False)
    check_compatible(state, checkpoint, method.name, dataset.class_names)
    loader = split_eval_loader(config, dataset, torch_device)
    logits = collect_outputs(method, loader, torch_device, progress=progress)["logits"]
    thresholds = best_f1_thresholds(logits.sigmoid(), dataset.full_labels)
    calibrated = dict(state.get("thresholds", {}))
    calibrated["ema" if ema else "model"] = {
        "values": thresholds,
        "split": split,
        "num_images": len(dataset),
    }
    state["thresholds"] = calibrated
    save_checkpoint(state, checkpoint)
    return thresholds
