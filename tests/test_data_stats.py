"""Label statistics against slow loop references."""

from __future__ import annotations

import torch

from mlcl.data import conditional_probability, cooccurrence, label_frequency, scene_cooccurrence


def random_labels(num_images: int = 40, num_classes: int = 7, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.rand(num_images, num_classes, generator=generator) < 0.3
    labels[:, 5] = False  # a class that never occurs
    return labels


def reference_cooccurrence(labels: torch.Tensor) -> torch.Tensor:
    num_classes = labels.shape[1]
    counts = torch.zeros(num_classes, num_classes)
    for row in labels.tolist():
        for i in range(num_classes):
            for j in range(num_classes):
                counts[i, j] += float(row[i] and row[j])
    return counts


def test_frequency_and_cooccurrence():
    labels = random_labels()
    reference = reference_cooccurrence(labels)
    torch.testing.assert_close(cooccurrence(labels), reference)
    torch.testing.assert_close(label_frequency(labels), reference.diagonal())
    torch.testing.assert_close(label_frequency(labels), labels.sum(0).float())


def test_conditional_probability_guards_absent_classes():
    labels = random_labels()
    counts = reference_cooccurrence(labels)
    expected = torch.zeros_like(counts)
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            if counts[i, i] > 0:
                expected[i, j] = counts[i, j] / counts[i, i]
    result = conditional_probability(labels)
    torch.testing.assert_close(result, expected)
    assert torch.isfinite(result).all() and not result[5].any()
    present = labels.any(0)
    torch.testing.assert_close(result.diagonal()[present], torch.ones(int(present.sum())))


def test_scene_cooccurrence():
    labels = random_labels(60)
    scenes = torch.arange(60) % 3
    per_scene = scene_cooccurrence(labels, scenes, num_scenes=4)
    assert per_scene.shape == (4, 7, 7)
    for k in range(3):
        torch.testing.assert_close(per_scene[k], reference_cooccurrence(labels[scenes == k]))
    assert not per_scene[3].any()
    torch.testing.assert_close(per_scene.sum(0), cooccurrence(labels))
