"""The projection head of contrastive learning (SimCLR, SupCon, MulCon, SADCL).

Contrastive losses are computed on a small MLP's output, not on the features the classifier uses:
the loss may then discard what it does not need (in the projection) without taking it away from
the classifier. SADCL: ``Linear(D, D) → ReLU → Linear(D, 1024)``.
"""

from __future__ import annotations

from torch import nn


class Projector(nn.Sequential):
    """``Linear(in_dim, hidden_dim) → ReLU → Linear(hidden_dim, out_dim)``, applied to the last
    dimension (``[..., in_dim]`` → ``[..., out_dim]``). ``hidden_dim`` 0 means ``in_dim``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 0) -> None:
        hidden_dim = hidden_dim or in_dim
        super().__init__(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
        )
