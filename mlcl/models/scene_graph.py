"""SALGL's model (Zhu et al., ICCV 2023): scenes found without labels pick the label graph.

Label co-occurrence depends on the scene (a keyboard brings a mouse indoors; outdoors a car
brings a traffic light), so one graph for the whole data set blurs it. SALGL:

1. encodes the image into tokens ``[B, N, F]`` (backbone, then a transformer encoder layer);
2. classifies the mean token into a distribution ``q`` over ``K`` latent scenes (no scene labels;
   entropy regularisers in :mod:`mlcl.losses.scene` keep the scenes sharp and all in use);
3. keeps per-scene co-occurrence counts ``M`` ``[K, C, C]`` of the training labels
   (:class:`SceneCooccurrence`), turns them into conditional probabilities ``P_k[i, j] =
   P(label j | label i, scene k)`` and mixes them by ``q`` into one label graph per image;
4. pools one feature per label with low-rank bilinear attention over label embeddings
   (:mod:`mlcl.models.bilinear_attention`) and propagates them over the image's graph with a
   gated graph network (:mod:`mlcl.models.ggnn`);
5. classifies ``tanh(Linear([h_attention ; h_graph]))`` with one weight vector per class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlcl.models.backbone import Backbone
from mlcl.models.bilinear_attention import LowRankBilinearAttention
from mlcl.models.ggnn import GatedGraphNetwork
from mlcl.models.heads import GroupWiseLinear
from mlcl.models.transformer_spec import TransformerSpec

# ----------------------------------------------------------------- co-occurrence statistics


def cooccurrence_increment(
    scene_probs: torch.Tensor, labels: torch.Tensor, soft: bool = False
) -> torch.Tensor:
    """What one batch adds to the per-scene counts: ``[K, C, C]``.

    Hard: ``M[argmax q_b] += y_b y_bᵀ`` for every image b. Soft: ``M[k] += q_bk y_b y_bᵀ`` for
    every scene k. ``scene_probs`` ``[B, K]``, ``labels`` ``[B, C]`` in {0, 1}.
    """
    labels = labels.double()
    num_scenes, num_classes = scene_probs.shape[1], labels.shape[1]
    if soft:
        return torch.einsum("bk,bi,bj->kij", scene_probs.double(), labels, labels)
    pair_counts = labels[:, :, None] * labels[:, None, :]  # [B, C, C]
    increment = labels.new_zeros(num_scenes, num_classes, num_classes)
    return increment.index_add_(0, scene_probs.argmax(dim=1), pair_counts)


def conditional_probabilities(
    counts: torch.Tensor, ignore_self: bool = False, normalize: bool = True
) -> torch.Tensor:
    """Counts ``[..., C, C]`` → ``P[..., i, j] = M[..., j, i] / M[..., i, i]``, the probability
    of label j in an image with label i (row i). Rows of labels never counted are 0.

    ``ignore_self`` zeroes the diagonal (``P(i | i) = 1`` says nothing); ``normalize`` then
    divides each row by its sum, so that a label's messages are a weighted average.
    """
    transposed = counts.transpose(-1, -2)
    occurrences = counts.diagonal(dim1=-2, dim2=-1)[..., None]  # [..., C, 1]
    probabilities = torch.where(
        occurrences > 0, transposed / occurrences.clamp(min=1e-12), torch.zeros_like(transposed)
    )
    if ignore_self:
        probabilities = probabilities * (1 - torch.eye(counts.shape[-1], device=counts.device))
    if normalize:
        row_sums = probabilities.sum(dim=-1, keepdim=True)
        probabilities = probabilities / row_sums.clamp(min=1e-12)
    return probabilities


def mix_label_graphs(
    scene_probs: torch.Tensor, scene_graphs: torch.Tensor, soft: bool = False
) -> torch.Tensor:
    """One label graph per image ``[B, C, C]`` from its scene distribution ``[B, K]`` and the
    per-scene graphs ``[K, C, C]``: ``Σ_k q_k P_k`` (soft) or ``P_{argmax q}`` (hard)."""
    scene_graphs = scene_graphs.to(scene_probs.dtype)
    if soft:
        return torch.einsum("bk,kij->bij", scene_probs, scene_graphs)
    return scene_graphs[scene_probs.argmax(dim=1)]


class SceneCooccurrence(nn.Module):
    """Per-scene label co-occurrence counts ``counts`` ``[K, C, C]``: a buffer, so checkpoints
    save it and resuming restores it. Kept in float64: counts over a long training stay exact."""

    counts: torch.Tensor

    def __init__(
        self, num_scenes: int, num_classes: int, ignore_self: bool = False, normalize: bool = True
    ) -> None:
        super().__init__()
        self.ignore_self = ignore_self
        self.normalize = normalize
        self.register_buffer(
            "counts", torch.zeros(num_scenes, num_classes, num_classes, dtype=torch.float64)
        )

    @torch.no_grad()
    def add_(self, increment: torch.Tensor) -> None:
        """Add a ``[K, C, C]`` increment (from :func:`cooccurrence_increment`)."""
        self.counts += increment.to(self.counts)

    def scene_graphs(self) -> torch.Tensor:
        """``[K, C, C]`` float32: the conditional probability matrix of every scene."""
        return conditional_probabilities(self.counts, self.ignore_self, self.normalize).float()

    def forward(self, scene_probs: torch.Tensor, soft: bool = False) -> torch.Tensor:
        """The label graph ``[B, C, C]`` of each image, from its scene distribution ``[B, K]``."""
        return mix_label_graphs(scene_probs, self.scene_graphs(), soft)


# ----------------------------------------------------------------- the model


def sine_position_encoding(height: int, width: int, dim: int) -> torch.Tensor:
    """DETR's 2-D sine encoding of a ``height × width`` grid: ``[height * width, dim]``, half
    the channels for the row, half for the column (``dim`` divisible by 4)."""
    if dim % 4:
        raise ValueError(f"a 2-d sine position encoding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = 10000 ** (-torch.arange(quarter, dtype=torch.float32) / quarter)  # [dim/4]
    rows = torch.arange(height, dtype=torch.float32)[:, None] * frequencies  # [h, dim/4]
    cols = torch.arange(width, dtype=torch.float32)[:, None] * frequencies  # [w, dim/4]
    row_code = torch.cat([rows.sin(), rows.cos()], dim=1)[:, None].expand(-1, width, -1)
    col_code = torch.cat([cols.sin(), cols.cos()], dim=1)[None].expand(height, -1, -1)
    return torch.cat([row_code, col_code], dim=-1).reshape(height * width, dim)


class SceneGraphModel(nn.Module):
    """Backbone → encoder → scene distribution, scene-aware label graph, label features → logits.

    Args:
        backbone: a :class:`~mlcl.models.Backbone`; its last map ``[B, F, h, w]`` is used.
        num_classes: ``C``.
        encoder: the tokens' width and the transformer encoder over them (SALGL: 8 heads, FF
            2048, dropout 0.1, post-norm). ``encoder.dim`` > 0 projects the map to that many
            channels first (a 1 × 1 convolution) and the model works at that size throughout; 0
            keeps the backbone's ``F`` (SALGL: 2048 for ResNet-101). The graph network costs
            ``O(C · F²)`` per image, so small CPU runs project.
        encoder_layers: SALGL: 1; 0 skips the encoder.
        num_scenes: ``K`` (SALGL on COCO: 6).
        embedding_dim: size of the learned label embeddings (the reference code can also read
            GloVe / BERT vectors of the class names; offline, they are learned).
        attention_dim: rank of the bilinear attention (SALGL: 1024).
        graph_steps: GGNN propagation steps (SALGL: 3); 0 = no graph, the ablation: each label's
            attended feature goes to the classifier unpropagated (fused with itself, so the head
            keeps its size).
        soft: mix the scene graphs by ``q`` (soft) or take the most likely scene's (hard, the
            COCO configuration); the method updates the counts the same way.
        ignore_self, normalize: see :func:`conditional_probabilities`.
        position_encoding: add a 2-D sine encoding to the tokens before the encoder.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        encoder: TransformerSpec,
        encoder_layers: int = 1,
        num_scenes: int = 6,
        embedding_dim: int = 300,
        attention_dim: int = 1024,
        graph_steps: int = 3,
        soft: bool = False,
        ignore_self: bool = False,
        normalize: bool = True,
        position_encoding: bool = False,
    ) -> None:
        super().__init__()
        spec = encoder.for_input(backbone.num_features)
        dim = spec.dim
        self.backbone = backbone
        self.input_projection: nn.Module = nn.Identity()
        if encoder.dim:  # asked for a width of its own, even one equal to the backbone's
            self.input_projection = nn.Conv2d(backbone.num_features, dim, kernel_size=1)
        self.num_scenes = num_scenes
        self.soft = soft
        self.position_encoding = position_encoding
        self.encoder: nn.Module = nn.Identity()
        if encoder_layers > 0:
            layer = nn.TransformerEncoderLayer(
                dim, spec.heads, spec.ff_dim, spec.dropout, batch_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, encoder_layers, enable_nested_tensor=False)
        self.scene_classifier = nn.Linear(dim, num_scenes, bias=False)
        self.cooccurrence = SceneCooccurrence(num_scenes, num_classes, ignore_self, normalize)
        self.label_embeddings = nn.Parameter(torch.randn(num_classes, embedding_dim))
        self.attention = LowRankBilinearAttention(dim, embedding_dim, attention_dim)
        self.graph = GatedGraphNetwork(dim, graph_steps, out_messages=True) if graph_steps else None
        self.fuse = nn.Linear(2 * dim, dim)
        self.classifier = GroupWiseLinear(num_classes, dim)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images ``[B, 3, H, W]`` → ``logits`` ``[B, C]``, ``scene_logits`` / ``scene_probs``
        ``[B, K]``, ``label_graph`` ``[B, C, C]`` (the graph each image used) and ``attention``
        ``[B, C, h, w]`` (where each label looked)."""
        feature_map = self.input_projection(self.backbone(images)[-1])  # [B, F, h, w]
        height, width = feature_map.shape[-2:]
        tokens = feature_map.flatten(2).transpose(1, 2)  # [B, N, F]
        if self.position_encoding:
            encoding = sine_position_encoding(height, width, tokens.shape[-1])
            tokens = tokens + encoding.to(tokens)
        tokens = self.encoder(tokens)  # [B, N, F]

        scene_logits = self.scene_classifier(tokens.mean(dim=1))  # [B, K]
        scene_probs = F.softmax(scene_logits.float(), dim=-1)
        label_graph = self.cooccurrence(scene_probs, self.soft)  # [B, C, C]

        label_features, attention = self.attention(tokens, self.label_embeddings)  # [B, C, F]
        propagated = (
            label_features if self.graph is None else self.graph(label_features, label_graph)
        )  # [B, C, F]
        fused = torch.tanh(self.fuse(torch.cat([label_features, propagated], dim=-1)))
        return {
            "logits": self.classifier(fused),  # [B, C]
            "scene_logits": scene_logits,
            "scene_probs": scene_probs,
            "label_graph": label_graph,
            "attention": attention.unflatten(-1, (height, width)),  # [B, C, h, w]
        }
