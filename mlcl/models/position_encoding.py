"""2-D sine positional encoding (DETR; Query2Label's "v2" / "sine" variant).

Attention by itself ignores where a pixel is. The encoding gives every position of an ``h × w``
feature map a fixed ``dim``-vector: half of the channels encode the row, half the column, each as
sines and cosines of the (normalised) coordinate at geometrically spaced frequencies, so that
nearby positions get similar vectors. The semantic decoder adds it to the keys only; the values
stay the pixels' features.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sine_position_encoding(
    height: int,
    width: int,
    dim: int,
    temperature: float = 10000.0,
    normalize: bool = True,
    scale: float = 2 * math.pi,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Encoding ``[dim, height, width]``: channels ``[0, dim/2)`` encode the row, the others
    the column, each as interleaved ``sin, cos`` pairs.

    Coordinates count from 1; with ``normalize`` they are divided by the side and multiplied by
    ``scale`` (2π), so the encoding of a position does not depend on the map's size in pixels.
    """
    if dim % 4:
        raise ValueError(f"the sine position encoding needs a dim divisible by 4, got {dim}")
    features_per_axis = dim // 2
    rows = torch.arange(1, height + 1, device=device, dtype=torch.float32)
    cols = torch.arange(1, width + 1, device=device, dtype=torch.float32)
    if normalize:
        rows = rows / (height + 1e-6) * scale
        cols = cols / (width + 1e-6) * scale
    # One frequency per (sin, cos) pair: temperature^(2k / features_per_axis).
    index = torch.arange(features_per_axis, device=device, dtype=torch.float32)
    frequencies = temperature ** (
        2 * torch.div(index, 2, rounding_mode="floor") / features_per_axis
    )

    def encode(coords: torch.Tensor) -> torch.Tensor:  # [n] -> [n, features_per_axis]
        angles = coords[:, None] / frequencies
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    row_code = encode(rows)[:, None, :].expand(height, width, features_per_axis)
    col_code = encode(cols)[None, :, :].expand(height, width, features_per_axis)
    return torch.cat((row_code, col_code), dim=2).permute(2, 0, 1).to(dtype)  # [dim, h, w]


class SinePositionEncoding(nn.Module):
    """:func:`sine_position_encoding` as a module: ``[B, D, h, w]`` → ``[1, D, h, w]``,
    cached for the last size, device and dtype it saw (a training run sees one size)."""

    def __init__(self, dim: int, temperature: float = 10000.0, normalize: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.temperature = temperature
        self.normalize = normalize
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        height, width = feature_map.shape[-2:]
        key = (height, width, feature_map.device, feature_map.dtype)
        if self._cache is None or self._cache[0] != key:
            encoding = sine_position_encoding(
                height,
                width,
                self.dim,
                self.temperature,
                self.normalize,
                device=feature_map.device,
                dtype=feature_map.dtype,
            )
            self._cache = (key, encoding[None])
        return self._cache[1]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, temperature={self.temperature}, normalize={self.normalize}"
