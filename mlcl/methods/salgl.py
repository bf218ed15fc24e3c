"""SALGL: scene-aware label graph learning (Zhu et al., ICCV 2023).

The model (:class:`mlcl.models.scene_graph.SceneGraphModel`) classifies each image into ``K`` latent scenes,
picks the label graph of its scene from per-scene co-occurrence counts, and propagates label-level
features over it. The method adds what training needs:

- the loss ``ASL(γ+ = 0, γ− = 2, clip 0) + 1.0 · sample entropy + 1.0 · batch entropy gap``
  (the weights of the reference configuration), each term logged;
- the co-occurrence update, in :meth:`SALGL.after_step`;
- scene recovery at evaluation: :meth:`SALGL.inference` returns each image's scene distribution
  and :meth:`SALGL.extra_metrics` scores it against the true scenes when the data set has them.

Where the counts are updated. The reference adds the batch's labels to the counts inside the
training forward, before building the graph that predicts that same batch. Here the update runs
in ``after_step``, with the scene distributions of that forward, because:

- ``after_step`` runs exactly once per iteration, so each image is counted once however many
  phases (forwards) an iteration has;
- a batch's own labels never shape the graph that predicts it: at the first step the reference's
  graph *is* the batch's answer. The cost is a one-iteration delay, nothing over a training;
- under DDP every rank sums the same ``[K, C, C]`` increment with one ``all_reduce_sum`` (fixed
  size, whatever the batch sizes), so the counts stay identical on every rank without
  broadcasting buffers.

The EMA copy (``run.ema``) follows the counts like any floating-point buffer (timm interpolates
buffers), so its graph is a slightly older, smoothed estimate of the same conditional
probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mlcl.collectives import all_reduce_sum
from mlcl.config import ranged
from mlcl.losses.scene import batch_entropy_gap, sample_entropy
from mlcl.methods.base import Batch, Method
from mlcl.methods.baseline import ClassificationLossOptions, classification_loss
from mlcl.methods.registry import register_method
from mlcl.models import Backbone
from mlcl.models.scene_graph import SceneGraphModel, cooccurrence_increment
from mlcl.models.transformer_spec import TransformerSpec
from mlcl.scene_metrics import normalized_mutual_info, purity, usage_entropy


@dataclass
class SALGLOptions(ClassificationLossOptions):
    # ASL as in the SALGL training recipe: γ+ = 0, γ− = 2, no probability margin.
    gamma_neg: float = ranged(2.0, ">= 0")
    clip: float = ranged(0.0, "[0, 1)")
    num_scenes: int = ranged(6, "> 0")  # K: 6 latent scenes for COCO (SALGL)
    soft: bool = False  # soft scene assignment for the counts and the graph (COCO config: hard)
    ignore_self: bool = False  # zero P(i | i) before normalising (reference: off)
    normalize: bool = True  # row-normalise the conditional probabilities (reference: on)
    sample_entropy_weight: float = ranged(1.0, ">= 0")
    batch_entropy_weight: float = ranged(1.0, ">= 0")
    # The reference multiplies log K − H(q̄) by 100
    batch_entropy_scale: float = ranged(100.0, ">= 0")
    # 0: the backbone's channels (SALGL); > 0: 1 × 1 projection (CPU runs)
    feature_dim: int = ranged(0, ">= 0")
    # Learned label embeddings (GloVe's size; no word vectors offline)
    embedding_dim: int = ranged(300, "> 0")
    attention_dim: int = ranged(1024, "> 0")
    graph_steps: int = ranged(3, ">= 0")  # GGNN steps T; 0 = no graph (the ablation)
    # Transformer encoder over the tokens: 1 layer, 8 heads, FF 2048
    encoder_layers: int = ranged(1, ">= 0")
    encoder_heads: int = ranged(8, "> 0")
    encoder_ff_dim: int = ranged(2048, "> 0")
    encoder_dropout: float = ranged(0.1, "[0, 1)")
    position_encoding: bool = False  # off in the COCO configuration


@register_method
class SALGL(Method):
    name = "salgl"
    Options = SALGLOptions

    def __init__(self, config, num_classes: int, num_train_images: int) -> None:
        super().__init__(config, num_classes, num_train_images)
        options = self.options
        # The tokens' width is the projection's (feature_dim; 0 = the backbone's channels).
        encoder = TransformerSpec(
            options.feature_dim,
            options.encoder_heads,
            options.encoder_ff_dim,
            options.encoder_dropout,
        )
        self.model = SceneGraphModel(
            Backbone.from_config(config.model),
            num_classes,
            encoder,
            encoder_layers=options.encoder_layers,
            num_scenes=options.num_scenes,
            embedding_dim=options.embedding_dim,
            attention_dim=options.attention_dim,
            graph_steps=options.graph_steps,
            soft=options.soft,
            ignore_self=options.ignore_self,
            normalize=options.normalize,
            position_encoding=options.position_encoding,
        )

    def forward(self, batch: Batch, phase: str = "main") -> dict[str, torch.Tensor]:
        options = self.options
        outputs = self.model(batch["image"])
        classification = classification_loss(outputs["logits"], batch["labels"], options)
        sample = sample_entropy(outputs["scene_logits"])
        batch_gap = batch_entropy_gap(outputs["scene_logits"], options.batch_entropy_scale)
        loss = (
            classification
            + options.sample_entropy_weight * sample
            + options.batch_entropy_weight * batch_gap
        )
        return {
            "loss": loss,
            options.loss: classification.detach(),
            "sample_entropy": sample.detach(),
            "batch_entropy": batch_gap.detach(),
            "logits": outputs["logits"].detach(),
            "scene_probs": outputs["scene_probs"].detach(),  # [B, K], for after_step
        }

    @torch.no_grad()
    def after_step(self, batch: Batch, outputs: dict[str, torch.Tensor]) -> None:
        """Add the batch's labels to the counts of its scenes, summed over every process."""
        increment = cooccurrence_increment(
            outputs["scene_probs"], batch["labels"], soft=self.options.soft
        )
        self.model.cooccurrence.add_(all_reduce_sum(increment))

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["logits"]

    def inference(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.model(images)
        return {"logits": outputs["logits"], "scene_probs": outputs["scene_probs"]}

    def extra_metrics(self, outputs: dict[str, torch.Tensor], dataset: Any) -> dict[str, float]:
        """Entropy of the images' spread over the learned scenes (``log K`` = even) and, when
        the data set knows each image's true scene, NMI and purity of the learned ones."""
        found = outputs["scene_probs"].argmax(dim=1)  # [N]
        metrics = {"scene_usage_entropy": usage_entropy(found)}
        true = getattr(dataset, "scene_ids", None)
        if true is not None:
            metrics["scene_nmi"] = normalized_mutual_info(found, true)
            metrics["scene_purity"] = purity(found, true)
        return metrics
