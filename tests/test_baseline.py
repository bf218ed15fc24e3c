"""The baseline's head: linear by default, a hidden layer for the decoder ablation, and its
evidence maps either way."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlcl.config import load_config
from mlcl.explain import evidence_maps
from mlcl.methods import build_method

NUM_CLASSES = 5


def baseline(**overrides):
    torch.manual_seed(0)
    config = load_config(None, {"model.backbone": "test_resnet", **overrides})
    return build_method(config, num_classes=NUM_CLASSES, num_train_images=8).eval()


def test_hidden_dim_puts_a_hidden_layer_of_that_width_before_the_classifier():
    linear, mlp = baseline(), baseline(**{"method.hidden_dim": 40})
    assert isinstance(linear.classifier, nn.Linear)
    features = linear.backbone.num_features
    count = sum(p.numel() for p in mlp.classifier.parameters())
    assert count == features * 40 + 40 + 40 * NUM_CLASSES + NUM_CLASSES
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert mlp.predict(images).shape == (3, NUM_CLASSES)


@pytest.mark.parametrize("hidden_dim", [0, 40])
def test_evidence_maps_with_either_head(hidden_dim):
    method = baseline(**{"method.hidden_dim": hidden_dim})
    maps = evidence_maps(method, torch.randn(2, 3, 64, 64), torch.tensor([[0, 1], [1, 4]]))
    assert maps.shape == (2, 2, 2) and maps.min() >= 0 and maps.max() <= 1
