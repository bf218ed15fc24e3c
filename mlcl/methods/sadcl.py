"""SADCL: semantic-aware dual contrastive learning (Ma et al., ECAI 2023).

On the semantic decoder's label-level features ``h`` ``[B, C, D]`` (:mod:`mlcl.methods.q2l`), two
contrastive terms join the classification loss:

    loss = ASL + sscl_weight · SSCL + pscl_weight · PSCL        (100 and 50 in SADCL's code)

- **SSCL** (:func:`mlcl.losses.sscl_loss`): the projected features of the batch and of a
  *memory bank* are two views; the features of a present class are pulled towards the other
  features of that class and pushed from the other present labels' features.
- **PSCL** (:func:`mlcl.losses.pscl_loss`): each projected class prototype should be nearer the
  images that have the class than those that do not.

Both pass through one projector head, ``Linear(D, D) → ReLU → Linear(D, 1024)``.

State (buffers and parameters, so checkpoints carry it):

- ``memory`` ``[b, C, D]`` (b = the per-process batch size): slot ``(i, c)`` holds a feature of
  class c. After every step, for each present label ``(i, c)`` predicted with
  ``sigmoid(logit) > memory_threshold`` (0.8), ``memory[i, c] ← h[i, c]`` (detached). Slots start as
  the prototypes. Each process keeps its own memory, as in the reference code.
- ``prototypes`` ``[C, D]``: a learnable parameter, as in the code (``prototype_update =
  "learned"``), or, as the paper describes, a buffer moved towards the batch's mean positive
  feature with momentum 0.99 after every step (``"momentum"``; the batch means are summed over
  processes, so every process holds the same prototypes).

Prototype initialisation:

- SADCL's recipe (two stages): train q2l, compute per-class mean features with that model
  (:func:`class_prototypes`: images where the class is present and predicted with p > 0.85),
  save them with ``torch.save`` and start a sadcl run with ``method.init_from = <q2l
  checkpoint>`` and ``method.prototypes_file = <that file>``;
- from scratch (the default, no file): a class's prototype and memory slots are set to the mean
  feature of its positives in the first training batch (over all processes) that contains it.
  Until then it keeps its random initial value; it only enters PSCL as a class absent from the
  batch, so no loss ever contrasts a present label with a random vector.

Where the code and the paper differ this follows the code (learned prototypes, absent classes in
PSCL); where the code has a bug (SSCL's anchor mask) it follows the formula; both are in
:mod:`mlcl.losses.contrastive`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mlcl.collectives import all_reduce_sum
from mlcl.config import ranged
from mlcl.errors import ConfigError
from mlcl.losses import label_supcon_loss, pscl_loss
from mlcl.methods.base import Batch
from mlcl.methods.baseline import classification_loss
from mlcl.methods.q2l import Q2L, Q2LOptions
from mlcl.methods.registry import register_method
from mlcl.models.projector import Projector


@dataclass
class SADCLOptions(Q2LOptions):
    start_only: ClassVar[tuple[str, ...]] = ("init_from", "prototypes_file")

    # SADCL's projector: Linear(D, D) → ReLU → Linear(D, 1024)
    projection_dim: int = ranged(1024, "> 0")
    sscl_weight: float = ranged(100.0, ">= 0")  # SADCL's code
    pscl_weight: float = ranged(50.0, ">= 0")  # SADCL's code
    sscl_temperature: float = ranged(0.2, "> 0")  # SADCL
    pscl_temperature: float = ranged(0.07, "> 0")  # SADCL
    pscl_absent_classes: bool = True  # the code's term for classes absent from the batch
    # SADCL: memory slots take features predicted with p > 0.8
    memory_threshold: float = ranged(0.8, "(0, 1)")
    prototype_update: Literal["learned", "momentum"] = "learned"  # code | paper
    prototype_momentum: float = ranged(0.99, "[0, 1)")  # the constant in SADCL's code
    prototypes_file: str = ""  # [C, D] class means of a stage-1 model; "" = from first batches
    contrastive_start_epoch: int = ranged(0, ">= 0")  # epochs before this one train with ASL alone


@register_method
class SADCL(Q2L):
    name = "sadcl"
    Options = SADCLOptions

    def __init__(self, config, num_classes: int, num_train_images: int) -> None:
        super().__init__(config, num_classes, num_train_images)
        options = self.options
        dim = self.model.decoder.dim
        self.projector = Projector(dim, options.projection_dim, hidden_dim=dim)
        prototypes = torch.randn(num_classes, dim)
        if options.prototype_update == "learned":
            self.prototypes = nn.Parameter(prototypes)
        else:
            self.register_buffer("prototypes", prototypes)
        memory_size = config.data.batch_size
        self.register_buffer("memory", prototypes[None].repeat(memory_size, 1, 1))  # [b, C, D]
        self.register_buffer("prototype_ready", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        self.find_unused_parameters = options.contrastive_start_epoch > 0
        if options.prototypes_file:
            self.set_prototypes(load_prototypes(options.prototypes_file, num_classes, dim))

    # ------------------------------------------------------------------ training

    def contrastive_active(self) -> bool:
        """Whether SSCL and PSCL are on (after ``contrastive_start_epoch``)."""
        start = self.options.contrastive_start_epoch
        return start <= 0 or int(self.epoch) >= start

    def forward(self, batch: Batch, phase: str = "main") -> dict[str, torch.Tensor]:
        options = self.options
        outputs = self.model(batch["image"])
        logits, label_features = outputs["logits"], outputs["label_features"]  # [B, C], [B, C, D]
        labels = batch["labels"]
        classification = classification_loss(logits, labels, options)
        terms = {
            options.loss: classification.detach(),
            "logits": logits.detach(),
            "label_features": label_features.detach(),  # for the memory update in after_step
        }
        if not self.contrastive_active():
            return {"loss": classification, **terms}
        if self.training:
            self.initialise_prototypes(label_features.detach(), labels)
        sscl, pscl = self.contrastive_losses(label_features, labels)
        loss = classification + options.sscl_weight * sscl + options.pscl_weight * pscl
        return {"loss": loss, **terms, "sscl": sscl.detach(), "pscl": pscl.detach()}

    def contrastive_losses(
        self, label_features: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SSCL and PSCL of a batch's label-level features ``[B, C, D]``.

        SSCL is ``sscl_loss`` on the views (batch, memory) restricted to present labels, which
        is all it reads: the memory is projected only where a label is present.
        """
        options = self.options
        batch_size = labels.shape[0]
        if batch_size > self.memory.shape[0]:
            raise ConfigError(
                f"data.batch_size: a batch of {batch_size} images is larger than SADCL's memory "
                f"bank ({self.memory.shape[0]} slots, the configured batch size)"
            )
        projected = self.projector(label_features)  # [B, C, d]
        images, classes = (labels > 0.5).nonzero(as_tuple=True)  # present labels: [M] each
        current = projected[images, classes]  # [M, d]
        remembered = self.projector(self.memory[images, classes].to(current.dtype))  # [M, d]
        rows = torch.stack((current, remembered), dim=1).flatten(0, 1)  # [2M, d]
        sscl = label_supcon_loss(rows, classes.repeat_interleave(2), options.sscl_temperature)
        projected_prototypes = self.projector(self.prototypes.to(projected.dtype))  # [C, d]
        pscl = pscl_loss(
            projected,
            projected_prototypes,
            labels,
            options.pscl_temperature,
            absent_classes=options.pscl_absent_classes,
        )
        return sscl, pscl

    @torch.no_grad()
    def initialise_prototypes(self, label_features: torch.Tensor, labels: torch.Tensor) -> None:
        """Set the prototype and memory slots of classes seen for the first time to the mean
        feature of their positives in this batch (summed over processes)."""
        if bool(self.prototype_ready.all()):
            return
        sums, counts = positive_sums(label_features, labels)
        new = ~self.prototype_ready & (counts > 0)
        if new.any():
            means = sums[new] / counts[new, None]
            self.prototypes.data[new] = means
            self.memory[:, new] = means
            self.prototype_ready |= new

    @torch.no_grad()
    def after_step(self, batch: Batch, outputs: dict[str, torch.Tensor]) -> None:
        """Memory bank: confident present labels replace their slot. Momentum prototypes: move
        towards the batch's mean positive feature."""
        if not self.contrastive_active():
            return
        labels, features = batch["labels"], outputs["label_features"].float()
        confident = (labels > 0.5) & (
            outputs["logits"].float().sigmoid() > self.options.memory_threshold
        )
        slots = self.memory[: labels.shape[0]]  # a view: writes go to the memory
        slots[confident] = features[confident]
        if self.options.prototype_update == "momentum":
            sums, counts = positive_sums(features, labels)
            seen = counts > 0
            momentum = self.options.prototype_momentum
            batch_means = sums[seen] / counts[seen, None]
            self.prototypes[seen] = momentum * self.prototypes[seen] + (1 - momentum) * batch_means

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch.fill_(epoch)

    # ------------------------------------------------------------------ prototypes

    @torch.no_grad()
    def set_prototypes(self, prototypes: torch.Tensor) -> None:
        """Use ``prototypes`` ``[C, D]`` for every class, and fill the memory bank with them."""
        prototypes = prototypes.to(self.prototypes.device, self.prototypes.dtype)
        self.prototypes.data.copy_(prototypes)
        self.memory.copy_(prototypes[None].expand_as(self.memory))
        self.prototype_ready.fill_(True)

    @torch.no_grad()
    def compute_prototypes(self, loader: DataLoader, threshold: float = 0.85) -> torch.Tensor:
        """:func:`class_prototypes` of this method's model (does not set them)."""
        return class_prototypes(self.model, loader, threshold)

    @torch.no_grad()
    def label_features(self, images: torch.Tensor) -> torch.Tensor:
        """Label-level features ``[B, C, D]``."""
        return self.model(images)["label_features"]


def positive_sums(
    label_features: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, the sum of the features of its positives ``[C, D]`` and their number ``[C]``,
    both summed over processes."""
    positives = (labels > 0.5).to(torch.float32)  # [B, C]
    sums = torch.einsum("bc,bcd->cd", positives, label_features.float())
    counts = positives.sum(dim=0)
    all_reduce_sum(sums)
    all_reduce_sum(counts)
    return sums, counts


@torch.no_grad()
def class_prototypes(model: nn.Module, loader: DataLoader, threshold: float = 0.85) -> torch.Tensor:
    """Per-class mean label-level feature over a loader: SADCL's prototype initialisation.

    ``model`` maps images to ``{"logits", "label_features"}`` (a q2l or sadcl method's
    ``.model``). Class c's prototype is the mean of ``h[i, c]`` over the images i where c is
    present (``batch["labels"]``) and predicted with ``sigmoid(logit) > threshold`` (SADCL's
    files: 0.85). A class never predicted that confidently takes the mean over all its positives;
    a class with no positive at all gets zeros. Returns ``[C, D]`` (float32, on the CPU).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    confident_sums = confident_counts = all_sums = all_counts = None
    for batch in loader:
        outputs = model(batch["image"].to(device))
        labels = batch["labels"].to(device)
        confident = labels * (outputs["logits"].float().sigmoid() > threshold)
        sums, counts = positive_sums(outputs["label_features"], confident)
        every_sums, every_counts = positive_sums(outputs["label_features"], labels)
        if confident_sums is None:
            confident_sums, confident_counts, all_sums, all_counts = (
                sums,
                counts,
                every_sums,
                every_counts,
            )
        else:
            confident_sums += sums
            confident_counts += counts
            all_sums += every_sums
            all_counts += every_counts
    model.train(was_training)
    if confident_sums is None:
        raise ValueError("class_prototypes: the loader gave no batch")
    use_confident = confident_counts > 0
    sums = torch.where(use_confident[:, None], confident_sums, all_sums)
    counts = torch.where(use_confident, confident_counts, all_counts)
    return (sums / counts.clamp(min=1)[:, None]).cpu()


def load_prototypes(path: str, num_classes: int, dim: int) -> torch.Tensor:
    """Prototypes ``[C, D]`` from a ``.npy`` array (as SADCL publishes them) or a file written
    by ``torch.save`` (a tensor, or a dict with a ``"prototypes"`` tensor)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"method.prototypes_file: {path}: file not found")
    try:
        if file.suffix == ".npy":
            prototypes = torch.from_numpy(np.load(file, allow_pickle=False))
        else:
            prototypes = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"method.prototypes_file: {path}: not readable ({err})") from None
    if isinstance(prototypes, dict):
        prototypes = prototypes.get("prototypes")
    if not isinstance(prototypes, torch.Tensor) or tuple(prototypes.shape) != (num_classes, dim):
        shape = tuple(prototypes.shape) if isinstance(prototypes, torch.Tensor) else None
        raise ConfigError(
            f"method.prototypes_file: {path}: expected a [{num_classes}, {dim}] array "
            f"(classes by hidden size), got {shape}"
        )
    return prototypes.float()
