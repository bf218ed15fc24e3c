"""How well discovered clusters (SALGL's latent scenes) recover known ones.

Both compare a hard assignment ``found`` (e.g. the most likely learned scene of each image) with
the ``true`` scene ids, through the contingency table ``n[a, b]`` = number of images in found
cluster a and true class b. Neither cares how the clusters are numbered.

- purity ``(1/N) Σ_a max_b n[a, b]``: label each found cluster with its majority true scene and
  count the images that agree. 1 is perfect, but splitting every image into its own cluster is
  also 1, so read it with NMI;
- normalised mutual information ``I(found; true) / ((H(found) + H(true)) / 2)`` (the arithmetic
  normalisation, scikit-learn's default): 1 for the same partition up to renaming, 0 for
  independent ones, and splitting clusters costs through ``H(found)``.

Usage entropy ``H(p)`` of the share ``p_a`` of images in each found cluster says whether the
clusters are all in use (``log K``) or collapsed (0).
"""

from __future__ import annotations

import torch


def contingency_table(found: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """``[A, B]`` counts of images per (found cluster, true class), for ids ``[N]`` in
    ``0..A-1`` and ``0..B-1``."""
    found, true = found.long().flatten(), true.long().flatten()
    if found.shape != true.shape:
        raise ValueError(
            f"found and true need one id per image, got {found.shape} and {true.shape}"
        )
    if found.numel() == 0:
        raise ValueError("found and true are empty")
    num_true = int(true.max()) + 1
    pairs = found * num_true + true
    table = torch.bincount(pairs, minlength=(int(found.max()) + 1) * num_true)
    return table.reshape(-1, num_true).double()


def _entropy(counts: torch.Tensor) -> torch.Tensor:
    shares = counts[counts > 0] / counts.sum()
    return (shares * (1 / shares).log()).sum()  # Σ p log(1/p): +0.0, not -0.0, for one cluster


def purity(found: torch.Tensor, true: torch.Tensor) -> float:
    """Share of images whose found cluster's majority true class is their own, in [0, 1]."""
    table = contingency_table(found, true)
    return float(table.max(dim=1).values.sum() / table.sum())


def normalized_mutual_info(found: torch.Tensor, true: torch.Tensor) -> float:
    """``I(found; true) / mean(H(found), H(true))`` in [0, 1]; 1 when both are one single
    cluster (as scikit-learn), 0 when only one of them is."""
    table = contingency_table(found, true)
    total = table.sum()
    found_counts, true_counts = table.sum(dim=1), table.sum(dim=0)
    found_entropy, true_entropy = _entropy(found_counts), _entropy(true_counts)
    if found_entropy == 0 and true_entropy == 0:
        return 1.0
    joint = table / total
    expected = (found_counts[:, None] / total) * (true_counts[None, :] / total)
    nonzero = joint > 0
    mutual_info = (joint[nonzero] * (joint[nonzero] / expected[nonzero]).log()).sum()
    return float((mutual_info / ((found_entropy + true_entropy) / 2)).clamp(0.0, 1.0))


def usage_entropy(found: torch.Tensor) -> float:
    """Entropy (nats) of the share of images in each cluster: ``log K`` at most (K clusters
    used evenly), 0 when every image is in one cluster."""
    counts = torch.bincount(found.long().flatten()).double()
    return float(_entropy(counts))
