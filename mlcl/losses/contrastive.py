"""Contrastive losses between label-level features: MulCon's, SADCL's SSCL and PSCL.

All three work on *label-level* features: one vector per (image, class), ``[B, C, d]``, as the
semantic decoder (:mod:`mlcl.models.semantic_decoder`) or MulCon's label attention
(:mod:`mlcl.models.label_attention`) produce them, after a projection head. Each function
L2-normalises the features itself, so only their directions matter.

**Supervised contrastive loss between present labels** (MulCon; SADCL's SSCL). The feature of
label c in image i takes part only if image i has label c (``y_ic = 1``). For such an anchor
``a = (i, c)`` (and, with several views, each view of it):

    positives  P(a) = the other features of class c (other images, other views of the same image)
    contrast   A(a) = every taking-part feature except a itself, of any class
    loss_a = −(1/|P(a)|) Σ_{p∈P(a)} log( exp(z_a·z_p/τ) / Σ_{k∈A(a)} exp(z_a·z_k/τ) )

and the loss is the mean over anchors. Only present labels take part, so the similarity matrix
is ``n × n`` with ``n = V · (number of present labels)``, not ``V·B·C`` square: the absent
entries would be masked out anyway, and skipping them gives the same value and gradient for a
fraction of the work.

**Prototype-to-sample loss** (SADCL's PSCL): see :func:`pscl_loss`.

Values are the true ones (``logsumexp``), not the max-shifted values the reference code reports.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Similarities divided by a small temperature lose too much in half precision."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def label_supcon_loss(
    features: torch.Tensor, classes: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """Supervised contrastive loss among ``n`` label-level features that take part.

    Args:
        features: ``[n, d]``, one row per (present label, view); normalised here.
        classes: ``[n]`` long, the class of each row; rows of one class are each other's
            positives, every other row is a negative.
        temperature: τ.

    Returns the mean over anchors of the loss above. An anchor with no positive (its class
    occurs once, possible with one view) has no term and is not counted; with no positive pair
    at all the loss is 0 (still attached to the graph).
    """
    count = features.shape[0]
    not_self = ~torch.eye(count, dtype=torch.bool, device=features.device)
    positives = (classes[:, None] == classes[None, :]) & not_self  # [n, n]
    num_positives = positives.sum(dim=1)
    anchors = num_positives > 0
    if not anchors.any():
        return features.sum() * 0.0
    z = F.normalize(_at_least_float32(features), dim=-1)
    logits = z[anchors] @ z.T / temperature  # [anchors, n]
    logits = logits.masked_fill(~not_self[anchors], float("-inf"))  # no anchor contrasts itself
    log_prob = logits - logits.logsumexp(dim=1, keepdim=True)
    positive_log_prob = torch.where(positives[anchors], log_prob, 0.0).sum(dim=1)
    return -(positive_log_prob / num_positives[anchors]).mean()


def present_features(
    features: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The label-level features of present labels, flattened for :func:`label_supcon_loss`.

    ``features`` ``[B, V, C, d]`` (V views) and ``labels`` ``[B, C]`` (shared by the views) →
    rows ``[n, d]`` ordered (image, class, view) and their classes ``[n]``, ``n = V · Σ y``.
    """
    images, classes = (labels > 0.5).nonzero(as_tuple=True)  # [M] each
    rows = features[images, :, classes]  # [M, V, d]
    num_views = features.shape[1]
    return rows.flatten(0, 1), classes.repeat_interleave(num_views)


def multilabel_supcon_loss(
    features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """MulCon's loss: supervised contrastive loss between label-level features of present labels.

    Args:
        features: ``[B, C, d]`` (one view, MulCon) or ``[B, V, C, d]`` (V views of each).
        labels: ``[B, C]`` in {0, 1}; entry ``(i, c)`` takes part when ``labels[i, c] = 1``.
        temperature: τ (SupCon's paper uses 0.1; MulCon's exact value is a preset option).

    Positives of label c in image i: label c in the other images (and views); negatives: the
    other present labels of every image, its own included. See the module docstring.
    """
    if features.dim() == 3:
        features = features[:, None]
    if features.dim() != 4 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"features must be [B, C, d] or [B, V, C, d] with labels [B, C], got "
            f"{tuple(features.shape)} and {tuple(labels.shape)}"
        )
    rows, classes = present_features(features, labels)
    return label_supcon_loss(rows, classes, temperature)


def sscl_loss(
    features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.2
) -> torch.Tensor:
    """SADCL's sample-to-sample contrastive loss (SSCL).

    Args:
        features: ``[B, V, C, d]``; in SADCL ``V = 2``: the projected label-level features of
            the batch and the projected memory bank (slot i of the memory holds, for every class,
            a past confident feature of that class or its prototype).
        labels: ``[B, C]``, shared by both views.
        temperature: τ = 0.2 (SADCL; its base temperature is also 0.2, so no rescaling).

    The mean over present anchors (i, view, c) of the multi-positive contrastive loss of the
    module docstring. The reference code averages over a mis-laid-out anchor mask (its anchors'
    mask is ordered (image, view), its features (view, image)); this is the formula.
    """
    if features.dim() != 4:
        raise ValueError(f"sscl_loss takes features [B, V, C, d], got {tuple(features.shape)}")
    return multilabel_supcon_loss(features, labels, temperature)


def pscl_loss(
    features: torch.Tensor,
    prototypes: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.07,
    absent_classes: bool = True,
) -> torch.Tensor:
    """SADCL's prototype-to-sample contrastive loss (PSCL).

    For class c, with ``s_ic = cos(v_ic, p_c) / τ`` over the images i of the batch:

        loss_c = −[ log Σ_{i: y_ic = 1} exp(s_ic) − log Σ_i exp(s_ic) ]

    a softmax over the batch that wants the images having c to be the ones nearest prototype c.
    PSCL = Σ_c loss_c / (number of present labels in the batch).

    A class no image of the batch has would give ``log 0``. The reference code takes that log as
    0 in its max-shifted arithmetic, so such a class adds ``log Σ_i exp(s_ic − max_i s_ic)``,
    which pushes every image away from its prototype; ``absent_classes=True`` (default) does the
    same (same value, same gradient), ``False`` leaves those classes out.

    Args:
        features: ``[B, C, d]`` projected label-level features; normalised here.
        prototypes: ``[C, d]`` projected class prototypes; normalised here.
        labels: ``[B, C]`` in {0, 1}.
        temperature: τ = 0.07 (SADCL).
    """
    if features.dim() != 3 or prototypes.shape != features.shape[1:]:
        raise ValueError(
            f"pscl_loss takes features [B, C, d] and prototypes [C, d], got "
            f"{tuple(features.shape)} and {tuple(prototypes.shape)}"
        )
    z = F.normalize(_at_least_float32(features), dim=-1)
    p = F.normalize(_at_least_float32(prototypes), dim=-1)
    similarity = torch.einsum("bcd,cd->bc", z, p) / temperature  # [B, C]
    positive = labels > 0.5
    present = positive.any(dim=0)  # [C]
    log_all = similarity.logsumexp(dim=0)  # [C]
    # Absent classes: a column of zeros instead of -inf, so no NaN reaches the gradient.
    positive_similarity = similarity.masked_fill(~positive, float("-inf"))
    positive_similarity = torch.where(present, positive_similarity, 0.0)
    log_positive = positive_similarity.logsumexp(dim=0)  # [C]
    per_class = torch.where(present, log_all - log_positive, 0.0)
    if absent_classes:
        absent_term = log_all - similarity.max(dim=0).values.detach()
        per_class = per_class + torch.where(present, 0.0, absent_term)
    return per_class.sum() / positive.sum().clamp(min=1)
