"""The method's own evidence for the labels it predicts, one PNG per image.

- q2l, mulcon, sadcl: each predicted class's attention over the feature map (the decoder's
  cross-attention, MulCon's label attention), ``method.attention_maps``;
- baseline, spml: CAM of the linear classifier on the last feature map;
- scob: Grad-CAM of its classifier on the last backbone map (as its contrastive step does);
- salgl: the image's distribution over the learned scenes, as a bar chart.

Figures are drawn with matplotlib's ``Figure`` on the Agg canvas (no pyplot, no window).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from mlcl.methods import Method
from mlcl.models.cam import class_activation_map, grad_cam, normalize_maps


def evidence_maps(method: Method, images: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Maps ``[M, h, w]`` in [0, 1] for ``pairs`` ``[M, 2]`` of (image row, class)."""
    rows, classes = pairs[:, 0], pairs[:, 1]
    if hasattr(method, "attention_maps"):
        attention = method.attention_maps(images)  # [B, C, h, w], each map sums to 1
        return normalize_maps(attention[rows, classes].float())
    if method.name == "scob":
        maps = method.model.feature_maps(images)
        finer = [m[rows] for m in maps[:-1]]
        return grad_cam(maps[-1][rows], lambda last: method.model.classify([*finer, last]), classes)
    features = method.features(images)[rows]  # baseline, spml: [M, F, h, w]
    if isinstance(method.classifier, nn.Linear):
        return class_activation_map(features, method.classifier.weight, classes)
    # A hidden layer in the head (method.hidden_dim): CAM needs a linear one, Grad-CAM does not.
    return grad_cam(features, lambda last: method.classifier(last.mean(dim=(2, 3))), classes)


class Explainer:
    """Writes one figure per image into ``out_dir``: the image, then a panel per predicted
    label (its map over the image), or for SALGL the scene distribution."""

    def __init__(
        self,
        method: Method,
        class_names: Sequence[str],
        out_dir: str | Path,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.method = method
        self.class_names = list(class_names)
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.names: set[str] = set()

    def __call__(
        self,
        images: torch.Tensor,
        chosen: torch.Tensor,
        probabilities: torch.Tensor,
        files: Sequence[Path],
    ) -> list[Path]:
        """Figures for a batch ``[B, 3, H, W]`` with its predicted labels ``[B, C]`` bool."""
        scenes = None
        pairs = chosen.nonzero()  # [M, 2] (row, class), rows ascending
        if self.method.name == "salgl":
            with torch.no_grad():
                scenes = self.method.inference(images)["scene_probs"].float().cpu()  # [B, K]
        elif len(pairs):
            maps = evidence_maps(self.method, images, pairs.to(images.device)).detach().cpu()
            maps = F.interpolate(maps[:, None].float(), size=images.shape[-2:], mode="bilinear")
        written = []
        for row, file in enumerate(files):
            pixels = (images[row].float().cpu() * self.std + self.mean).clamp(0, 1)
            picked = (pairs[:, 0] == row).nonzero().flatten()
            best_first = probabilities[row, pairs[picked, 1]].argsort(descending=True)
            picked = picked[best_first]  # panels in the order of the printed labels
            classes = pairs[picked, 1].tolist()
            titles = [f"{self.class_names[c]} ({probabilities[row, c]:.2f})" for c in classes]
            figure = Figure(figsize=(3 * (1 + (1 if scenes is not None else len(classes))), 3.2))
            if scenes is not None:
                axes = figure.subplots(1, 2, squeeze=False)[0]
                axes[1].bar(range(1, len(scenes[row]) + 1), scenes[row].numpy())
                axes[1].set(xlabel="scene", ylabel="probability", title="scene distribution")
                axes[0].set_title(", ".join(titles) or "no label", fontsize=8)
            else:
                axes = figure.subplots(1, 1 + len(classes), squeeze=False)[0]
                axes[0].set_title("no label" if not classes else "image", fontsize=8)
                for axis, index, title in zip(axes[1:], picked.tolist(), titles):
                    axis.imshow(pixels.permute(1, 2, 0).numpy())
                    axis.imshow(maps[index, 0].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
                    axis.set_title(title, fontsize=8)
                    axis.axis("off")
            axes[0].imshow(pixels.permute(1, 2, 0).numpy())
            axes[0].axis("off")
            figure.tight_layout()
            path = self.out_dir / (self._unique(Path(file).stem) + ".png")
            figure.savefig(path, dpi=100)
            written.append(path)
        return written

    def _unique(self, stem: str) -> str:
        """``stem``, or ``stem-2``, ``stem-3``... when two inputs share a name."""
        name, number = stem, 1
        while name in self.names:
            number += 1
            name = f"{stem}-{number}"
        self.names.add(name)
        return name
