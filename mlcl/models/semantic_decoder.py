"""The semantic decoder: one learned query per class reads the image (Query2Label; SADCL's
semantic-aware representation learning).

Pipeline, for a backbone feature map ``[B, F, h, w]``:

1. project it to the hidden size ``D`` (a 1×1 convolution; none when ``D = F``, as in SADCL's run);
2. add a 2-D sine positional encoding to the keys (:mod:`mlcl.models.position_encoding`);
3. optionally refine the ``h·w`` tokens with transformer encoder layers;
4. a transformer decoder whose ``C`` queries are learned embeddings (``nn.Embedding(C, D)``), one
   per class: each decoder layer lets every class query attend over the pixels (cross-attention),
   optionally to the other queries first (self-attention; SADCL's run drops it);
5. the outputs are the label-level features ``[B, C, D]``; a group-wise linear head
   (:class:`mlcl.models.GroupWiseLinear`) turns them into logits ``[B, C]``.

Cross-attention is a soft localisation: class c's attention over the ``h × w`` pixels says where
the decoder looked for c. ``return_attention=True`` returns the last decoder layer's map
``[B, C, h, w]`` (averaged over heads) from the same forward; without it the attention runs in
PyTorch's fused kernel (``scaled_dot_product_attention``) and never materialises the weights.

Layers are post-norm (normalise after each residual), as in DETR and Query2Label.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlcl.models.backbone import Backbone
from mlcl.models.heads import GroupWiseLinear
from mlcl.models.position_encoding import SinePositionEncoding
from mlcl.models.transformer_spec import TransformerSpec


class FeedForward(nn.Sequential):
    """``Linear(D, ff) → ReLU → Dropout → Linear(ff, D)``."""

    def __init__(self, dim: int, ff_dim: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(dim, ff_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(ff_dim, dim),
        )


class EncoderLayer(nn.Module):
    """Self-attention among pixels (positions added to queries and keys), then feed-forward."""

    def __init__(self, spec: TransformerSpec) -> None:
        super().__init__()
        dim, dropout = spec.dim, spec.dropout
        self.self_attn = nn.MultiheadAttention(dim, spec.heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.feed_forward = FeedForward(dim, spec.ff_dim, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``[B, N, D]``, ``position`` ``[1, N, D]`` → ``[B, N, D]``."""
        with_position = tokens + position
        attended = self.self_attn(with_position, with_position, tokens, need_weights=False)[0]
        tokens = self.norm1(tokens + self.dropout(attended))
        return self.norm2(tokens + self.dropout(self.feed_forward(tokens)))


class DecoderLayer(nn.Module):
    """[Self-attention among the class queries,] cross-attention from the queries to the pixels
    (positions added to the keys), then feed-forward."""

    def __init__(self, spec: TransformerSpec, self_attention: bool = True) -> None:
        super().__init__()
        dim, heads, dropout = spec.dim, spec.heads, spec.dropout
        self.self_attn = None
        if self_attention:
            self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
            self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.feed_forward = FeedForward(dim, spec.ff_dim, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        queries: torch.Tensor,
        memory: torch.Tensor,
        position: torch.Tensor,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``queries`` ``[B, C, D]``, ``memory`` ``[B, N, D]``, ``position`` ``[1, N, D]`` →
        updated queries ``[B, C, D]`` and, if ``need_weights``, the cross-attention weights
        averaged over heads ``[B, C, N]``."""
        if self.self_attn is not None:
            attended = self.self_attn(queries, queries, queries, need_weights=False)[0]
            queries = self.norm1(queries + self.dropout(attended))
        attended, weights = self.cross_attn(
            queries, memory + position, memory, need_weights=need_weights
        )
        queries = self.norm2(queries + self.dropout(attended))
        queries = self.norm3(queries + self.dropout(self.feed_forward(queries)))
        return queries, weights


class SemanticDecoder(nn.Module):
    """Feature map ``[B, F, h, w]`` → label-level features ``[B, C, D]`` (see module docstring).

    Args:
        in_channels: ``F``, the backbone's channels.
        num_classes: ``C``, one query per class.
        spec: the layers' size, shared by the encoder and the decoder: hidden size ``D`` (0
            keeps ``F``, no input projection), heads (SADCL: 4), feed-forward width (0 means
            ``4·D``; SADCL: 8192 at D = 2048), dropout (SADCL: 0.1).
        encoder_layers / decoder_layers: SADCL: 1 / 2.
        query_self_attention: keep the self-attention among queries in every decoder layer
            (Query2Label's default); SADCL's run drops it.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        spec: TransformerSpec,
        encoder_layers: int = 1,
        decoder_layers: int = 2,
        query_self_attention: bool = True,
    ) -> None:
        super().__init__()
        spec = spec.for_input(in_channels)
        dim = spec.dim
        if dim % spec.heads:
            raise ValueError(f"the hidden size {dim} is not divisible by {spec.heads} heads")
        if decoder_layers < 1:
            raise ValueError("the semantic decoder needs at least one decoder layer")
        self.dim = dim
        self.input_proj = (
            nn.Conv2d(in_channels, dim, kernel_size=1) if dim != in_channels else nn.Identity()
        )
        self.position_encoding = SinePositionEncoding(dim)
        self.encoder = nn.ModuleList(EncoderLayer(spec) for _ in range(encoder_layers))
        self.queries = nn.Embedding(num_classes, dim)
        self.decoder = nn.ModuleList(
            DecoderLayer(spec, query_self_attention) for _ in range(decoder_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Xavier-uniform for the transformer's matrices, as DETR / Query2Label initialise them.
        for module in (*self.encoder, *self.decoder):
            for param in module.parameters():
                if param.dim() > 1:
                    nn.init.xavier_uniform_(param)

    def forward(
        self, feature_map: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Label-level features ``[B, C, D]`` and, with ``return_attention``, the last decoder
        layer's cross-attention ``[B, C, h, w]`` (mean over heads; None otherwise)."""
        projected = self.input_proj(feature_map)  # [B, D, h, w]
        batch, _, height, width = projected.shape
        position = self.position_encoding(projected).flatten(2).transpose(1, 2)  # [1, hw, D]
        memory = projected.flatten(2).transpose(1, 2)  # [B, hw, D]
        for layer in self.encoder:
            memory = layer(memory, position)
        queries = self.queries.weight[None].expand(batch, -1, -1)  # [B, C, D]
        weights = None
        for index, layer in enumerate(self.decoder):
            is_last = index == len(self.decoder) - 1
            queries, weights = layer(
                queries, memory, position, need_weights=return_attention and is_last
            )
        label_features = self.norm(queries)  # [B, C, D]
        attention = None
        if return_attention:
            attention = weights.reshape(batch, -1, height, width)  # [B, C, h, w]
        return label_features, attention


class Query2Label(nn.Module):
    """Backbone → :class:`SemanticDecoder` → group-wise linear classifier.

    ``forward(images)`` returns ``{"logits": [B, C], "label_features": [B, C, D]}`` and, with
    ``return_attention=True``, ``"attention": [B, C, h, w]``. ``spec`` and ``decoder_options``
    are :class:`SemanticDecoder`'s.
    """

    def __init__(
        self, backbone: Backbone, num_classes: int, spec: TransformerSpec, **decoder_options: Any
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = SemanticDecoder(backbone.num_features, num_classes, spec, **decoder_options)
        self.head = GroupWiseLinear(num_classes, self.decoder.dim)

    def forward(
        self, images: torch.Tensor, return_attention: bool = False
    ) -> dict[str, torch.Tensor]:
        feature_map = self.backbone(images)[-1]  # [B, F, h, w]
        label_features, attention = self.decoder(feature_map, return_attention)
        outputs = {"logits": self.head(label_features), "label_features": label_features}
        if attention is not None:
            outputs["attention"] = attention
        return outputs
