"""MulCon (Dao et al., 2021): label-level embeddings and a contrastive loss between them.

One embedding per image cannot be a positive of each of an image's classes, so MulCon learns one
embedding per (image, class) with per-class attention over the backbone's pixels
(:class:`mlcl.models.label_attention.MulConModel`), classifies each with its own weight vector, and
applies a supervised contrastive loss between the embeddings of *present* labels across the batch
(:func:`mlcl.losses.multilabel_supcon_loss`), after a projection head as in SupCon:

    loss = classification + contrastive_weight · L_con

Two stages. MulCon first trains the embeddings and classifiers with the classification loss
alone, then jointly with the contrastive term. Two ways to run that here:

- in one run: ``method.contrastive_start_epoch = k`` trains epochs ``0 … k−1`` without the
  contrastive term (the projection head is then idle, so DDP looks for unused parameters);
- in two runs: a first run with ``method.contrastive_weight = 0``, then a second with
  ``method.init_from = <first run>/checkpoint_best.pt``, which starts the network from the first
  run's weights (the optimiser and schedule start afresh, as in a new stage).

The epoch the method is in is a buffer, so a run resumed in the middle of an epoch knows its stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from mlcl.config import ranged
from mlcl.losses import multilabel_supcon_loss
from mlcl.methods.base import Batch, Method
from mlcl.methods.baseline import ClassificationLossOptions, classification_loss
from mlcl.methods.q2l import load_model_weights
from mlcl.methods.registry import register_method
from mlcl.models import Backbone
from mlcl.models.label_attention import MulConModel
from mlcl.models.projector import Projector


@dataclass
class MulConOptions(ClassificationLossOptions):
    start_only: ClassVar[tuple[str, ...]] = ("init_from",)

    # MulCon trains its classifiers with binary cross-entropy.
    loss: str = "bce"
    reduction: str = "mean"
    # D of the label-level embeddings; 0 = the backbone's channels
    hidden_dim: int = ranged(0, ">= 0")
    key_dim: int = ranged(0, ">= 0")  # d_k of the attention; 0 = D
    projection_dim: int = ranged(128, "> 0")  # SupCon's projection size
    projection_hidden_dim: int = ranged(0, ">= 0")  # 0 = D
    temperature: float = ranged(0.1, "> 0")  # SupCon's paper setting
    contrastive_weight: float = ranged(1.0, ">= 0")
    # Epochs before this one train without the contrastive term
    contrastive_start_epoch: int = ranged(0, ">= 0")
    init_from: str = ""  # a checkpoint whose model.* weights start this run (stage 2)
    init_from_ema: bool = False


@register_method
class MulCon(Method):
    name = "mulcon"
    Options = MulConOptions

    def __init__(self, config, num_classes: int, num_train_images: int) -> None:
        super().__init__(config, num_classes, num_train_images)
        options = self.options
        backbone = Backbone.from_config(config.model)
        self.model = MulConModel(backbone, num_classes, options.hidden_dim, options.key_dim)
        dim = self.model.label_attention.dim
        self.projector = Projector(dim, options.projection_dim, options.projection_hidden_dim)
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        # Stage 1 leaves the projection head without gradients.
        self.find_unused_parameters = options.contrastive_start_epoch > 0
        if options.init_from:
            load_model_weights(self.model, options.init_from, options.init_from_ema)

    def contrastive_active(self) -> bool:
        """Whether the contrastive term is on (stage 2)."""
        options = self.options
        if options.contrastive_weight == 0:
            return False
        return options.contrastive_start_epoch <= 0 or (
            int(self.epoch) >= options.contrastive_start_epoch
        )

    def forward(self, batch: Batch, phase: str = "main") -> dict[str, torch.Tensor]:
        options = self.options
        outputs = self.model(batch["image"])
        logits, labels = outputs["logits"], batch["labels"]
        classification = classification_loss(logits, labels, options)
        terms = {options.loss: classification.detach(), "logits": logits.detach()}
        loss = classification
        if self.contrastive_active():
            projected = self.projector(outputs["label_features"])  # [B, C, d]
            contrastive = multilabel_supcon_loss(projected, labels, options.temperature)
            loss = loss + options.contrastive_weight * contrastive
            terms["contrastive"] = contrastive.detach()
        return {"loss": loss, **terms}

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["logits"]

    @torch.no_grad()
    def attention_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Each class's attention over the feature map ``[B, C, h, w]``."""
        return self.model(images, return_attention=True)["attention"]

    @torch.no_grad()
    def label_features(self, images: torch.Tensor) -> torch.Tensor:
        """Label-level embeddings ``[B, C, D]``."""
        return self.model(images)["label_features"]

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch.fill_(epoch)
