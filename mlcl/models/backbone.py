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


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm whose statistics and affine parameters stay fixed: ``x · scale + shift``.

    DETR's, Query2Label's and SADCL's ResNets normalise this way. Unlike a BatchNorm in eval mode,
    which still saves its input for a backward that would give the frozen weights a gradient,
    this multiplies by a constant: autograd saves nothing of the activation. A module becomes
    one by changing its class (:func:`freeze_batchnorm`), so its state-dict keys (and
    ``num_batches_tracked``) are those of the BatchNorm it was.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def freeze_batchnorm(module: nn.Module) -> None:
    """Turn every ``BatchNorm2d`` of ``module`` into a :class:`FrozenBatchNorm2d` (in place)."""
    for child in module.modules():
        if type(child) is nn.BatchNorm2d and child.affine and child.track_running_stats:
            child.__class__ = FrozenBatchNorm2d
            child.requires_grad_(False)


class Backbone(nn.Module):
    """A timm model cut before its classifier, returning the feature maps of ``out_indices``.

    ``channels[i]`` and ``strides[i]`` describe the i-th returned map: a ResNet-101 at 448 px gives
    its last map with 2048 channels at stride 32, i.e. ``[B, 2048, 14, 14]``.

    ``frozen_stages``: the first stages (timm's feature stages, the stem being the first) keep
    their weights: no gradient, no optimiser state, and, with nothing trainable before them, no
    activation saved for backward. 2 = the stem and the first residual stage, as DETR's,
    Query2Label's and SADCL's code train a ResNet (layer2-4 only). ``frozen_batchnorm``: every
    BatchNorm keeps its (pretrained) statistics and affine weights (:class:`FrozenBatchNorm2d`),
    as in that code. Both need pretrained weights to make sense.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        pretrained_file: str = "",
        out_indices: Sequence[int] = (-1,),
        output_stride: int = 0,
        frozen_stages: int = 0,
        frozen_batchnorm: bool = False,
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
        if frozen_batchnorm:
            freeze_batchnorm(self.body)
        if frozen_stages:
            self._freeze_stages(frozen_stages)

    def _freeze_stages(self, stages: int) -> None:
        """``requires_grad = False`` for the body's modules up to the end of stage ``stages``."""
        info = self.body.feature_info.info  # every stage, whatever out_indices returns
        if stages > len(info):
            raise ConfigError(
                f"model.frozen_stages: {stages}, but the backbone has {len(info)} stages"
            )
        last = info[stages - 1]["module"].replace(".", "_")  # timm's FeatureListNet names
        for name, child in self.body.named_children():
            child.requires_grad_(False)
            if name == last:
                break

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
            frozen_stages=model.frozen_stages,
            frozen_batchnorm=model.frozen_batchnorm,
        )

    @property
    def num_features(self) -> int:
        """Channels of the last returned map."""
        return self.channels[-1]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``[B, 3, H, W]`` → one ``[B, channels[i], H / strides[i], W / strides[i]]`` per index."""
        return self.body(images)
