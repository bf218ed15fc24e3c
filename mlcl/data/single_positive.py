"""Single-positive labels (SPML): one observed positive per training image, the rest unknown.

The protocol of Cole et al. (CVPR 2021), followed by Scob: from the full labels of each image one
positive is drawn uniformly at random, once, with a fixed seed, and kept for the whole training.
Every other entry is unobserved (not negative). Images without any positive keep no observed label
at all (all of ``observed`` False): they are kept so that the image set, and thus the indices, do
not depend on the label mode.
"""

from __future__ import annotations

import torch

from mlcl.data.dataset import MultiLabelDataset


def sample_single_positive(full_labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Index ``[N]`` of the one kept positive of every image (``-1`` where it has none).

    Uniform over each image's positives and reproducible: the draw uses its own
    ``torch.Generator`` seeded with ``seed``, so it neither reads nor changes the global RNG.
    """
    positives = full_labels.bool()  # [N, C]
    counts = positives.sum(1)  # [N]
    generator = torch.Generator().manual_seed(seed)
    uniform = torch.rand(len(positives), generator=generator)  # [N]
    # The k-th positive (0-based) of each row, k uniform in [0, count).
    rank = (uniform * counts).long().clamp(max=(counts - 1).clamp(min=0))  # [N]
    running = positives.long().cumsum(1) - 1  # [N, C]: rank of each positive in its row
    chosen = positives & (running == rank[:, None])  # [N, C], one True per non-empty row
    index = chosen.long().argmax(1)
    return torch.where(counts > 0, index, torch.full_like(index, -1))


def single_positive_labels(
    full_labels: torch.Tensor, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels [N, C] float, observed [N, C] bool)``: one observed positive per image."""
    chosen = sample_single_positive(full_labels, seed)
    rows = (chosen >= 0).nonzero()[:, 0]
    observed = torch.zeros_like(full_labels, dtype=torch.bool)
    observed[rows, chosen[rows]] = True
    return observed.float(), observed


def make_single_positive(dataset: MultiLabelDataset, seed: int = 0) -> MultiLabelDataset:
    """Switch ``dataset`` (in place) to single-positive labels; ``full_labels`` stay the truth."""
    dataset.labels, dataset.observed = single_positive_labels(dataset.full_labels, seed)
    return dataset
