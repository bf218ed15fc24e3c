"""The baseline every chapter is measured against: backbone → global average pooling → linear.

``method.hidden_dim`` > 0 puts a hidden layer before the classifier: with the width that gives
the head as many parameters as a semantic decoder, it separates what the decoder's attention
brings from what its parameters bring (the ablation of chapter 03).

Trained with binary cross-entropy or the asymmetric loss (ASL). In the single-positive setting the
unobserved labels are zeros in ``batch["labels"]``: this is the assume-negative (AN) baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mlcl.config import ranged
from mlcl.losses import asymmetric_loss, binary_cross_entropy
from mlcl.methods.base import Batch, Method, MethodOptions
from mlcl.methods.registry import register_method
from mlcl.models import Backbone


@dataclass
class ClassificationLossOptions(MethodOptions):
    """The classification loss, shared by every method that classifies with ASL or BCE."""

    loss: str = "asl"  # asl | bce
    gamma_pos: float = ranged(0.0, ">= 0")  # ASL paper defaults: γ+ = 0, γ− = 4, margin 0.05
    gamma_neg: float = ranged(4.0, ">= 0")
    clip: float = ranged(0.05, "[0, 1)")
    reduction: str = "sum"  # sum (the ASL / Query2Label code) | mean


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, options: ClassificationLossOptions
) -> torch.Tensor:
    """ASL or BCE of ``logits`` ``[B, C]`` against ``labels`` ``[B, C]`` as ``options`` say."""
    if options.loss == "asl":
        return asymmetric_loss(
            logits,
            labels,
            gamma_pos=options.gamma_pos,
            gamma_neg=options.gamma_neg,
            clip=options.clip,
            reduction=options.reduction,
        )
    if options.loss == "bce":
        return binary_cross_entropy(logits, labels, reduction=options.reduction)
    raise ValueError(f"method.loss must be 'asl' or 'bce', got {options.loss!r}")


@dataclass
class BaselineOptions(ClassificationLossOptions):
    dropout: float = ranged(0.0, "[0, 1)")  # before the classifier
    hidden_dim: int = ranged(0, ">= 0")  # 0: a linear classifier; else Linear-ReLU-Linear


@register_method
class Baseline(Method):
    name = "baseline"
    Options = BaselineOptions

    def __init__(self, config, num_classes: int, num_train_images: int) -> None:
        super().__init__(config, num_classes, num_train_images)
        self.backbone = Backbone.from_config(config.model)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(self.options.dropout)
        features = self.backbone.num_features
        hidden = getattr(self.options, "hidden_dim", 0)  # SinglePositive's options have none
        self.classifier: nn.Module = nn.Linear(features, num_classes)
        if hidden:
            self.classifier = nn.Sequential(
                nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
            )

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The last feature map ``[B, F, h, w]``."""
        return self.backbone(images)[-1]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(self.features(images)).flatten(1)  # [B, F]
        return self.classifier(self.dropout(pooled))  # [B, C]

    def forward(self, batch: Batch, phase: str = "main") -> dict[str, torch.Tensor]:
        logits = self.predict(batch["image"])
        loss = classification_loss(logits, batch["labels"], self.options)
        return {"loss": loss, self.options.loss: loss.detach(), "logits": logits.detach()}
