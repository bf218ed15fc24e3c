"""The contrastive losses against slow loop-based references (float64), and their invariances."""

from __future__ import annotations

import math

import pytest
import torch

from mlcl.losses import label_supcon_loss, multilabel_supcon_loss, pscl_loss, sscl_loss


def random_labels(batch: int, classes: int, seed: int) -> torch.Tensor:
    """Labels with an image of one positive, an image of many, an image of none and a class
    absent from the batch (the last)."""
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.rand(batch, classes, generator=generator) < 0.35).double()
    labels[0] = 0
    labels[0, 1] = 1  # one positive
    labels[1, :-1] = 1  # many positives
    labels[2] = 0  # none
    labels[:, -1] = 0  # a class no image has
    return labels


def reference_supcon(features: torch.Tensor, labels: torch.Tensor, temperature: float):
    """The multi-label supervised contrastive loss, one anchor at a time. ``features``
    ``[B, V, C, d]``."""
    z = features / features.norm(dim=-1, keepdim=True)
    batch, views, classes, _ = features.shape
    items = [
        (i, v, c)
        for i in range(batch)
        for v in range(views)
        for c in range(classes)
        if labels[i, c] == 1
    ]
    losses = []
    for anchor in items:
        positives = [item for item in items if item != anchor and item[2] == anchor[2]]
        if not positives:
            continue
        za = z[anchor]
        denominator = sum(torch.exp(za @ z[item] / temperature) for item in items if item != anchor)
        terms = [torch.log(torch.exp(za @ z[p] / temperature) / denominator) for p in positives]
        losses.append(-sum(terms) / len(terms))
    return sum(losses) / len(losses)


def reference_pscl(features, prototypes, labels, temperature, absent_classes=True):
    """PSCL one class at a time, with the reference code's term for absent classes."""
    z = features / features.norm(dim=-1, keepdim=True)
    p = prototypes / prototypes.norm(dim=-1, keepdim=True)
    batch, classes, _ = features.shape
    total = 0.0
    for c in range(classes):
        scores = [z[i, c] @ p[c] / temperature for i in range(batch)]
        positives = [scores[i] for i in range(batch) if labels[i, c] == 1]
        everything = torch.log(sum(torch.exp(s) for s in scores))
        if positives:
            total = total - (torch.log(sum(torch.exp(s) for s in positives)) - everything)
        elif absent_classes:
            top = max(float(s.detach()) for s in scores)
            total = total + torch.log(sum(torch.exp(s - top) for s in scores))
    return total / labels.sum()


@pytest.mark.parametrize("views", [1, 2])
def test_supcon_matches_the_loop_reference_in_value_and_gradient(views):
    labels = random_labels(6, 5, seed=0)
    features = torch.randn(6, views, 5, 7, dtype=torch.float64, requires_grad=True)
    ours = multilabel_supcon_loss(features, labels, temperature=0.2)
    (grad,) = torch.autograd.grad(ours, features)
    reference = reference_supcon(features, labels, 0.2)
    (reference_grad,) = torch.autograd.grad(reference, features)
    torch.testing.assert_close(ours.double(), reference)
    torch.testing.assert_close(grad, reference_grad)
    assert grad[:, :, -1].abs().max() == 0  # absent labels take no part
    assert grad[2].abs().max() == 0  # nor does an image without labels


def test_sscl_is_the_two_view_supcon_at_temperature_0_2():
    labels = random_labels(5, 4, seed=1)
    features = torch.randn(5, 2, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(
        sscl_loss(features, labels).double(), reference_supcon(features, labels, 0.2)
    )
    with pytest.raises(ValueError, match="B, V, C, d"):
        sscl_loss(features[:, 0], labels)


def test_supcon_is_invariant_to_batch_order_and_feature_scale():
    labels = random_labels(6, 5, seed=2)
    features = torch.randn(6, 2, 5, 8, dtype=torch.float64)
    loss = sscl_loss(features, labels)
    order = torch.randperm(6)
    torch.testing.assert_close(sscl_loss(features[order], labels[order]), loss)
    scales = torch.rand(6, 2, 5, 1, dtype=torch.float64) * 10 + 0.1
    torch.testing.assert_close(sscl_loss(features * scales, labels), loss)


def test_supcon_of_perfectly_clustered_features_is_its_lower_bound():
    """Features equal within a class and orthogonal across classes: each anchor's positives
    share the softmax with its negatives at similarity 0."""
    labels = torch.tensor([[1.0, 1, 0], [1, 0, 1], [0, 1, 1]])
    features = torch.eye(3)[None, None].expand(3, 1, 3, 3).clone()  # class c -> e_c
    temperature = 0.5
    loss = multilabel_supcon_loss(features, labels, temperature)
    # 6 present labels: each anchor has 1 positive (similarity 1) and 4 negatives (0).
    expected = -math.log(math.exp(1 / temperature) / (math.exp(1 / temperature) + 4))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_supcon_without_positive_pairs_is_zero_and_keeps_the_graph():
    features = torch.randn(3, 4, 5, requires_grad=True)
    labels = torch.eye(3, 4)  # every class at most once
    loss = multilabel_supcon_loss(features, labels)
    assert loss.item() == 0
    loss.backward()
    assert features.grad.abs().max() == 0


def test_label_supcon_loss_is_the_flattened_form():
    labels = random_labels(4, 3, seed=3)
    features = torch.randn(4, 2, 3, 5, dtype=torch.float64)
    images, classes = labels.nonzero(as_tuple=True)
    rows = features[images, :, classes].flatten(0, 1)
    torch.testing.assert_close(
        label_supcon_loss(rows, classes.repeat_interleave(2), 0.2), sscl_loss(features, labels)
    )


@pytest.mark.parametrize("absent_classes", [True, False])
def test_pscl_matches_the_loop_reference_in_value_and_gradient(absent_classes):
    labels = random_labels(7, 5, seed=4)
    features = torch.randn(7, 5, 6, dtype=torch.float64, requires_grad=True)
    prototypes = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    ours = pscl_loss(features, prototypes, labels, 0.07, absent_classes=absent_classes)
    grads = torch.autograd.grad(ours, (features, prototypes))
    reference = reference_pscl(features, prototypes, labels, 0.07, absent_classes)
    reference_grads = torch.autograd.grad(reference, (features, prototypes))
    torch.testing.assert_close(ours.double(), reference)
    for grad, expected in zip(grads, reference_grads):
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(grad, expected)
    absent_grad = grads[1][-1].abs().max()
    assert (absent_grad > 0) == absent_classes  # only the code's term moves an absent prototype


def test_pscl_is_invariant_to_batch_order_and_feature_scale():
    labels = random_labels(6, 4, seed=5)
    features = torch.randn(6, 4, 5, dtype=torch.float64)
    prototypes = torch.randn(4, 5, dtype=torch.float64)
    loss = pscl_loss(features, prototypes, labels)
    order = torch.randperm(6)
    torch.testing.assert_close(pscl_loss(features[order], prototypes, labels[order]), loss)
    scaled = features * (torch.rand(6, 4, 1, dtype=torch.float64) + 0.5)
    torch.testing.assert_close(pscl_loss(scaled, prototypes * 3, labels), loss)


def test_pscl_is_smaller_when_positives_are_nearest_their_prototype():
    labels = torch.tensor([[1.0, 0], [0, 1], [1, 1]])
    prototypes = torch.eye(2)
    aligned = labels[:, :, None] * torch.eye(2) + (1 - labels[:, :, None]) * -torch.eye(2)
    assert pscl_loss(aligned, prototypes, labels) < pscl_loss(-aligned, prototypes, labels)


def test_pscl_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="prototypes"):
        pscl_loss(torch.randn(2, 3, 4), torch.randn(3, 5), torch.ones(2, 3))
