"""Gated graph neural network (Li et al., ICLR 2016) over label nodes, as SALGL uses it.

Every node (label) ``i`` holds a state ``h_i``; one step gathers messages along the edges of an
adjacency ``A`` (``A[i, j]``: how much label j informs label i) and updates each state with a GRU:

    m = [A h ; Aᵀ h]                       in-messages and out-messages, [C, 2F]
    z = σ(W_z m + U_z h)                   update gate
    r = σ(W_r m + U_r h)                   reset gate
    h̃ = tanh(W_h m + U_h (r ⊙ h))
    h ← (1 − z) ⊙ h + z ⊙ h̃

SALGL runs T = 3 steps with a different ``A`` per image (its scene's label graph).
"""

from __future__ import annotations

import torch
from torch import nn


class GatedGraphNetwork(nn.Module):
    """``steps`` GRU-style propagation steps over a batch of graphs.

    Args:
        dim: the node state size ``F``.
        steps: propagation steps ``T`` (SALGL: 3).
        out_messages: also pass messages against the edges (``Aᵀ h``), as SALGL does; without
            them ``m = A h``.
    """

    def __init__(self, dim: int, steps: int = 3, out_messages: bool = True) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        self.steps = steps
        self.out_messages = out_messages
        message_dim = 2 * dim if out_messages else dim
        # W acts on the messages (with the bias), U on the node's own state.
        self.message_update = nn.Linear(message_dim, dim)
        self.message_reset = nn.Linear(message_dim, dim)
        self.message_candidate = nn.Linear(message_dim, dim)
        self.state_update = nn.Linear(dim, dim, bias=False)
        self.state_reset = nn.Linear(dim, dim, bias=False)
        self.state_candidate = nn.Linear(dim, dim, bias=False)

    def forward(self, nodes: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """Node states ``[B, C, F]`` and adjacencies ``[B, C, C]`` (or one ``[C, C]`` for the whole
        batch) → propagated node states ``[B, C, F]``."""
        adjacency = adjacency.to(nodes.dtype)
        if adjacency.ndim == 2:
            adjacency = adjacency.expand(nodes.shape[0], -1, -1)
        for _ in range(self.steps):
            messages = adjacency @ nodes  # [B, C, F]: Σ_j A[i, j] h_j
            if self.out_messages:
                messages = torch.cat([messages, adjacency.transpose(1, 2) @ nodes], dim=-1)
            update = torch.sigmoid(self.message_update(messages) + self.state_update(nodes))
            reset = torch.sigmoid(self.message_reset(messages) + self.state_reset(nodes))
            candidate = torch.tanh(
                self.message_candidate(messages) + self.state_candidate(reset * nodes)
            )
            nodes = (1 - update) * nodes + update * candidate
        return nodes
