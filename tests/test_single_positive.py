"""Single-positive losses against slow references, the label estimator, and the spml method."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mlcl.config import load_config
from mlcl.data import build_dataset, ensure_synthetic
from mlcl.engine import fit, load_checkpoint
from mlcl.errors import ConfigError
from mlcl.losses import (
    assume_negative_loss,
    binary_cross_entropy,
    entropy_maximization_loss,
    expected_positive_loss,
    label_smoothing_loss,
    role_loss,
    weak_assume_negative_loss,
)
from mlcl.methods import build_method
from mlcl.methods.spml import (
    LabelEstimator,
    SinglePositive,
    label_correlation,
    pseudo_label_quality,
)


def _batch(seed: int = 0, size: int = 6, num_classes: int = 5):
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(size, num_classes, generator=generator, dtype=torch.float64)
    labels = torch.zeros(size, num_classes, dtype=torch.float64)
    labels[torch.arange(size), torch.randint(num_classes, (size,), generator=generator)] = 1
    return logits, labels


def _reference(logits, labels, entry_loss, regulariser=None):
    """Mean over every (image, class) entry of ``entry_loss(p, observed)``, plus a batch term."""
    probabilities = torch.sigmoid(logits).tolist()
    size, num_classes = logits.shape
    total = 0.0
    for b in range(size):
        for c in range(num_classes):
            total += entry_loss(probabilities[b][c], labels[b, c].item() == 1, num_classes)
    loss = total / (size * num_classes)
    if regulariser is not None:
        loss += regulariser(probabilities, num_classes)
    return loss


def _epr_penalty(k_hat):
    def penalty(probabilities, num_classes):
        mean_positives = sum(sum(row) for row in probabilities) / len(probabilities)
        return ((mean_positives - k_hat) / num_classes) ** 2

    return penalty


def test_assume_negative_is_bce_with_unknown_labels_as_zeros():
    logits, labels = _batch()
    expected = _reference(logits, labels, lambda p, y, C: -math.log(p) if y else -math.log(1 - p))
    torch.testing.assert_close(assume_negative_loss(logits, labels).item(), expected)
    torch.testing.assert_close(
        assume_negative_loss(logits.float(), labels), binary_cross_entropy(logits, labels)
    )


def test_label_smoothing_and_weak_negative_losses():
    logits, labels = _batch(1)
    eps = 0.1

    def smoothed(p, y, C):
        target = 1 - eps if y else eps
        return -(target * math.log(p) + (1 - target) * math.log(1 - p))

    torch.testing.assert_close(
        label_smoothing_loss(logits, labels, eps).item(), _reference(logits, labels, smoothed)
    )

    def weak(p, y, C):
        return -math.log(p) if y else -math.log(1 - p) / (C - 1)

    torch.testing.assert_close(
        weak_assume_negative_loss(logits, labels).item(), _reference(logits, labels, weak)
    )


def test_expected_positive_regularisation():
    logits, labels = _batch(2)
    expected = _reference(
        logits, labels, lambda p, y, C: -math.log(p) if y else 0.0, _epr_penalty(2.5)
    )
    torch.testing.assert_close(expected_positive_loss(logits, labels, 2.5).item(), expected)


def test_role_loss_and_its_gradients():
    logits, labels = _batch(3)
    estimate_logits = torch.randn(logits.shape, dtype=torch.float64)
    k_hat = 2.0
    p, e = torch.sigmoid(logits).tolist(), torch.sigmoid(estimate_logits).tolist()
    size, num_classes = logits.shape
    total = 0.0
    for b in range(size):
        for c in range(num_classes):
            observed = labels[b, c].item() == 1
            for x, target in ((p[b][c], e[b][c]), (e[b][c], p[b][c])):
                total += -(target * math.log(x) + (1 - target) * math.log(1 - x))  # cross terms
                total += -math.log(x) if observed else 0.0  # EPR's observed positive
    expected = 0.5 * total / (size * num_classes)
    expected += 0.5 * (_epr_penalty(k_hat)(p, num_classes) + _epr_penalty(k_hat)(e, num_classes))

    logits.requires_grad_(True)
    estimate_logits.requires_grad_(True)
    loss = role_loss(logits, estimate_logits, labels, k_hat)
    torch.testing.assert_close(loss.item(), expected)
    # Each side learns from the other's detached probabilities: the estimator's gradient does
    # not depend on how the classifier's targets would move.
    loss.backward()
    torch.testing.assert_close(
        estimate_logits.grad,
        torch.autograd.grad(
            role_loss(logits.detach(), estimate_logits, labels, k_hat), estimate_logits
        )[0],
    )


def test_entropy_maximisation_with_and_without_pseudo_labels():
    logits, labels = _batch(4)
    alpha, beta = 0.2, 0.5

    def entropy(p):
        return -(p * math.log(p) + (1 - p) * math.log(1 - p))

    expected = _reference(
        logits, labels, lambda p, y, C: -math.log(p) if y else -alpha * entropy(p)
    )
    torch.testing.assert_close(entropy_maximization_loss(logits, labels, alpha).item(), expected)

    # APL: some unknown entries carry a soft negative pseudo-label s and use β·BCE(p, s).
    pseudo_mask = (torch.rand(logits.shape, generator=torch.Generator().manual_seed(0)) < 0.4) & (
        labels == 0
    )
    pseudo_labels = torch.where(pseudo_mask, 0.05 * torch.ones_like(logits), 0.0)
    probabilities = torch.sigmoid(logits)
    total = 0.0
    for b in range(logits.shape[0]):
        for c in range(logits.shape[1]):
            p = probabilities[b, c].item()
            if labels[b, c] == 1:
                total += -math.log(p)
            elif pseudo_mask[b, c]:
                s = pseudo_labels[b, c].item()
                total += -beta * (s * math.log(p) + (1 - s) * math.log(1 - p))
            else:
                total += -alpha * entropy(p)
    actual = entropy_maximization_loss(logits, labels, alpha, pseudo_labels, pseudo_mask, beta)
    torch.testing.assert_close(actual.item(), total / logits.numel())


def test_label_correlation_is_the_conditional_frequency_on_binary_labels():
    labels = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float32)
    correlation = label_correlation(labels)
    # P(j | i) by counting: of the 3 images with class 0, 2 have class 1 and 1 has class 2.
    expected = torch.tensor([[1, 2 / 3, 1 / 3], [2 / 3, 1, 1 / 3], [1, 1, 1]])
    torch.testing.assert_close(correlation, expected)


def test_estimator_moves_only_the_batch_rows_and_keeps_observed_positives():
    """ROLE's E-step on a toy problem: the classifier is fixed, so the estimates of the batch
    converge to its probabilities; observed positives stay at 0.995; other rows never move."""
    torch.manual_seed(0)
    estimator = LabelEstimator(num_images=10, num_classes=4, init_range=(0.4, 0.6))
    before = estimator.logits.detach().clone()
    index = torch.tensor([2, 5, 7])
    labels = torch.zeros(3, 4)
    labels[torch.arange(3), torch.tensor([0, 3, 1])] = 1
    target = torch.tensor([[9.0, 2.0, -2.0, -3.0], [-2.0, 2.0, -3.0, 9.0], [-3.0, 9.0, 2.0, -2.0]])
    group = {"params": [estimator.logits], "lr": 0.05, "betas": (0.0, 0.999), "weight_decay": 0.0}
    optimizer = torch.optim.AdamW([group])
    for step in range(300):
        if step == 150:  # other rows get a gradient once, then never again: no momentum drift
            estimator(torch.tensor([0]), torch.zeros(1, 4)).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
            touched_once = estimator.logits.detach()[0].clone()
        loss = role_loss(target, estimator(index, labels), labels, expected_positives=2.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        estimator.record_observed(index, labels)
    after = estimator.logits.detach()
    untouched = torch.tensor([1, 3, 4, 6, 8, 9])
    torch.testing.assert_close(after[untouched], before[untouched], rtol=0, atol=0)
    torch.testing.assert_close(after[0], touched_once, rtol=0, atol=0)
    estimates = torch.sigmoid(after[index])
    observed = labels.bool()
    torch.testing.assert_close(estimates[observed], torch.full((3,), 0.995))
    # Unknown entries follow the classifier: positive where it says positive.
    assert ((estimates > 0.5) == (torch.sigmoid(target) > 0.5))[~observed].all()


def test_pseudo_label_quality_counts_against_the_hidden_labels():
    estimator = LabelEstimator(3, 4)
    with torch.no_grad():
        estimator.logits.copy_(
            torch.tensor([[5.0, 5.0, -5.0, -5.0], [-5.0, -5.0, 5.0, -5.0], [-5.0] * 4])
        )
    full = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 0], [1, 0, 0, 0]]).bool()
    observed = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]).float()
    quality = pseudo_label_quality(estimator, SimpleNamespace(labels=observed, full_labels=full))
    # Predicted {0, 1}, {2} and {0} (observed, though its logit says no): 4 labels, all true, of
    # 6 true ones. Of the 3 hidden positives (0, 1), (0, 2), (1, 1) only (0, 1) is found.
    assert quality["precision"] == pytest.approx(100.0)
    assert quality["recall"] == pytest.approx(100 * 4 / 6)
    assert quality["hidden_recall"] == pytest.approx(100 / 3)
    # Ranking the 9 unobserved entries: one hidden positive alone on top, then a tie of 8 holding
    # the other 2: AP = 1/3 · 1 + 2/3 · 3/9.
    assert quality["hidden_ap"] == pytest.approx(100 * (1 / 3 + 2 / 9))
    assert quality["positives_per_image"] == pytest.approx(4 / 3)


# --------------------------------------------------------------------------- the method


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = ensure_synthetic(
        tmp_path_factory.mktemp("synthetic"), num_train=48, num_val=24, image_size=48
    )
    return root


def _spml_config(out_dir, root, loss, **overrides):
    return load_config(
        None,
        {
            "model.method": "spml",
            "model.backbone": "test_resnet",
            "data.dataset": "synthetic",
            "data.root": str(root),
            "data.synthetic_train": 48,
            "data.synthetic_val": 24,
            "data.synthetic_image_size": 48,
            "data.labels": "single_positive",
            "data.image_size": 48,
            "data.batch_size": 16,
            "data.workers": 0,
            "optim.schedule": "constant",
            "run.out_dir": str(out_dir),
            "run.epochs": 1,
            "run.progress": False,
            "method.loss": loss,
            **overrides,
        },
    )


def test_role_refuses_onecycle(tmp_path):
    config = _spml_config(tmp_path, tmp_path, "role", **{"optim.schedule": "onecycle"})
    with pytest.raises(ConfigError, match="onecycle"):
        build_method(config, num_classes=5, num_train_images=8)


def test_training_sees_only_the_observed_positive(tiny_data, tmp_path, monkeypatch):
    """fit with single-positive labels: every batch holds one positive per image, the one of
    the single-positive draw, never another of the image's true labels."""
    seen = []
    forward = SinglePositive.forward

    def spy(self, batch, phase="main"):
        seen.append((batch["index"].clone(), batch["labels"].clone(), batch["observed"].clone()))
        return forward(self, batch, phase)

    monkeypatch.setattr(SinglePositive, "forward", spy)
    fit(_spml_config(tmp_path, tiny_data, "role", **{"run.epochs": 2}))
    train = build_dataset("synthetic", tiny_data, "train", labels="single_positive")
    assert (train.full_labels.sum(1) > 1).any()  # there are hidden labels to leak
    assert len(seen) == 2 * (48 // 16)
    for index, labels, observed in seen:
        assert (labels.sum(1) <= 1).all()
        torch.testing.assert_close(labels, train.labels[index])
        assert torch.equal(observed, labels.bool())

    # The estimator was trained and saved with the method; its quality is measurable.
    checkpoint = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert checkpoint["model"]["label_estimator.logits"].shape == (48, 24)


@pytest.mark.parametrize("loss", ["an", "an_ls", "wan", "epr", "role", "em"])
def test_a_few_steps_reduce_each_loss(tiny_data, tmp_path, loss):
    config = _spml_config(tmp_path, tiny_data, loss, **{"optim.lr": 3e-3})
    train = build_dataset("synthetic", tiny_data, "train", labels="single_positive")
    torch.manual_seed(0)
    method = build_method(config, num_classes=train.num_classes, num_train_images=len(train))
    samples = [train[i] for i in range(8)]  # no transform: [3, 48, 48] in [0, 1]
    batch = {
        "image": torch.stack([s["image"] for s in samples]),
        "labels": torch.stack([s["labels"] for s in samples]),
        "observed": torch.stack([s["observed"] for s in samples]),
        "index": torch.stack([s["index"] for s in samples]),
    }
    optimizer = torch.optim.AdamW(method.param_groups("main", 0.0), lr=config.optim.lr)
    losses = []
    for _ in range(8):
        outputs = method(batch)
        optimizer.zero_grad()
        outputs["loss"].backward()
        optimizer.step()
        method.after_step(batch, outputs)
        losses.append(outputs["loss"].item())
    assert losses[-1] < losses[0], losses
    if loss == "role":
        estimates = torch.sigmoid(method.label_estimator.logits.detach()[batch["index"]])
        torch.testing.assert_close(estimates[batch["labels"].bool()], torch.full((8,), 0.995))
