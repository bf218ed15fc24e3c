"""The one backbone factory every method builds on, and the transformer layer spec."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mlcl.config import ModelConfig
from mlcl.errors import ConfigError
from mlcl.models import Backbone
from mlcl.models.backbone import FrozenBatchNorm2d
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


def test_frozen_stages_and_batchnorm_keep_the_keys_and_the_eval_outputs():
    torch.manual_seed(0)
    trained = Backbone("test_resnet")
    model = ModelConfig(backbone="test_resnet", frozen_stages=2, frozen_batchnorm=True)
    frozen = Backbone.from_config(model)
    frozen.load_state_dict(trained.state_dict())  # the same keys: checkpoints load both ways
    assert list(frozen.state_dict()) == list(trained.state_dict())
    trained.eval()
    frozen.train()  # frozen BatchNorm ignores the mode: it always uses the stored statistics
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(frozen(images)[-1], trained(images)[-1])
    first = frozen.body.feature_info.info[1]["module"]  # the end of stage 2
    names = [name for name, _ in frozen.body.named_children()]
    for name, child in frozen.body.named_children():
        in_frozen_stage = names.index(name) <= names.index(first)
        for module in child.modules():
            is_norm = isinstance(module, FrozenBatchNorm2d)
            for param in module.parameters(recurse=False):
                assert param.requires_grad == (not in_frozen_stage and not is_norm), name
    frozen(images)[-1].sum().backward()  # trains through the rest
    with pytest.raises(ConfigError, match=r"model\.frozen_stages"):
        Backbone("test_resnet", frozen_stages=9)


def test_a_spec_resolves_its_zeros_for_an_input_and_is_frozen():
    spec = TransformerSpec(dim=0, heads=4, ff_dim=0)
    assert spec.for_input(96) == TransformerSpec(dim=96, heads=4, ff_dim=384, dropout=0.1)
    fixed = TransformerSpec(dim=32, heads=2, ff_dim=64, dropout=0.0)
    assert fixed.for_input(96) == fixed  # what it says stays
    with pytest.raises(dataclasses.FrozenInstanceError):
        fixed.dim = 8  # type: ignore[misc]
