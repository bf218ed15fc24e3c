"""Classification heads shared by the methods."""

from __future__ import annotations

import math

import torch
from torch import nn


class GroupWiseLinear(nn.Module):
    """One weight vector and bias per class: ``logit_c = <W_c, h_c> + b_c``.

    Turns label-level features ``[B, C, D]`` into logits ``[B, C]`` (Query2Label, SADCL, SALGL).
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        self.bias = nn.Parameter(torch.empty(num_classes))
        bound = 1.0 / math.sqrt(dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, label_features: torch.Tensor) -> torch.Tensor:
        return (label_features * self.weight).sum(dim=-1) + self.bias
