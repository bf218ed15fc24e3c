"""Scob: semantic contrastive bootstrapping for single-positive multi-label recognition
(Chen, Zhao, Li; IJCV 2023).

Every iteration takes two optimiser steps (``phases = ("classify", "contrast")``):

1. **classify**: the whole image through the backbone and the masked transformer (no mask) to the
   classifier; the ROLE-style loss between the classifier's probabilities ``p`` and the label
   estimates ``e`` of these images (:func:`mlcl.losses.single_positive.role_loss`).
2. **contrast**, on the model the first step just updated: Grad-CAM of each image's observed class
   gives an object mask per feature scale (:mod:`mlcl.models.cam`); the momentum encoder turns the
   original image, masked, into the *key*; the online encoder and projector turn a strongly
   augmented view with the same masks into the *query*; InfoNCE pulls the query to its key and
   away from confident objects of other classes, each negative weighted by
   ``1 − R[observed, class]²`` (:func:`mlcl.losses.single_positive.semantic_contrastive_loss`),
   times λ = 0.1.

Then ``after_step`` moves the key encoder towards the online one (EMA, α = 0.999), writes the
observed positives into the estimator and offers the batch's key features to the negative bank.
``on_epoch_start`` recomputes the class correlation ``R`` from the estimates and empties the bank,
which refills with the most confident objects of the epoch. This is the bootstrapping: better
estimates give a better ``R`` and classifier, a better classifier gives better masks, better
masks give object features that make the classifier better.

State and ranks. The estimator is a parameter (its DDP all-reduce and its β1 = 0 AdamW group are
explained in :mod:`mlcl.methods.spml`); the key encoder, bank and ``R`` are saved with the method.
Every rank computes ``R`` from identical estimates, moves an identical key encoder towards
identical weights, and updates the bank with the gathered batches of all ranks in the same order,
so they agree without broadcasting.

Where this differs from the public code, and why: the code's key update rebinds a local name and
never changes its key encoder, which stays at its random initialisation (here it follows the
online encoder as the paper describes); the code freezes the ImageNet backbone (here optional:
``freeze_backbone``, off in the quick preset, which has no pretrained weights); a masked token
does not influence the pooled feature (see :mod:`mlcl.models.masked_transformer`); an empty bank
slot is left out of the softmax instead of entering as a zero vector.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2

from mlcl.collectives import all_gather_cat
from mlcl.config import ranged
from mlcl.losses.single_positive import role_loss, semantic_contrastive_loss
from mlcl.methods.base import Batch, Method, MethodOptions, split_weight_decay
from mlcl.methods.registry import register_method
from mlcl.methods.spml import LabelEstimator, check_schedule_for_estimator, estimator_param_group
from mlcl.models import Backbone
from mlcl.models.cam import cam_to_masks, grad_cam
from mlcl.models.masked_transformer import SemanticMaskedTransformer
from mlcl.models.transformer_spec import TransformerSpec


@dataclass
class ScobOptions(MethodOptions):
    # k̂ of the EPR terms: the expected number of positives per image (Cole et al.: 2.9 on COCO).
    expected_positives: float = ranged(2.9, "> 0")
    # The semantic masked transformer (Scob's code: 1024-d, 2 layers, 8 heads, FF 2048, dropout 0.1).
    dim: int = ranged(1024, "> 0")
    num_layers: int = ranged(2, ">= 0")
    num_heads: int = ranged(8, "> 0")
    ff_dim: int = ranged(2048, "> 0")
    dropout: float = ranged(0.1, "[0, 1)")
    freeze_backbone: bool = False  # the code freezes its ImageNet ResNet-50
    # Label estimator: σ(initial logits) uniform in 0.2…0.8 (Scob's code).
    estimator_init: tuple[float, float] = ranged((0.2, 0.8), "(0, 1)")
    # Contrastive step (Scob's code defaults): EMA α, τ, λ.
    momentum: float = ranged(0.999, "[0, 1)")
    temperature: float = ranged(1.0, "> 0")
    contrastive_weight: float = ranged(0.1, ">= 0")
    hard_correlation: bool = False  # true in the code: R < 1 counts as 0 (own class off only)
    bank_size: int = ranged(2, "> 0")  # confident object features kept per class
    negatives_per_class: int = ranged(1, "> 0")  # of which the most confident are the negatives
    cam_threshold: float = ranged(0.5, "(0, 1)")
    crop_corners: bool = True
    # Learning rates as multiples of optim.lr, the classifier's: Scob's code uses classifier and
    # 1×1 convolutions 1e-3, transformer 4e-5, projector 1e-2, label estimator 1e-2.
    lr_scale_transformer: float = ranged(0.04, ">= 0")
    lr_scale_projector: float = ranged(10.0, ">= 0")
    lr_scale_estimator: float = ranged(10.0, ">= 0")
    lr_scale_backbone: float = ranged(1.0, ">= 0")


def strong_augmentation() -> v2.Compose:
    """The query view's augmentation, per image on ``[3, H, W]`` tensors in [0, 1], with the
    probabilities of Scob's code: colour jitter (0.8, 0.8, 0.8, 0.2) with p = 0.3, grey with
    p = 0.02 (its RandomGrayscale(p = 0.1) applied with p = 0.2), 3×3 Gaussian blur with σ in
    [1, 2] with p = 0.2."""
    return v2.Compose(
        [
            v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.3),
            v2.RandomGrayscale(p=0.02),
            v2.RandomApply([v2.GaussianBlur(3, sigma=(1.0, 2.0))], p=0.2),
        ]
    )


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in evaluation mode (no dropout) for a while, then restore its mode."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@register_method
class Scob(Method):
    name = "scob"
    Options = ScobOptions
    phases = ("classify", "contrast")
    find_unused_parameters = True  # the projector sits out "classify", the classifier "contrast"

    def __init__(self, config, num_classes: int, num_train_images: int) -> None:
        super().__init__(config, num_classes, num_train_images)
        check_schedule_for_estimator(config)
        options = self.options
        if options.negatives_per_class > options.bank_size:
            raise ValueError("method.negatives_per_class must not exceed method.bank_size")
        backbone = Backbone.from_config(config.model, out_indices=(-2, -1))  # ResNet stages 3, 4
        backbone.requires_grad_(not options.freeze_backbone)
        spec = TransformerSpec(options.dim, options.num_heads, options.ff_dim, options.dropout)
        self.model = SemanticMaskedTransformer(backbone, num_classes, spec, options.num_layers)
        self.label_estimator = LabelEstimator(num_train_images, num_classes, options.estimator_init)
        self.augment = strong_augmentation()
        mean, std = torch.tensor(config.data.mean), torch.tensor(config.data.std)
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, 3, 1, 1), persistent=False)
        # Epoch-level state of the E-step, saved with the method.
        self.register_buffer("correlation", torch.eye(num_classes))  # R [C, C]
        self.register_buffer(
            "bank_features", torch.zeros(num_classes, options.bank_size, options.dim)
        )
        self.register_buffer("bank_confidence", torch.full((num_classes, options.bank_size), -1.0))
        self.register_buffer("bank_images", torch.full((num_classes, options.bank_size), -1))

    # ------------------------------------------------------------------ training

    def forward(self, batch: Batch, phase: str = "classify") -> dict[str, torch.Tensor]:
        if phase == "classify":
            return self.classification_step(batch)
        if phase == "contrast":
            return self.contrastive_step(batch)
        raise ValueError(f"Scob has no phase {phase!r} (phases: {', '.join(self.phases)})")

    def classification_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        logits = self.model(batch["image"])  # [B, C]
        estimates = self.label_estimator(batch["index"], labels)  # [B, C]
        loss = role_loss(logits, estimates, labels, self.options.expected_positives)
        observed_class = labels.argmax(dim=1)  # [B]
        confidence = torch.sigmoid(logits.detach().float()).gather(1, observed_class[:, None])
        return {
            "loss": loss,
            "role": loss.detach(),
            "logits": logits.detach(),
            "observed_confidence": confidence[:, 0],  # [B], ranks the bank's candidates
        }

    def object_masks(
        self, feature_maps: list[torch.Tensor], classes: torch.Tensor, image_size: tuple[int, int]
    ) -> list[torch.Tensor]:
        """Grad-CAM of ``classes`` on the last map, as a binary mask ``[B, h_s, w_s]`` per scale
        (True = part of the object), from the current classifier without dropout."""
        finer = feature_maps[:-1]
        with eval_mode(self.model.encoder):
            cam = grad_cam(
                feature_maps[-1], lambda last: self.model.classify([*finer, last]), classes
            )  # [B, h, w]
        grids = [tuple(feature_map.shape[-2:]) for feature_map in feature_maps]
        options = self.options
        return cam_to_masks(cam, grids, image_size, options.cam_threshold, options.crop_corners)

    def strongly_augmented(self, images: torch.Tensor) -> torch.Tensor:
        """The query view: each image un-normalised, augmented on its own, normalised again."""
        pixels = (images.float() * self.std + self.mean).clamp(0, 1)
        augmented = torch.stack([self.augment(image) for image in pixels])
        return ((augmented - self.mean) / self.std).to(images.dtype)

    def contrastive_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        images, labels = batch["image"], batch["labels"]
        observed_class = labels.argmax(dim=1)  # [B]
        has_positive = labels.amax(dim=1) > 0.5  # images without any positive sit out
        with torch.no_grad():
            feature_maps = [m.detach() for m in self.model.feature_maps(images)]
        masks = self.object_masks(feature_maps, observed_class, tuple(images.shape[-2:]))
        # Key-padding masks: True = token outside the object (all tokens kept without a positive).
        padding = [~mask & has_positive[:, None, None] for mask in masks]
        with torch.no_grad():
            keys = self.model.key_encoder(feature_maps, padding)  # [B, D]
        query_maps = self.model.feature_maps(self.strongly_augmented(images))
        queries = self.model.projector(self.model.encoder(query_maps, padding))  # [B, D]

        negatives, negative_classes = self.bank_negatives()
        if has_positive.any():
            contrastive = semantic_contrastive_loss(
                queries[has_positive],
                keys[has_positive],
                negatives,
                negative_classes,
                observed_class[has_positive],
                self.correlation,
                self.options.temperature,
                self.options.hard_correlation,
            )
        else:
            contrastive = queries.sum() * 0.0
        loss = self.options.contrastive_weight * contrastive
        return {
            "loss": loss,
            "contrastive": contrastive.detach(),
            "mask_coverage": masks[-1].float().mean(),  # share of last-scale tokens kept
            "key_features": keys.float(),  # [B, D], for the bank
        }

    # ------------------------------------------------------------------ the E-step's state

    def bank_negatives(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The negatives ``[M, D]`` and their classes ``[M]``: the ``negatives_per_class`` most
        confident filled slots of every class."""
        count = self.options.negatives_per_class
        filled = self.bank_images[:, :count] >= 0  # [C, k]; slots are kept sorted by confidence
        classes = torch.arange(self.num_classes, device=filled.device)[:, None].expand_as(filled)
        return self.bank_features[:, :count][filled], classes[filled]

    @torch.no_grad()
    def update_bank(
        self,
        classes: torch.Tensor,
        confidences: torch.Tensor,
        images: torch.Tensor,
        features: torch.Tensor,
    ) -> None:
        """Keep, per class, the ``bank_size`` most confident object features seen this epoch
        (an image already in the bank is replaced by its newer feature)."""
        for cls in classes.unique().tolist():
            new = classes == cls
            new_images = images[new]
            old_confidence = self.bank_confidence[cls].clone()
            old_confidence[torch.isin(self.bank_images[cls], new_images)] = -1.0
            confidence = torch.cat([old_confidence, confidences[new].float()])
            candidates = torch.cat([self.bank_images[cls], new_images])
            candidate_features = torch.cat([self.bank_features[cls], features[new].float()])
            keep = confidence.topk(self.options.bank_size).indices  # sorted, most confident first
            valid = confidence[keep] >= 0
            self.bank_confidence[cls] = torch.where(valid, confidence[keep], -1.0)
            self.bank_images[cls] = torch.where(valid, candidates[keep], -1)
            self.bank_features[cls] = candidate_features[keep] * valid[:, None]

    @torch.no_grad()
    def after_step(self, batch: Batch, outputs: dict[str, torch.Tensor]) -> None:
        self.model.momentum_update(self.options.momentum)
        # Every rank applies every rank's batch, in rank order: the state stays identical.
        index = all_gather_cat(batch["index"])
        labels = all_gather_cat(batch["labels"])
        self.label_estimator.record_observed(index, labels)
        has_positive = labels.amax(dim=1) > 0.5
        self.update_bank(
            labels.argmax(dim=1)[has_positive],
            all_gather_cat(outputs["observed_confidence"])[has_positive],
            index[has_positive],
            all_gather_cat(outputs["key_features"])[has_positive],
        )

    @torch.no_grad()
    def on_epoch_start(self, epoch: int) -> None:
        """The epoch's E-step state: ``R`` from the current estimates, and an empty bank."""
        self.correlation.copy_(self.label_estimator.correlation())
        self.bank_features.zero_()
        self.bank_confidence.fill_(-1.0)
        self.bank_images.fill_(-1)

    # ------------------------------------------------------------------ optimisation, inference

    def param_groups(self, phase: str, weight_decay: float) -> list[dict[str, Any]]:
        """Per-module learning rates (multiples of ``optim.lr``) for each phase's AdamW."""
        if phase not in self.phases:
            raise ValueError(f"Scob has no phase {phase!r} (phases: {', '.join(self.phases)})")
        options, optim, model = self.options, self.config.optim, self.model

        def groups(module_or_params, scale: float) -> list[dict[str, Any]]:
            params = (
                module_or_params.parameters()
                if isinstance(module_or_params, nn.Module)
                else module_or_params
            )
            named = ((str(i), p) for i, p in enumerate(params))
            return split_weight_decay(named, weight_decay, lr=optim.lr * scale)

        shared = [
            *groups(model.backbone, options.lr_scale_backbone),
            *groups(model.encoder.linear_parameters(), 1.0),
            *groups(model.encoder.transformer_parameters(), options.lr_scale_transformer),
        ]
        if phase == "classify":
            lr = optim.lr * options.lr_scale_estimator
            return [
                *shared,
                *groups(model.classifier, 1.0),
                estimator_param_group(self.label_estimator, lr, optim.betas),
            ]
        return [*shared, *groups(model.projector, options.lr_scale_projector)]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)
