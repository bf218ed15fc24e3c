"""Query2Label-style semantic decoder trained with ASL: SADCL's first stage.

The model (:class:`mlcl.models.semantic_decoder.Query2Label`) turns the backbone's last feature map
into one label-level feature per class with a transformer decoder whose queries are learned class
embeddings, and classifies each with its own weight vector. Its defaults follow the Query2Label
run of SADCL's code (ResNet-101 at 448 px, D = 2048 without input projection, 1 encoder and
2 decoder layers, 4 heads, no self-attention among queries).

``attention_maps(images)`` gives the decoder's cross-attention per class ``[B, C, h, w]`` for
visualisation.

Two-stage training. ``method.init_from`` starts the model from the ``model.*`` weights of another
run's checkpoint (a q2l, mulcon or sadcl run: every method here keeps its network in
``self.model``); SADCL's second stage is a sadcl run with ``init_from`` set to the best q2l
checkpoint (see :mod:`mlcl.methods.sadcl`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from mlcl.config import ranged
from mlcl.errors import CheckpointError, ConfigError
from mlcl.methods.base import Batch, Method
from mlcl.methods.baseline import ClassificationLossOptions, classification_loss
from mlcl.methods.registry import register_method
from mlcl.models import Backbone
from mlcl.models.semantic_decoder import Query2Label
from mlcl.models.transformer_spec import TransformerSpec


@dataclass
class Q2LOptions(ClassificationLossOptions):
    start_only: ClassVar[tuple[str, ...]] = ("init_from",)

    # ASL as in SADCL's scripts: γ+ = 0, γ− = 4, no probability margin (clip 0).
    clip: float = ranged(0.0, "[0, 1)")
    # D; 0 = the backbone's channels, no input projection (SADCL: 2048)
    hidden_dim: int = ranged(0, ">= 0")
    heads: int = ranged(4, "> 0")  # SADCL / Query2Label: 4
    encoder_layers: int = ranged(1, ">= 0")  # SADCL: 1
    decoder_layers: int = ranged(2, "> 0")  # SADCL: 2
    ff_dim: int = ranged(0, ">= 0")  # 0 = 4·D (SADCL: 8192)
    dropout: float = ranged(0.1, "[0, 1)")  # SADCL: 0.1
    query_self_attention: bool = False  # SADCL's run drops it (keep_*_self_attn_dec = false)
    init_from: str = ""  # a checkpoint whose model.* weights start this run (stage 2)
    init_from_ema: bool = False  # take that checkpoint's EMA weights instead


def load_model_weights(model: nn.Module, path: str, ema: bool = False) -> None:
    """Load the ``model.*`` entries of an mlcl checkpoint into ``model`` (strictly: every
    weight of ``model`` must be there with its shape). Raises ``ConfigError`` for a missing file
    and ``CheckpointError`` for an unusable one."""
    if not Path(path).is_file():
        raise ConfigError(f"method.init_from: {path}: file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({err})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise CheckpointError(f"{path}: not an mlcl checkpoint (no 'model' entry)")
    weights = checkpoint["ema"] if ema else checkpoint["model"]
    if weights is None:
        raise CheckpointError(f"{path}: holds no EMA weights (the run had run.ema = 0)")
    prefix = "model."
    state = {
        name[len(prefix) :]: value for name, value in weights.items() if name.startswith(prefix)
    }
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(
            f"{path}: has no weights for {len(missing)} entries of this model "
            f"(first: {missing[0]}); was it made with the same model options?"
        )
    for name, value in expected.items():
        if state[name].shape != value.shape:
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(state[name].shape)}, "
                f"this model needs {tuple(value.shape)}"
            )
    model.load_state_dict({name: state[name] for name in expected})


@register_method
class Q2L(Method):
    name = "q2l"
    Options = Q2LOptions

    def __init__(self, config, num_classes: int, num_train_images: int) -> None:
        super().__init__(config, num_classes, num_train_images)
        options = self.options
        spec = TransformerSpec(options.hidden_dim, options.heads, options.ff_dim, options.dropout)
        self.model = Query2Label(
            Backbone.from_config(config.model),
            num_classes,
            spec,
            encoder_layers=options.encoder_layers,
            decoder_layers=options.decoder_layers,
            query_self_attention=options.query_self_attention,
        )
        if options.init_from:
            load_model_weights(self.model, options.init_from, options.init_from_ema)

    def forward(self, batch: Batch, phase: str = "main") -> dict[str, torch.Tensor]:
        logits = self.model(batch["image"])["logits"]
        loss = classification_loss(logits, batch["labels"], self.options)
        return {"loss": loss, self.options.loss: loss.detach(), "logits": logits.detach()}

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["logits"]

    @torch.no_grad()
    def attention_maps(self, images: torch.Tensor) -> torch.Tensor:
        """The last decoder layer's cross-attention of every class over the feature map,
        averaged over heads: ``[B, C, h, w]``, each map summing to 1."""
        return self.model(images, return_attention=True)["attention"]
