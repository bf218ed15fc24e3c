"""The semantic decoder, MulCon's label attention, the positional encoding and the projector:
shapes, gradients, and the fast (fused) and visualisation paths computing the same thing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mlcl.models import Backbone
from mlcl.models.label_attention import LabelAttention, MulConModel
from mlcl.models.position_encoding import SinePositionEncoding, sine_position_encoding
from mlcl.models.projector import Projector
from mlcl.models.semantic_decoder import Query2Label, SemanticDecoder
from mlcl.models.transformer_spec import TransformerSpec


def test_sine_encoding_values_and_shape():
    encoding = sine_position_encoding(3, 5, dim=8)
    assert encoding.shape == (8, 3, 5)
    # Channel 0 is sin of the normalised row; channel 4 (first of the column half) of the column.
    rows = torch.arange(1, 4) / 3 * 2 * math.pi
    cols = torch.arange(1, 6) / 5 * 2 * math.pi
    torch.testing.assert_close(encoding[0, :, 0], rows.sin(), atol=1e-5, rtol=0)
    torch.testing.assert_close(encoding[1, :, 0], rows.cos(), atol=1e-5, rtol=0)
    torch.testing.assert_close(encoding[4, 0, :], cols.sin(), atol=1e-5, rtol=0)
    # Every position gets its own code.
    codes = encoding.flatten(1).T
    assert torch.cdist(codes, codes).add(torch.eye(15)).min() > 1e-3
    with pytest.raises(ValueError, match="divisible by 4"):
        sine_position_encoding(2, 2, dim=6)


def test_sine_encoding_module_caches_per_size():
    module = SinePositionEncoding(16)
    first = module(torch.zeros(2, 16, 4, 4))
    assert first.shape == (1, 16, 4, 4)
    assert module(torch.zeros(1, 16, 4, 4)) is first
    assert module(torch.zeros(1, 16, 3, 4)).shape == (1, 16, 3, 4)


@pytest.mark.parametrize("self_attention", [True, False])
def test_semantic_decoder_shapes_and_attention(self_attention):
    decoder = SemanticDecoder(
        in_channels=12,
        num_classes=5,
        spec=TransformerSpec(dim=16, heads=2, ff_dim=0),
        decoder_layers=2,
        query_self_attention=self_attention,
    ).eval()
    assert isinstance(decoder.input_proj, nn.Conv2d)
    assert (decoder.decoder[0].self_attn is not None) == self_attention
    feature_map = torch.randn(3, 12, 4, 6)
    fast, no_attention = decoder(feature_map)
    slow, attention = decoder(feature_map, return_attention=True)
    assert no_attention is None
    assert fast.shape == (3, 5, 16) and attention.shape == (3, 5, 4, 6)
    # The fused path and the one that returns the weights compute the same features.
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention.sum(dim=(2, 3)), torch.ones(3, 5))
    assert (attention >= 0).all()


def test_semantic_decoder_attention_localises_a_planted_key():
    """Cross-attention as soft localisation: with one pixel made to match a class query, that
    class's attention peaks there."""
    torch.manual_seed(0)
    spec = TransformerSpec(dim=8, heads=1, ff_dim=0)
    decoder = SemanticDecoder(8, 3, spec, encoder_layers=0, decoder_layers=1).eval()
    attention_layer = decoder.decoder[0].cross_attn
    with torch.no_grad():
        attention_layer.in_proj_weight.copy_(torch.eye(8).repeat(3, 1))  # q = k = v = x
        attention_layer.in_proj_bias.zero_()
        decoder.queries.weight.copy_(torch.eye(3, 8) * 4)
    feature_map = torch.zeros(1, 8, 5, 5)
    feature_map[0, 1, 2, 3] = 6.0  # pixel (2, 3) looks like class 1's query
    _, attention = decoder(feature_map - sine_position_encoding(5, 5, 8)[None], True)
    assert attention[0, 1].flatten().argmax() == 2 * 5 + 3


def test_semantic_decoder_without_projection_and_gradients_reach_everything():
    spec = TransformerSpec(dim=0, heads=4, ff_dim=0)
    decoder = SemanticDecoder(16, 4, spec, encoder_layers=1, decoder_layers=1)
    assert isinstance(decoder.input_proj, nn.Identity) and decoder.dim == 16
    assert decoder.encoder[0].feed_forward[0].out_features == 64  # ff_dim 0: 4·D
    feature_map = torch.randn(2, 16, 3, 3, requires_grad=True)
    features, _ = decoder(feature_map)
    features.square().sum().backward()
    assert feature_map.grad.abs().sum() > 0
    for name, param in decoder.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_semantic_decoder_rejects_bad_sizes():
    with pytest.raises(ValueError, match="heads"):
        SemanticDecoder(16, 4, TransformerSpec(dim=18, heads=4, ff_dim=0))
    with pytest.raises(ValueError, match="decoder layer"):
        SemanticDecoder(16, 4, TransformerSpec(dim=16, heads=4, ff_dim=0), decoder_layers=0)


def test_label_attention_matches_its_formula():
    torch.manual_seed(0)
    module = LabelAttention(in_channels=6, num_classes=3, dim=5, key_dim=4)
    feature_map = torch.randn(2, 6, 3, 2)
    fast, _ = module(feature_map)
    slow, attention = module(feature_map, return_attention=True)
    assert fast.shape == (2, 3, 5) and attention.shape == (2, 3, 3, 2)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    # One (image, class) by hand: softmax over pixels of <W_q q_c, W_k x_p> / sqrt(d_k).
    pixels = feature_map[1].flatten(1).T  # [6 pixels, 6 channels]
    query = module.query_proj(module.queries[2])
    scores = torch.stack([query @ module.key_proj(x) for x in pixels]) / 2.0
    weights = scores.softmax(dim=0)
    expected = sum(w * module.value_proj(x) for w, x in zip(weights, pixels))
    torch.testing.assert_close(slow[1, 2], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention[1, 2].flatten(), weights, atol=1e-6, rtol=1e-5)


def test_label_attention_gradients():
    module = LabelAttention(8, 4)  # D = F: no value projection
    assert isinstance(module.value_proj, nn.Identity)
    feature_map = torch.randn(2, 8, 2, 2, requires_grad=True)
    module(feature_map)[0].sum().backward()
    assert feature_map.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_projector_shape():
    projector = Projector(16, 8)
    assert projector(torch.randn(2, 5, 16)).shape == (2, 5, 8)
    assert projector[0].out_features == 16


@pytest.mark.parametrize("model_class", [Query2Label, MulConModel])
def test_full_models_give_logits_features_and_attention(model_class):
    backbone = Backbone("test_resnet")  # 96 channels at stride 32
    if model_class is Query2Label:
        spec = TransformerSpec(dim=32, heads=2, ff_dim=0)
        model = Query2Label(backbone, 5, spec, encoder_layers=1, decoder_layers=1)
    else:
        model = MulConModel(backbone, 5, dim=32)
    model.eval()
    images = torch.randn(2, 3, 64, 64)
    outputs = model(images, return_attention=True)
    assert outputs["logits"].shape == (2, 5)
    assert outputs["label_features"].shape == (2, 5, 32)
    assert outputs["attention"].shape == (2, 5, 2, 2)
    torch.testing.assert_close(model(images)["logits"], outputs["logits"], atol=1e-5, rtol=1e-5)
