"""Asymmetric loss (Ridnik et al., ICCV 2021) and plain binary cross-entropy.

For a logit x with probability p = σ(x) and label y:

    L+ = (1 − p)^γ+ · log(p)                      (positives)
    L− = p_m^γ− · log(1 − p_m),  p_m = max(p − m, 0)  (negatives: focusing + probability shifting)
    ASL = −Σ [y·L+ + (1 − y)·L−]

γ− > γ+ down-weights the many easy negatives of multi-label data; the margin m discards very easy
negatives altogether (and rejects possibly mislabelled ones). The paper's defaults are γ+ = 0,
γ− = 4, m = 0.05. With γ+ = γ− = 0 and m = 0 ASL is binary cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    reduction: str = "sum",
    mask: torch.Tensor | None = None,
    detach_focusing: bool = True,
) -> torch.Tensor:
    """Asymmetric loss of ``logits`` ``[B, C]`` against ``targets`` ``[B, C]`` in [0, 1].

    ``reduction``: ``"sum"`` over every entry (the paper's code; its learning rates assume it) or
    ``"mean"`` over the entries that count. ``mask`` ``[B, C]`` (bool) keeps only some entries,
    e.g. the observed ones. ``detach_focusing`` computes the focusing weights without gradient, as
    the reference implementation does by default.
    """
    targets = targets.to(logits.dtype)
    # Work in float32: the logs of probabilities near 0 or 1 lose everything in half precision.
    prob = torch.sigmoid(logits.float())
    prob_neg = (prob - clip).clamp(min=0) if clip > 0 else prob
    log_pos = torch.log(prob.clamp(min=eps))
    log_neg = torch.log((1 - prob_neg).clamp(min=eps))
    loss = targets * log_pos + (1 - targets) * log_neg
    if gamma_pos > 0 or gamma_neg > 0:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_focusing):
            base = targets * (1 - prob) + (1 - targets) * prob_neg
            gamma = targets * gamma_pos + (1 - targets) * gamma_neg
            focusing = torch.pow(base, gamma)
        loss = loss * focusing
    return _reduce(-loss, reduction, mask)


def binary_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    reduction: str = "mean",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary cross-entropy with logits, with the same ``reduction`` / ``mask`` as ASL."""
    loss = F.binary_cross_entropy_with_logits(
        logits.float(), targets.to(torch.float32), reduction="none"
    )
    return _reduce(loss, reduction, mask)


def _reduce(loss: torch.Tensor, reduction: str, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None:
        loss = loss * mask
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        count = mask.sum() if mask is not None else loss.new_tensor(loss.numel())
        return loss.sum() / count.clamp(min=1)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
