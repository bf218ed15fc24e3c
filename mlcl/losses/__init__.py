"""Losses as plain functions on tensors, so readers and tests can call them directly."""

from mlcl.losses.asl import asymmetric_loss, binary_cross_entropy

__all__ = ["asymmetric_loss", "binary_cross_entropy"]
