"""Single-positive labels: one observed positive per image, drawn uniformly and reproducibly, and
never a hidden label in what a training batch carries."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from mlcl.data import (
    build_dataset,
    build_transforms,
    sample_single_positive,
    single_positive_labels,
)


def full_labels() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    labels = torch.rand(300, 9, generator=generator) < 0.35
    labels[:5] = False  # images without any positive
    return labels


def test_one_true_positive_per_image():
    labels = full_labels()
    chosen = sample_single_positive(labels, seed=0)
    has_positive = labels.any(1)
    assert bool((chosen[~has_positive] == -1).all())
    rows = has_positive.nonzero()[:, 0]
    assert bool(labels[rows, chosen[rows]].all())
    trainable, observed = single_positive_labels(labels, seed=0)
    assert trainable.sum(1).tolist() == has_positive.long().tolist()
    torch.testing.assert_close(observed, trainable.bool())
    assert not bool((trainable.bool() & ~labels).any())


def test_reproducible_and_independent_of_the_global_rng():
    labels = full_labels()
    torch.manual_seed(123)
    first = sample_single_positive(labels, seed=7)
    state = torch.get_rng_state()
    torch.manual_seed(999)
    again = sample_single_positive(labels, seed=7)
    torch.testing.assert_close(first, again)
    torch.manual_seed(123)
    sample_single_positive(labels, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG did not move
    assert not torch.equal(first, sample_single_positive(labels, seed=8))


def test_uniform_over_the_positives():
    labels = torch.zeros(8000, 6, dtype=torch.bool)
    labels[:, [0, 2, 3, 5]] = True  # four positives per image
    chosen = sample_single_positive(labels, seed=0)
    counts = torch.bincount(chosen, minlength=6).float()
    assert counts[1] == 0 and counts[4] == 0
    shares = counts[[0, 2, 3, 5]] / len(labels)
    assert bool(((shares - 0.25).abs() < 0.025).all())  # 2000 ± 200 each (σ ≈ 39)


def test_dataset_never_exposes_hidden_labels(synthetic_root):
    dataset = build_dataset(
        "synthetic",
        synthetic_root,
        "train",
        build_transforms(False, 32),
        labels="single_positive",
        single_positive_seed=3,
    )
    truth = build_dataset("synthetic", synthetic_root, "train").full_labels
    torch.testing.assert_close(dataset.full_labels, truth)  # kept for evaluation
    several = truth.sum(1) >= 2
    assert bool(several.any())  # otherwise this test could not see a leak
    loader = DataLoader(dataset, batch_size=16)
    for batch in loader:
        assert set(batch) == {"image", "labels", "observed", "index"}
        rows = truth[batch["index"]]
        assert batch["labels"].sum(1).tolist() == rows.any(1).long().tolist()
        torch.testing.assert_close(batch["observed"], batch["labels"].bool())
        assert bool((batch["labels"].bool() <= rows).all())  # the observed one is a true positive
        assert not torch.equal(batch["labels"].bool(), rows)  # hidden positives stay hidden
    expected, _ = single_positive_labels(truth, seed=3)
    torch.testing.assert_close(dataset.labels, expected)


def test_limit_applies_before_the_draw(synthetic_root):
    small = build_dataset("synthetic", synthetic_root, "train", labels="single_positive", limit=10)
    assert len(small) == 10 and small.labels.shape == (10, small.num_classes)
    expected, _ = single_positive_labels(small.full_labels, seed=0)
    torch.testing.assert_close(small.labels, expected)
