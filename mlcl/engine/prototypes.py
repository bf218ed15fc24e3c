"""SADCL's stage-2 prototypes from a trained q2l (or sadcl) checkpoint, as a file.

:func:`mlcl.methods.sadcl.class_prototypes` over the checkpoint's training split (evaluation
transform, full labels, the holdout images left out as in training); the file is what
``method.prototypes_file`` of a sadcl run reads (a ``torch.save`` dict with ``"prototypes"``
``[C, D]``, or a ``.npy`` array).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mlcl.config import from_dict, with_overrides
from mlcl.engine.checkpoint import check_compatible, load_method, save_checkpoint
from mlcl.engine.loaders import build_split, data_root, split_eval_loader
from mlcl.engine.process_group import resolve_device
from mlcl.errors import CheckpointError
from mlcl.methods.sadcl import class_prototypes
from mlcl.models.semantic_decoder import Query2Label


def write_prototypes(
    checkpoint: str | Path,
    out: str | Path,
    *,
    ema: bool = False,
    device: str = "auto",
    overrides: Sequence[str] | None = None,
    threshold: float = 0.85,
) -> torch.Tensor:
    """Class prototypes ``[C, D]`` of a semantic-decoder checkpoint, written to ``out``."""
    torch_device = resolve_device(device)
    method, state = load_method(checkpoint, ema=ema, device=torch_device)
    if not isinstance(getattr(method, "model", None), Query2Label):
        raise CheckpointError(
            f"{checkpoint}: a {method.name!r} run has no semantic decoder; SADCL's prototypes "
            "come from a q2l or sadcl checkpoint"
        )
    config = from_dict(state["config"])
    if overrides:
        config = with_overrides(config, list(overrides))
    dataset = build_split(config, "train", data_root(config), train=False)
    check_compatible(state, checkpoint, method.name, dataset.class_names)
    loader = split_eval_loader(config, dataset, torch_device)
    prototypes = class_prototypes(method.model, loader, threshold)
    out = Path(out)
    if out.suffix == ".npy":
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, prototypes.numpy())
    else:
        save_checkpoint(
            {
                "prototypes": prototypes,
                "class_names": list(state["class_names"]),
                "checkpoint": str(checkpoint),
                "threshold": threshold,
            },
            out,
        )
    return prototypes
