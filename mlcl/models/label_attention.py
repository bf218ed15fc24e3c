"""MulCon's label-level embedding module (Dao et al., 2021): per-class attention over pixels.

A global-pooled feature mixes every object of an image into one vector. MulCon instead learns
one query ``q_c`` per class and pools the pixels ``x_p`` of the backbone's feature map with the
attention of that query:

    a_cp = softmax_p( <W_q q_c, W_k x_p> / sqrt(d_k) )
    e_c  = Σ_p a_cp · W_v x_p

giving one label-level embedding ``e_c`` per class and image, ``[B, C, D]``. Each embedding is
classified by its own weight vector (:class:`mlcl.models.GroupWiseLinear`) and contrasted with
the embeddings of the same class in other images (:func:`mlcl.losses.multilabel_supcon_loss`).

The ``1 / sqrt(d_k)`` scale is the usual dot-product attention's; ``W_v`` is a 1×1 projection of
the pixels to ``D`` (none when ``D`` equals the backbone's channels). One head, no positional
encoding: the module is a single cross-attention step, not a transformer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlcl.models.backbone import Backbone
from mlcl.models.heads import GroupWiseLinear


class LabelAttention(nn.Module):
    """Feature map ``[B, F, h, w]`` → label-level embeddings ``[B, C, D]`` (see module docstring).

    Args:
        in_channels: ``F``, the backbone's channels.
        num_classes: ``C``.
        dim: ``D``, the embeddings' size; 0 keeps ``F`` (no value projection).
        key_dim: ``d_k``, the size queries and keys are compared in; 0 means ``D``.
    """

    def __init__(self, in_channels: int, num_classes: int, dim: int = 0, key_dim: int = 0) -> None:
        super().__init__()
        self.dim = dim or in_channels
        self.key_dim = key_dim or self.dim
        self.queries = nn.Parameter(torch.randn(num_classes, self.key_dim))  # q_c
        self.query_proj = nn.Linear(self.key_dim, self.key_dim)  # W_q
        self.key_proj = nn.Linear(in_channels, self.key_dim)  # W_k
        self.value_proj = (
            nn.Linear(in_channels, self.dim) if self.dim != in_channels else nn.Identity()
        )  # W_v

    def forward(
        self, feature_map: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings ``[B, C, D]`` and, with ``return_attention``, the attention of every class
        over the pixels ``[B, C, h, w]`` (None otherwise)."""
        batch, _, height, width = feature_map.shape
        pixels = feature_map.flatten(2).transpose(1, 2)  # [B, hw, F]
        keys = self.key_proj(pixels)  # [B, hw, d_k]
        values = self.value_proj(pixels)  # [B, hw, D]
        queries = self.query_proj(self.queries)[None].expand(batch, -1, -1)  # [B, C, d_k]
        if not return_attention:
            # The fused kernel never materialises the [B, C, hw] weights.
            return F.scaled_dot_product_attention(queries, keys, values), None
        scores = queries @ keys.transpose(1, 2) / self.key_dim**0.5  # [B, C, hw]
        attention = scores.softmax(dim=-1)
        embeddings = attention @ values  # [B, C, D]
        return embeddings, attention.reshape(batch, -1, height, width)


class MulConModel(nn.Module):
    """Backbone → :class:`LabelAttention` → group-wise linear classifier.

    ``forward(images)`` returns ``{"logits": [B, C], "label_features": [B, C, D]}`` and, with
    ``return_attention=True``, ``"attention": [B, C, h, w]``.
    """

    def __init__(self, backbone: Backbone, num_classes: int, dim: int = 0, key_dim: int = 0):
        super().__init__()
        self.backbone = backbone
        self.label_attention = LabelAttention(backbone.num_features, num_classes, dim, key_dim)
        self.head = GroupWiseLinear(num_classes, self.label_attention.dim)

    def forward(
        self, images: torch.Tensor, return_attention: bool = False
    ) -> dict[str, torch.Tensor]:
        feature_map = self.backbone(images)[-1]  # [B, F, h, w]
        label_features, attention = self.label_attention(feature_map, return_attention)
        outputs = {"logits": self.head(label_features), "label_features": label_features}
        if attention is not None:
            outputs["attention"] = attention
        return outputs
