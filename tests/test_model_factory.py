"""The one backbone factory every method builds on, and the transformer layer spec."""

from __future__ import annotations

import dataclasses

import pytest

from mlcl.config import ModelConfig
from mlcl.errors import ConfigError
from mlcl.models import Backbone
from mlcl.models.transformer_spec import TransformerSpec


def test_the_factory_builds_what_the_model_section_names():
    model = ModelConfig(backbone="test_resnet", output_stride=16)
    backbone = Backbone.from_config(model, out_indices=(-2, -1))
    by_hand = Backbone("test_resnet", out_indices=(-2, -1), output_stride=16)
    assert (backbone.channels, backbone.strides) == (by_hand.channels, by_hand.strides)
    assert backbone.strides[-1] == 16  # the output stride reached timm
    assert Backbone.from_config(ModelConfig(backbone="test_resnet")).strides == [32]


def test_the_factory_names_a_missing_weights_file(tmp_path):
    model = ModelConfig(backbone="test_resnet", pretrained_file=str(tmp_path / "absent.pth"))
    with pytest.raises(ConfigError, match=r"model\.pretrained_file: .*absent\.pth"):
        Backbone.from_config(model)


def test_a_spec_resolves_its_zeros_for_an_input_and_is_frozen():
    spec = TransformerSpec(dim=0, heads=4, ff_dim=0)
    assert spec.for_input(96) == TransformerSpec(dim=96, heads=4, ff_dim=384, dropout=0.1)
    fixed = TransformerSpec(dim=32, heads=2, ff_dim=64, dropout=0.0)
    assert fixed.for_input(96) == fixed  # what it says stays
    with pytest.raises(dataclasses.FrozenInstanceError):
        fixed.dim = 8  # type: ignore[misc]
