"""The metrics of the multi-label literature: mAP, and CP / CR / CF1 / OP / OR / OF1.

Every function takes ``scores`` ``[N, C]`` (logits or probabilities: any score whose order
ranks the images) and ``targets`` ``[N, C]`` (bool, or numbers in {0, 1}), one row per image and
one column per class.

**Average precision.** For one class, sort the images by decreasing score and let ``P_n`` and
``R_n`` be the precision and recall when every image scoring at least the n-th *distinct* score
is called positive. Then

    AP = Σ_n (R_n − R_{n−1}) · P_n,        R_0 = 0,

the non-interpolated AP of scikit-learn's ``average_precision_score``. Images with equal scores
enter the ranking together, so the result does not depend on how a sort breaks ties. mAP is the
mean of AP over the classes with at least one positive, in percent, as papers report it.

**Threshold metrics.** An entry is predicted positive when its probability is at least the
threshold (or, for the top-k variants, when it is among its image's k highest scores). With, per
class c, ``Nc`` correct positive predictions, ``Np`` positive predictions and ``Ng`` positive
targets:

    CP = mean_c Nc/Np,   CR = mean_c Nc/Ng,   CF1 = 2·CP·CR / (CP + CR),
    OP = Σ Nc / Σ Np,    OR = Σ Nc / Σ Ng,    OF1 = 2·OP·OR / (OP + OR).

As in ML-GCN's evaluation code (and the many derived from it), a class with no positive prediction
has precision 0. Per-class means run over the same classes as mAP (those with a positive target;
ML-GCN divides by C, which is the same on COCO, VOC and NUS-WIDE, where every class has one).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mlcl.collectives import all_gather_rows

__all__ = [
    "MultiLabelMetrics",
    "average_precision",
    "mean_average_precision",
    "multilabel_metrics",
    "threshold_metrics",
    "top_k_metrics",
]


def _check_inputs(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes and values; return float64 scores and bool targets, both on the CPU."""
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"scores and targets must both be [N, C]; got {tuple(scores.shape)} and "
            f"{tuple(targets.shape)}"
        )
    scores = scores.detach().to("cpu", torch.float64)
    targets = targets.detach().cpu()
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    if targets.dtype != torch.bool:
        if not ((targets == 0) | (targets == 1)).all():
            raise ValueError("targets must be bool or hold only 0 and 1")
        targets = targets == 1
    return scores, targets


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Average precision of every class, ``[C]`` float64 in [0, 1]; NaN for a class with no
    positive target.

    Non-interpolated AP over distinct score thresholds (see the module docstring), equal to
    scikit-learn's ``average_precision_score`` column by column. It is neither the 11-point AP of
    PASCAL VOC 2007 (the mean over recalls t = 0, 0.1, ..., 1 of the best precision at recall
    ≥ t) nor the all-point interpolated AP of VOC 2010 on (which replaces every precision by the
    best precision at any higher recall, and so is never below the value here; the 11-point
    average samples that curve coarsely and may land on either side). Unlike evaluation code
    that sorts and walks the ranking one image at a time, ties are one threshold: a tie between
    a positive and a negative counts neither first.
    """
    scores, targets = _check_inputs(scores, targets)
    num_images = scores.shape[0]
    if num_images == 0:
        return torch.full((scores.shape[1],), math.nan, dtype=torch.float64)
    sorted_scores, order = torch.sort(scores, dim=0, descending=True, stable=True)  # [N, C]
    sorted_targets = targets.gather(0, order).to(torch.float64)  # [N, C]
    true_positives = sorted_targets.cumsum(0)  # [N, C]: positives ranked at or above row n
    rank = torch.arange(1, num_images + 1, dtype=torch.float64).unsqueeze(1)  # [N, 1]
    precision = true_positives / rank

    # Only the last row of each run of equal scores is a threshold.
    is_threshold = torch.ones_like(sorted_scores, dtype=torch.bool)
    is_threshold[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    # True positives at the previous threshold: cumsum is non-decreasing, so a running maximum of
    # its values at thresholds, shifted down by one row, gives it.
    at_threshold = torch.where(is_threshold, true_positives, 0.0)
    previous = torch.cummax(at_threshold, dim=0).values
    previous = torch.cat([torch.zeros_like(previous[:1]), previous[:-1]])
    new_positives = torch.where(is_threshold, true_positives - previous, 0.0)  # [N, C]

    num_positives = true_positives[-1]  # [C]
    ap = (new_positives * precision).sum(0) / num_positives
    return torch.where(num_positives > 0, ap, math.nan)


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """mAP in percent: the mean of :func:`average_precision` over the classes with at least one
    positive target (NaN when no class has one)."""
    ap = average_precision(scores, targets)
    return _mean_percent(ap)


def _mean_percent(values: torch.Tensor) -> float:
    kept = values[~torch.isnan(values)]
    return 100.0 * kept.mean().item() if kept.numel() else math.nan


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _count_metrics(predicted: torch.Tensor, targets: torch.Tensor, suffix: str = "") -> dict:
    """CP, CR, CF1, OP, OR, OF1 in percent from bool ``predicted`` and ``targets`` ``[N, C]``."""
    correct = (predicted & targets).sum(0).to(torch.float64)  # [C]  Nc
    num_predicted = predicted.sum(0).to(torch.float64)  # [C]  Np
    num_targets = targets.sum(0).to(torch.float64)  # [C]  Ng
    evaluated = num_targets > 0
    # A class never predicted positive has precision 0 (ML-GCN's evaluation code).
    class_precision = correct / num_predicted.clamp(min=1)
    class_recall = correct / num_targets.clamp(min=1)
    cp = class_precision[evaluated].mean().item() if evaluated.any() else 0.0
    cr = class_recall[evaluated].mean().item() if evaluated.any() else 0.0
    op = correct.sum().item() / max(num_predicted.sum().item(), 1.0)
    overall_recall = correct.sum().item() / max(num_targets.sum().item(), 1.0)
    values = {
        "CP": cp,
        "CR": cr,
        "CF1": _f1(cp, cr),
        "OP": op,
        "OR": overall_recall,
        "OF1": _f1(op, overall_recall),
    }
    return {name + suffix: 100.0 * value for name, value in values.items()}


def threshold_metrics(
    scores: torch.Tensor,
    targets: torch.Tensor,
    threshold: float | torch.Tensor = 0.5,
    from_logits: bool = False,
    suffix: str = "",
) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 (percent, keys + ``suffix``) when every entry with probability
    ≥ ``threshold`` is predicted positive; a ``[C]`` tensor gives each class its own threshold
    (calibrated ones).

    With ``from_logits=True`` the scores are logits and the probability is their sigmoid; the
    comparison is made on the logit side, ``logit ≥ log(t / (1 − t))``, which is the same test
    without the sigmoid's rounding to 1.0 for large logits.
    """
    scores, targets = _check_inputs(scores, targets)
    if isinstance(threshold, torch.Tensor):
        threshold = threshold.to(torch.float64)
        if from_logits and not bool(((threshold > 0) & (threshold < 1)).all()):
            raise ValueError("thresholds must lie in (0, 1) for logits")
        cut = torch.logit(threshold) if from_logits else threshold
        return _count_metrics(scores.to(torch.float64) >= cut, targets, suffix)
    if from_logits:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1) for logits; got {threshold}")
        cut = math.log(threshold / (1.0 - threshold))
    else:
        cut = threshold
    return _count_metrics(scores >= cut, targets, suffix)


def top_k_metrics(scores: torch.Tensor, targets: torch.Tensor, k: int = 3) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 (percent, keys suffixed ``_top{k}``) when each image's ``k``
    highest-scoring classes are predicted positive, whatever their scores (every class when
    there are fewer than ``k``).

    Ties are broken towards the lower class index, so the result is deterministic. (ML-GCN's code
    additionally drops a top-k class whose probability is below 0.5; here, as in the CNN-RNN
    paper that introduced top-3 evaluation, exactly k labels are predicted per image.)
    """
    scores, targets = _check_inputs(scores, targets)
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}")
    top = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]  # [N, min(k, C)]
    predicted = torch.zeros_like(targets).scatter_(1, top, True)
    return _count_metrics(predicted, targets, suffix=f"_top{k}")


def multilabel_metrics(
    scores: torch.Tensor,
    targets: torch.Tensor,
    threshold: float = 0.5,
    from_logits: bool = True,
) -> dict[str, Any]:
    """Every metric of the module at once, in percent: ``mAP``, ``CP``, ``CR``, ``CF1``, ``OP``,
    ``OR``, ``OF1`` (at ``threshold``), the same with ``_top3``, ``per_class_ap`` (list of C
    floats, NaN for a class with no positive), ``num_images``, ``num_classes_evaluated`` and
    ``num_classes_without_positive``."""
    ap = average_precision(scores, targets)
    evaluated = int((~torch.isnan(ap)).sum())
    results: dict[str, Any] = {
        "mAP": _mean_percent(ap),
        "num_images": scores.shape[0],
        "num_classes_evaluated": evaluated,
        "num_classes_without_positive": scores.shape[1] - evaluated,
    }
    results |= threshold_metrics(scores, targets, threshold, from_logits)
    results |= top_k_metrics(scores, targets, k=3)
    results["per_class_ap"] = (100.0 * ap).tolist()
    return results


class MultiLabelMetrics:
    """:func:`multilabel_metrics` over batches fed one by one.

    ``update`` keeps each batch's scores and targets (and dataset indices, if given); ``compute``
    concatenates them, over every process when ``torch.distributed`` is initialised, and runs
    the functions above on the result, so many ``update`` calls give the metrics of the
    concatenated batches. A ``DistributedSampler`` pads the data with repeats of a few images:
    pass each batch's dataset ``indices`` and every image counts once. Under DDP every process
    must call ``compute`` (it is a collective); each gets the same results.

    Example::

        metrics = MultiLabelMetrics(num_classes=80)
        for batch in loader:
            metrics.update(model(batch["image"]), batch["labels"])
        results = metrics.compute()  # {"mAP": ..., "CF1": ..., "OF1_top3": ..., ...}
    """

    def __init__(self, num_classes: int, threshold: float = 0.5, from_logits: bool = True) -> None:
        if from_logits and not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1) for logits; got {threshold}")
        self.num_classes = num_classes
        self.threshold = threshold
        self.from_logits = from_logits
        self.reset()

    def reset(self) -> None:
        """Forget every batch."""
        self.scores: list[torch.Tensor] = []  # [B, C] float64, on the CPU
        self.targets: list[torch.Tensor] = []  # [B, C] bool
        self.indices: list[torch.Tensor] = []  # [B] long, when the batches come with indices

    def update(
        self, scores: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | None = None
    ) -> None:
        """Add a batch: ``scores`` ``[B, C]`` (logits if ``from_logits``, else probabilities),
        ``targets`` ``[B, C]`` (bool or {0, 1}) and, optionally, the images' dataset
        ``indices`` ``[B]`` (in every update or in none)."""
        scores, targets = _check_inputs(scores, targets)
        if scores.shape[1] != self.num_classes:
            raise ValueError(
                f"expected scores for {self.num_classes} classes; got {scores.shape[1]}"
            )
        if self.scores and (indices is not None) != bool(self.indices):
            raise ValueError("pass indices to every update() or to none")
        self.scores.append(scores)
        self.targets.append(targets)
        if indices is not None:
            self.indices.append(indices.detach().to("cpu", torch.long).reshape(-1))

    def compute(self) -> dict[str, Any]:
        """:func:`multilabel_metrics` of every image seen (by every process)."""
        if not self.scores:
            raise ValueError("MultiLabelMetrics.compute() called before any update()")
        scores = all_gather_rows(torch.cat(self.scores))
        targets = all_gather_rows(torch.cat(self.targets))
        if self.indices:
            indices = all_gather_rows(torch.cat(self.indices))
            # One row per image, in index order; a padded repeat rewrites its image's row.
            images, row = torch.unique(indices, return_inverse=True)
            shape = (len(images), self.num_classes)
            scores = scores.new_empty(shape).index_copy_(0, row, scores)
            targets = targets.new_empty(shape).index_copy_(0, row, targets)
        return multilabel_metrics(scores, targets, self.threshold, self.from_logits)
