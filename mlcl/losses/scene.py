"""Entropy regularisers of an unsupervised scene classifier (SALGL, Zhu et al., ICCV 2023).

With no scene labels, a scene classifier left alone either stays vague (every image a bit of
every scene) or collapses (every image in one scene). Two entropies of the scene distributions
``q`` ``[B, K]`` of a batch prevent both:

- sample entropy ``(1/B) Σ_b H(q_b)``, minimised: each image commits to a scene;
- batch entropy gap ``(log K − H(q̄)) · scale`` with ``q̄ = (1/B) Σ_b q_b``, minimised: the
  batch as a whole uses every scene evenly (``H(q̄) = log K`` exactly when usage is uniform).
  ``scale = 100`` follows the reference implementation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sample_entropy(scene_logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of each image's scene distribution ``softmax(scene_logits)``
    ``[B, K]``: 0 when every image is sure of its scene, ``log K`` when none is."""
    log_probs = F.log_softmax(scene_logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1).mean()


def batch_entropy_gap(scene_logits: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
    """``(log K − H(mean_b q_b)) · scale``: 0 when the batch uses the ``K`` scenes evenly,
    ``log K · scale`` when it uses only one."""
    mean_probs = F.softmax(scene_logits.float(), dim=-1).mean(dim=0)  # [K]
    entropy = -(mean_probs * mean_probs.clamp(min=1e-12).log()).sum()
    return (math.log(scene_logits.shape[-1]) - entropy) * scale
