"""Losses for single-positive multi-label learning (SPML), and Scob's contrastive loss.

In the single-positive setting each training image has one observed positive label; every other
label is *unknown*, not negative. Throughout, ``logits`` are ``[B, C]`` and ``labels`` ``[B, C]``
hold 1 at the observed positive and 0 everywhere else (:mod:`mlcl.data.single_positive`). With
``p = σ(logit)``, ``y`` the observed positives and ``u = 1 − y`` the unknown entries, the losses
are averaged over all ``B·C`` entries, as in the code of Cole et al. (2021):

- **AN**, assume negative: every unknown label is a negative, plain binary cross-entropy
  ``−[y log p + u log(1 − p)]``. Cheap and wrong for the true positives it pushes down.
- **AN-LS**, AN with label smoothing: targets ``1 − ε`` and ``ε`` instead of 1 and 0 (ε = 0.1).
- **WAN**, weak AN: the negative term down-weighted by ``1 / (C − 1)``, so the one observed
  positive and the ``C − 1`` assumed negatives weigh the same in total.
- **EPR**, expected positive regularisation: only the observed positive's ``−log p``, plus
  ``((Σ_c p̄_c − k̂) / C)²`` with ``Σ_c p̄_c`` the number of positives the model predicts per image
  (averaged over the batch) and ``k̂`` the expected number of positives per image.
- **ROLE**, regularised online label estimation: a learnable estimate ``e`` of every training
  image's labels (:class:`mlcl.methods.spml.LabelEstimator`) and the classifier teach each other;
  ``½[BCE(p, sg(e)) + EPR(p) + BCE(e, sg(p)) + EPR(e)]`` with ``sg`` stop-gradient. The first four
  are Cole et al., "Multi-label learning from single positive labels" (CVPR 2021).
- **EM**, entropy maximisation (Zhou et al., "Acknowledging the unknown for multi-label learning
  with single positive labels", ECCV 2022): ``−log p`` on the observed positive and ``−α H(p)``
  on the unknown ones, ``H(p) = −p log p − (1 − p) log(1 − p)``: instead of guessing, keep the
  model undecided about what it has not seen. **APL**, their asymmetric pseudo-labelling, adds
  ``β · BCE(p, s)`` on entries that were given a soft *negative* pseudo-label ``s`` (the
  model's own low probability when the entry was picked).

Logs are taken from the logits (``log p = −softplus(−x)``), exact where the references add 1e-5
to the probabilities, so the values differ from theirs only by that ε.

:func:`semantic_contrastive_loss` is Scob's InfoNCE (Chen et al., IJCV 2023): positive = the
image's own key feature, negatives = confident object features of every class, each negative
weighted by how unlikely its class is to co-occur with the image's observed class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Cole et al. (2021): label smoothing coefficient of AN-LS.
LABEL_SMOOTHING = 0.1


def _full_precision(x: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 → float32 (logs of probabilities near 0 or 1 need it); float64 stays."""
    return x if x.dtype == torch.float64 else x.float()


def _neg_log_p(logits: torch.Tensor) -> torch.Tensor:
    """``−log σ(x)``, stable for any ``x``."""
    return F.softplus(-logits)


def _neg_log_not_p(logits: torch.Tensor) -> torch.Tensor:
    """``−log(1 − σ(x))``."""
    return F.softplus(logits)


def _positives(labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return (labels > 0.5).to(like.dtype)


def assume_negative_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AN: binary cross-entropy with every unknown label taken as a negative."""
    logits = _full_precision(logits)
    positive = _positives(labels, logits)
    loss = positive * _neg_log_p(logits) + (1 - positive) * _neg_log_not_p(logits)
    return loss.mean()


def label_smoothing_loss(
    logits: torch.Tensor, labels: torch.Tensor, smoothing: float = LABEL_SMOOTHING
) -> torch.Tensor:
    """AN-LS: AN against smoothed targets, ``1 − ε`` for the observed positive, ``ε`` elsewhere."""
    logits = _full_precision(logits)
    positive = _positives(labels, logits)
    targets = positive * (1 - smoothing) + (1 - positive) * smoothing
    loss = targets * _neg_log_p(logits) + (1 - targets) * _neg_log_not_p(logits)
    return loss.mean()


def weak_assume_negative_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """WAN: AN with the assumed negatives weighted by ``1 / (C − 1)``."""
    logits = _full_precision(logits)
    positive = _positives(labels, logits)
    negative_weight = 1.0 / max(logits.shape[1] - 1, 1)
    loss = positive * _neg_log_p(logits) + negative_weight * (1 - positive) * _neg_log_not_p(logits)
    return loss.mean()


def expected_positive_penalty(
    probabilities: torch.Tensor, expected_positives: float
) -> torch.Tensor:
    """``((mean_b Σ_c p_bc − k̂) / C)²``: how far the predicted number of positives per image,
    averaged over the batch, is from ``k̂`` (Cole et al.'s squared regulariser over ``C²``)."""
    num_classes = probabilities.shape[1]
    predicted = probabilities.sum(dim=1).mean()
    return ((predicted - expected_positives) / num_classes) ** 2


def observed_positive_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``−log p`` of the observed positives, averaged over all ``B·C`` entries."""
    logits = _full_precision(logits)
    return (_positives(labels, logits) * _neg_log_p(logits)).mean()


def expected_positive_loss(
    logits: torch.Tensor, labels: torch.Tensor, expected_positives: float
) -> torch.Tensor:
    """EPR: the observed positive's ``−log p`` plus the expected-positive penalty."""
    logits = _full_precision(logits)
    penalty = expected_positive_penalty(torch.sigmoid(logits), expected_positives)
    return observed_positive_loss(logits, labels) + penalty


def _soft_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy against soft targets, per entry."""
    return targets * _neg_log_p(logits) + (1 - targets) * _neg_log_not_p(logits)


def role_loss(
    logits: torch.Tensor,
    estimate_logits: torch.Tensor,
    labels: torch.Tensor,
    expected_positives: float,
) -> torch.Tensor:
    """ROLE (Cole et al., 2021), also Scob's classification loss.

    ``logits``: the classifier's ``[B, C]``; ``estimate_logits``: the label estimator's logits of
    the same images. Each side is trained towards the other's (detached) probabilities and by EPR
    on the observed positives::

        ½ [BCE(p, sg(e)) + EPR(p) + BCE(e, sg(p)) + EPR(e)]

    BCE averaged over classes and images.
    """
    logits, estimate_logits = _full_precision(logits), _full_precision(estimate_logits)
    predictions, estimates = torch.sigmoid(logits), torch.sigmoid(estimate_logits)
    classifier_side = _soft_bce(logits, estimates.detach()).mean() + expected_positive_loss(
        logits, labels, expected_positives
    )
    estimator_side = _soft_bce(estimate_logits, predictions.detach()).mean() + (
        expected_positive_loss(estimate_logits, labels, expected_positives)
    )
    return 0.5 * (classifier_side + estimator_side)


def binary_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``H(σ(x)) = −p log p − (1 − p) log(1 − p)`` per entry, in nats."""
    probabilities = torch.sigmoid(logits)
    return probabilities * _neg_log_p(logits) + (1 - probabilities) * _neg_log_not_p(logits)


def entropy_maximization_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.1,
    pseudo_labels: torch.Tensor | None = None,
    pseudo_mask: torch.Tensor | None = None,
    beta: float = 0.9,
) -> torch.Tensor:
    """EM (Zhou et al., 2022): ``−log p`` on the observed positive, ``−α H(p)`` on the unknown
    entries; averaged over all ``B·C`` entries.

    With ``pseudo_labels`` / ``pseudo_mask`` (``[B, C]``): EM+APL. Entries in the mask carry a soft
    negative pseudo-label ``s`` and are trained with ``β · BCE(p, s)`` instead of the entropy
    term. The paper's α, β: 0.1, 0.9 on COCO; 0.2, 0.02 on VOC.
    """
    logits = _full_precision(logits)
    positive = _positives(labels, logits)
    unknown = 1 - positive
    loss = positive * _neg_log_p(logits)
    if pseudo_mask is None:
        return (loss - alpha * unknown * binary_entropy(logits)).mean()
    pseudo = pseudo_mask.to(logits.dtype) * unknown
    targets = torch.nan_to_num(pseudo_labels.to(logits.dtype)) if pseudo_labels is not None else 0.0
    loss = loss - alpha * (unknown - pseudo) * binary_entropy(logits)
    loss = loss + beta * pseudo * _soft_bce(logits, targets * pseudo)
    return loss.mean()


def semantic_contrastive_loss(
    queries: torch.Tensor,
    keys: torch.Tensor,
    negatives: torch.Tensor,
    negative_classes: torch.Tensor,
    observed_classes: torch.Tensor,
    correlation: torch.Tensor,
    temperature: float = 1.0,
    hard_correlation: bool = False,
) -> torch.Tensor:
    """Scob's InfoNCE between object-level features (Chen et al., IJCV 2023).

    Args:
        queries: ``[B, D]`` online features of the strongly augmented view (after the projector).
        keys: ``[B, D]`` momentum features of the original view: each query's positive.
        negatives: ``[M, D]`` confident object features from a per-class bank.
        negative_classes: ``[M]`` the class each negative stands for.
        observed_classes: ``[B]`` each image's observed positive class.
        correlation: ``[C, C]`` class correlation ``R[i, j]`` of the label estimates (1 on the
            diagonal).
        hard_correlation: as the public code: ``R < 1`` counts as 0, so only the negatives of the
            image's own class are switched off.

    Cosine similarities are shifted by +1 (into [0, 2]), each negative's multiplied by
    ``w = 1 − R[observed, class]²`` (a class that always co-occurs with the observed one is not
    pushed away), then divided by τ; the loss is the cross-entropy of picking the positive::

        −log exp(s⁺/τ) / (exp(s⁺/τ) + Σ_m exp(w_m s⁻_m/τ))

    A negative weighted to 0 still sits in the denominator with logit 0, as in the code.
    """
    queries = F.normalize(queries.float(), dim=1)
    keys = F.normalize(keys.float(), dim=1)
    negatives = F.normalize(negatives.float(), dim=1)
    positive_similarity = (queries * keys).sum(dim=1, keepdim=True) + 1  # [B, 1]
    negative_similarity = queries @ negatives.T + 1  # [B, M]
    relation = correlation.float()[observed_classes][:, negative_classes]  # [B, M]
    if hard_correlation:
        relation = torch.where(relation < 1, torch.zeros_like(relation), relation)
    weights = 1 - relation**2
    logits = torch.cat([positive_similarity, weights * negative_similarity], dim=1) / temperature
    targets = torch.zeros(len(queries), dtype=torch.long, device=queries.device)
    return F.cross_entropy(logits, targets)
