"""Losses as plain functions on tensors, so readers and tests can call them directly."""

from mlcl.losses.asl import asymmetric_loss, binary_cross_entropy
from mlcl.losses.contrastive import label_supcon_loss, multilabel_supcon_loss, pscl_loss, sscl_loss
from mlcl.losses.single_positive import (
    assume_negative_loss,
    entropy_maximization_loss,
    expected_positive_loss,
    label_smoothing_loss,
    role_loss,
    semantic_contrastive_loss,
    weak_assume_negative_loss,
)

__all__ = [
    "assume_negative_loss",
    "asymmetric_loss",
    "binary_cross_entropy",
    "entropy_maximization_loss",
    "expected_positive_loss",
    "label_smoothing_loss",
    "label_supcon_loss",
    "multilabel_supcon_loss",
    "pscl_loss",
    "role_loss",
    "semantic_contrastive_loss",
    "sscl_loss",
    "weak_assume_negative_loss",
]
