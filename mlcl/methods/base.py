"""The small interface through which the engine knows a method.

A method is one ``nn.Module`` that owns its model and its losses. The engine only ever:

1. builds it with ``build_method(config, num_classes=..., num_train_images=...)``;
2. asks it for optimiser parameter groups, one optimiser per *phase* (``param_groups``);
3. for every batch and every phase in ``phases``: calls ``method(batch, phase=phase)`` (through
   DistributedDataParallel when distributed), back-propagates ``outputs["loss"]`` and steps that
   phase's optimiser. Most methods have one phase; Scob has two (classification, then a
   contrastive step on the updated model), so one iteration may take several optimiser steps;
4. calls ``after_step(batch, outputs)`` once per iteration, after the optimiser steps, without
   gradients: memory banks, momentum encoders, co-occurrence counts and prototype averages are
   updated there;
5. calls ``on_epoch_start(epoch)`` / ``on_epoch_end(epoch)``;
6. evaluates with ``inference(images)`` (by default ``{"logits": predict(images)}``, logits
   ``[B, C]``) and adds ``extra_metrics(outputs, dataset)`` to the metrics of a split.

State that must survive a restart (prototypes, memory banks, per-scene co-occurrence counts,
per-image label estimates) is kept in registered buffers or parameters, so it travels in
``state_dict()``: checkpoints save it and resuming restores it. The engine wraps the method in DDP
with ``broadcast_buffers=False``: a method keeps its buffers consistent across ranks itself, with
the collectives in :mod:`mlcl.collectives` (summing counts, averaging prototypes, gathering the
per-image updates of every rank).

A batch is a dict of tensors (what :mod:`mlcl.data` datasets return, collated):

- ``image``: ``[B, 3, H, W]`` float, normalised;
- ``labels``: ``[B, C]`` float in {0, 1}, the labels training may see (in the single-positive
  setting: the one observed positive, zeros elsewhere);
- ``observed``: ``[B, C]`` bool, which entries of ``labels`` are known (all in the full setting,
  only the observed positive in the single-positive setting);
- ``index``: ``[B]`` long, the image's index in its dataset (Scob keeps one estimate per image).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from mlcl.config import build_section

if TYPE_CHECKING:
    from typing_extensions import Self

    from mlcl.config import Config

Batch = dict[str, torch.Tensor]


@dataclass
class MethodOptions:
    """Options of a method: the ``method:`` section of a configuration.

    Each method subclasses this with its own fields (loss weights, temperatures, dimensions), so
    the configuration stays typed and an unknown key is an error that names it.
    """

    # Fields that only start a fresh run (a stage-1 checkpoint to begin from, prototypes to
    # begin with): a run restored from its own checkpoint must not read them again, since
    # their files may have moved since.
    start_only: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> Self:
        """These options from a configuration's ``method`` section (plain data, defaults for
        what it leaves out); an unknown key or a bad value raises ``ConfigError`` naming
        ``method.<key>``."""
        return build_section(cls, dict(section), "method")


class Method(nn.Module):
    """Base class of every method. Subclasses set ``name`` and ``Options`` and implement
    ``forward`` (training losses) and ``predict`` (logits)."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    phases: ClassVar[tuple[str, ...]] = ("main",)
    # DDP must search for parameters a phase leaves unused (multi-phase methods).
    find_unused_parameters: ClassVar[bool] = False

    def __init__(self, config: Config, num_classes: int, num_train_images: int) -> None:
        super().__init__()
        self.config = config
        self.options = self.Options.from_section(config.method)
        self.num_classes = num_classes
        self.num_train_images = num_train_images

    def forward(self, batch: Batch, phase: str = "main") -> dict[str, torch.Tensor]:
        """Training losses of one phase on one batch.

        Returns a dict with ``"loss"`` (the scalar to back-propagate), each named term of it
        (scalars, logged separately) and, optionally, ``"logits"`` ``[B, C]`` for step hooks.
        """
        raise NotImplementedError

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` for a batch of images ``[B, 3, H, W]``."""
        raise NotImplementedError

    def inference(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything evaluation collects per image: ``"logits"`` ``[B, C]`` and any extra
        per-image outputs a method reports on (SALGL's scene distribution ``[B, K]``)."""
        return {"logits": self.predict(images)}

    def extra_metrics(self, outputs: dict[str, torch.Tensor], dataset: Any) -> dict[str, float]:
        """Method-specific metrics from ``inference`` outputs gathered over a whole split, in
        dataset order (row i is ``dataset[i]``); e.g. how well learned scenes match true ones."""
        return {}

    def param_groups(self, phase: str, weight_decay: float) -> list[dict[str, Any]]:
        """Parameter groups of the optimiser of ``phase``.

        The default puts every trainable parameter in the single ``"main"`` phase, with weight
        decay on weights but not on biases, norms, embeddings' positional tables or 1-d tensors
        (the usual AdamW practice). Methods with several phases or per-module learning rates
        override this.
        """
        if phase != "main":
            raise ValueError(f"{type(self).__name__} has no phase {phase!r}")
        return split_weight_decay(self.named_parameters(), weight_decay)

    @torch.no_grad()
    def after_step(self, batch: Batch, outputs: dict[str, torch.Tensor]) -> None:
        """Called once per iteration after the optimiser steps (no gradients)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first batch of every epoch (``epoch`` counts from 0)."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called after the last batch of every epoch."""


def split_weight_decay(
    named_parameters: Iterator[tuple[str, nn.Parameter]], weight_decay: float, **group_options: Any
) -> list[dict[str, Any]]:
    """Two parameter groups: weights with ``weight_decay``, and biases / norm scales / other
    1-d parameters without it."""
    decay, no_decay = [], []
    for _, param in named_parameters:
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, **group_options},
        {"params": no_decay, "weight_decay": 0.0, **group_options},
    ]
    return [group for group in groups if group["params"]]
