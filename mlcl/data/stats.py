"""Label statistics: how often each class occurs and how classes occur together.

With ``Y`` the ``[N, C]`` 0/1 label matrix: frequency ``N(i) = Σ_n Y[n, i]``, co-occurrence
``N(i, j) = Σ_n Y[n, i] Y[n, j]`` (= ``YᵀY``, diagonal ``N(i)``) and the conditional probability
``P(j | i) = N(i, j) / N(i)`` that an image with label i also has label j (0 where ``N(i) = 0``).
"""

from __future__ import annotations

import torch


def label_frequency(labels: torch.Tensor) -> torch.Tensor:
    """``N(i)`` ``[C]``: the number of images with label i."""
    return labels.float().sum(0)


def cooccurrence(labels: torch.Tensor) -> torch.Tensor:
    """``N(i, j)`` ``[C, C]``: the number of images with both labels i and j."""
    labels = labels.float()  # [N, C]
    return labels.T @ labels


def conditional_probability(labels: torch.Tensor) -> torch.Tensor:
    """``P(j | i)`` ``[C, C]`` (row i, column j); rows of classes that never occur are 0."""
    counts = cooccurrence(labels)
    occurrences = counts.diagonal()  # [C]
    return counts / occurrences.clamp(min=1)[:, None]


def scene_cooccurrence(
    labels: torch.Tensor, scene_ids: torch.Tensor, num_scenes: int | None = None
) -> torch.Tensor:
    """``[K, C, C]``: the co-occurrence counts of the images of each scene."""
    num_scenes = int(scene_ids.max()) + 1 if num_scenes is None else num_scenes
    return torch.stack([cooccurrence(labels[scene_ids == k]) for k in range(num_scenes)])
