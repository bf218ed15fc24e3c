"""Backbones come from timm: any model it knows, as a pyramid of feature maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import timm
import torch
from torch import nn

from mlcl.errors import ConfigError

if TYPE_CHECKING:
    from typing_extensions import Self

    from mlcl.config import ModelConfig


class Backbone(nn.Module):
    """A timm model cut before its classifier, returning the feature maps of ``out_indices``.

    ``channels[i]`` and ``strides[i]`` describe the i-th returned map: a ResNet-101 at 448 px gives
    its last map with 2048 channels at stride 32, i.e. ``[B, 2048, 14, 14]``.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        pretrained_file: str = "",
        out_indices: Sequence[int] = (-1,),
        output_stride: int = 0,
    ) -> None:
        super().__init__()
        kwargs = {}
        if output_stride:
            kwargs["output_stride"] = output_stride
        if pretrained_file:
            if not Path(pretrained_file).is_file():
                raise ConfigError(f"model.pretrained_file: {pretrained_file}: file not found")
            kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_file)}
        try:
            self.body = timm.create_model(
                name,
                pretrained=pretrained or bool(pretrained_file),
                features_only=True,
                out_indices=tuple(out_indices),
                **kwargs,
            )
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise ConfigError(f"model.backbone: timm knows no model {name!r}") from None
            raise
        self.channels: list[int] = self.body.feature_info.channels()
        self.strides: list[int] = self.body.feature_info.reduction()
        data_config = timm.data.resolve_data_config({}, model=self.body)
        self.mean: tuple[float, ...] = tuple(data_config["mean"])
        self.std: tuple[float, ...] = tuple(data_config["std"])

    @classmethod
    def from_config(cls, model: ModelConfig, out_indices: Sequence[int] = (-1,)) -> Self:
        """The backbone a configuration's ``model`` section names, with its weights and output
        stride: what every method builds its network on."""
        return cls(
            model.backbone,
            model.pretrained,
            model.pretrained_file,
            out_indices=out_indices,
            output_stride=model.output_stride,
        )

    @property
    def num_features(self) -> int:
        """Channels of the last returned map."""
        return self.channels[-1]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``[B, 3, H, W]`` → one ``[B, channels[i], H / strides[i], W / strides[i]]`` per index."""
        return self.body(images)
