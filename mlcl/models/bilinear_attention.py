"""Low-rank bilinear attention: one feature vector per label, pooled from the image's tokens.

For token ``x_p`` (a position of the feature map) and label embedding ``e_c`` (SALGL):

    t_cp = w · W (tanh(U x_p ⊙ V e_c))      a score per (label, position)
    α_c = softmax_p(t_c)                   where label c looks
    h_c = Σ_p α_cp x_p                     the label-level feature

``U x ⊙ V e`` is a bilinear form of rank ``attention_dim``: cheap, yet each label scores each
position with its own weighting of the feature channels. The maps ``α`` are the figures.
"""

from __future__ import annotations

import torch
from torch import nn


class LowRankBilinearAttention(nn.Module):
    """Label-level features from image tokens and label embeddings.

    Args:
        feature_dim: token size ``F``.
        embedding_dim: label embedding size ``e``.
        attention_dim: rank of the bilinear form (SALGL: 1024).
    """

    def __init__(self, feature_dim: int, embedding_dim: int, attention_dim: int = 1024) -> None:
        super().__init__()
        self.project_tokens = nn.Linear(feature_dim, attention_dim, bias=False)  # U
        self.project_labels = nn.Linear(embedding_dim, attention_dim, bias=False)  # V
        self.hidden = nn.Linear(attention_dim, attention_dim)  # W
        self.score = nn.Linear(attention_dim, 1)  # w

    def forward(
        self, tokens: torch.Tensor, label_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``[B, N, F]`` and label embeddings ``[C, e]`` → label features ``[B, C, F]``
        and attention maps ``[B, C, N]`` (each row sums to 1 over the N positions)."""
        tokens_projected = self.project_tokens(tokens)[:, None]  # [B, 1, N, a]
        labels_projected = self.project_labels(label_embeddings)[None, :, None]  # [1, C, 1, a]
        joint = torch.tanh(tokens_projected * labels_projected)  # [B, C, N, a]
        scores = self.score(self.hidden(joint)).squeeze(-1)  # [B, C, N]
        attention = scores.softmax(dim=-1)
        label_features = attention @ tokens  # [B, C, F]
        return label_features, attention
