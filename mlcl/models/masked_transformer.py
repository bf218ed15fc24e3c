"""Scob's recurrent semantic masked transformer (Chen et al., IJCV 2023).

From two backbone stages (ResNet stage 3 at stride 16 and stage 4 at stride 32), each scale goes
through a :class:`MaskedTokenEncoder`: a 1×1 convolution to ``dim / 2`` channels, a learned 2-d
positional encoding, a transformer encoder over the ``h·w`` spatial tokens and an average over
the tokens. A key-padding mask removes the tokens outside an object's class-activation region,
so the pooled vector describes that object rather than the whole image. The two scales,
concatenated, are the *object-level representation* ``[B, dim]`` (:class:`ObjectEncoder`).

:class:`SemanticMaskedTransformer` adds what Scob trains on top: a classifier ``Linear(dim, C)``,
a projector ``Linear–LeakyReLU–Linear`` for the contrastive query, and a momentum ("key") copy of
the object encoder, updated by :func:`momentum_update` (MoCo, He et al. 2020).

Two choices differ from the public code, both so that a masked token has no influence at all:
the average is over the *unmasked* tokens (the code averages every output token, and a masked
token's output still carries its own input through the residual connections); and an image whose
mask would hide every token keeps all of them (the code's attention would produce NaN).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mlcl.models.backbone import Backbone
from mlcl.models.transformer_spec import TransformerSpec


class LearnedPositionEncoding2d(nn.Module):
    """A learned embedding per row and per column, concatenated: ``[dim, h, w]`` for grids up to
    ``max_size`` × ``max_size`` (the "learned" encoding of DETR, which Scob's code uses)."""

    def __init__(self, dim: int, max_size: int = 64) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"the positional encoding needs an even dimension, got {dim}")
        self.max_size = max_size
        self.rows = nn.Embedding(max_size, dim // 2)
        self.columns = nn.Embedding(max_size, dim // 2)
        nn.init.uniform_(self.rows.weight)
        nn.init.uniform_(self.columns.weight)

    def forward(self, height: int, width: int) -> torch.Tensor:
        if height > self.max_size or width > self.max_size:
            raise ValueError(f"a {height} x {width} grid exceeds max_size {self.max_size}")
        device = self.rows.weight.device
        rows = self.rows(torch.arange(height, device=device))  # [h, dim/2]
        columns = self.columns(torch.arange(width, device=device))  # [w, dim/2]
        grid = torch.cat(
            [columns[None].expand(height, -1, -1), rows[:, None].expand(-1, width, -1)], dim=-1
        )  # [h, w, dim]
        return grid.permute(2, 0, 1)  # [dim, h, w]


def masked_mean(tokens: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``[B, N, D]`` tokens over the unmasked ones (``padding_mask`` ``[B, N]``, True =
    ignore) → ``[B, D]``."""
    if padding_mask is None:
        return tokens.mean(dim=1)
    keep = (~padding_mask).to(tokens.dtype)[..., None]  # [B, N, 1]
    return (tokens * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)


def guard_padding_mask(padding_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Rows that would mask every token keep all of them instead (softmax over no key is NaN)."""
    if padding_mask is None:
        return None
    everything_masked = padding_mask.all(dim=1, keepdim=True)  # [B, 1]
    return padding_mask & ~everything_masked


class MaskedTokenEncoder(nn.Module):
    """One scale: feature map ``[B, in_channels, h, w]`` (+ key-padding mask ``[B, h, w]``, True =
    token outside the object) → object vector ``[B, spec.dim]``."""

    def __init__(self, in_channels: int, spec: TransformerSpec, num_layers: int = 2) -> None:
        super().__init__()
        dim = spec.dim
        self.input_proj = nn.Conv2d(in_channels, dim, kernel_size=1)
        self.position = LearnedPositionEncoding2d(dim)
        layer = nn.TransformerEncoderLayer(
            dim, spec.heads, spec.ff_dim, spec.dropout, activation=F.leaky_relu, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False
        )

    def forward(
        self, feature_map: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        height, width = feature_map.shape[-2:]
        x = self.input_proj(feature_map) + self.position(height, width)  # [B, dim, h, w]
        tokens = x.flatten(2).transpose(1, 2)  # [B, h·w, dim]
        if padding_mask is not None:
            padding_mask = guard_padding_mask(padding_mask.flatten(1))  # [B, h·w]
        tokens = self.encoder(tokens, src_key_padding_mask=padding_mask)
        return masked_mean(tokens, padding_mask)  # [B, dim]


class ObjectEncoder(nn.Module):
    """Several scales, one :class:`MaskedTokenEncoder` each, concatenated: ``[B, spec.dim]``
    with ``spec.dim / num_scales`` per scale."""

    def __init__(
        self, in_channels: Sequence[int], spec: TransformerSpec, num_layers: int = 2
    ) -> None:
        super().__init__()
        dim = spec.dim
        if dim % len(in_channels):
            raise ValueError(f"dim {dim} does not split evenly over {len(in_channels)} scales")
        scale_spec = dataclasses.replace(spec, dim=dim // len(in_channels))
        self.dim = dim
        self.scales = nn.ModuleList(
            MaskedTokenEncoder(channels, scale_spec, num_layers) for channels in in_channels
        )

    def forward(
        self,
        feature_maps: Sequence[torch.Tensor],
        padding_masks: Sequence[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        if padding_masks is None:
            padding_masks = [None] * len(feature_maps)
        pooled = [
            encoder(feature_map, mask)
            for encoder, feature_map, mask in zip(self.scales, feature_maps, padding_masks)
        ]
        return torch.cat(pooled, dim=1)  # [B, dim]

    def transformer_parameters(self) -> list[nn.Parameter]:
        """The transformer encoders' parameters (Scob's code gives them a small learning rate)."""
        return [p for scale in self.scales for p in scale.encoder.parameters()]

    def linear_parameters(self) -> list[nn.Parameter]:
        """The 1×1 convolutions and positional encodings (trained at the classifier's rate)."""
        return [
            p
            for scale in self.scales
            for module in (scale.input_proj, scale.position)
            for p in module.parameters()
        ]


class Projector(nn.Sequential):
    """``Linear–LeakyReLU–Linear``: the contrastive query head."""

    def __init__(self, dim: int) -> None:
        super().__init__(nn.Linear(dim, dim), nn.LeakyReLU(), nn.Linear(dim, dim))


@torch.no_grad()
def momentum_update(key: nn.Module, online: nn.Module, momentum: float) -> None:
    """``key ← m · key + (1 − m) · online`` for every parameter (MoCo's key encoder)."""
    for key_param, online_param in zip(key.parameters(), online.parameters(), strict=True):
        key_param.lerp_(online_param.detach(), 1.0 - momentum)


class SemanticMaskedTransformer(nn.Module):
    """Backbone → two scales → masked transformers → object representation, with a classifier,
    a projector and a momentum copy of the object encoder.

    ``backbone`` must return two maps (e.g. ``Backbone(name, out_indices=(-2, -1))``); Scob's
    code uses ``TransformerSpec(1024, heads=8, ff_dim=2048, dropout=0.1)`` and 2 layers.
    """

    def __init__(
        self, backbone: Backbone, num_classes: int, spec: TransformerSpec, num_layers: int = 2
    ) -> None:
        super().__init__()
        dim = spec.dim
        self.backbone = backbone
        self.encoder = ObjectEncoder(backbone.channels, spec, num_layers)
        self.key_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.projector = Projector(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Backbone maps, finest first: ``[B, C_s, h_s, w_s]`` per scale."""
        return self.backbone(images)

    def classify(
        self,
        feature_maps: Sequence[torch.Tensor],
        padding_masks: Sequence[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, C]`` of the (masked) object representation."""
        return self.classifier(self.encoder(feature_maps, padding_masks))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` of the whole image (no mask)."""
        return self.classify(self.feature_maps(images))

    def momentum_update(self, momentum: float) -> None:
        momentum_update(self.key_encoder, self.encoder, momentum)
