"""The one dataset class every loader returns: image files plus a multi-label target matrix.

A loader (COCO, VOC, NUS-WIDE, the built-in synthetic scenes) only has to work out, for one
split, the image files, the class names and the true labels. :class:`MultiLabelDataset` does the
rest: it decodes images, applies the transform, and keeps two views of the labels apart:

- ``full_labels`` ``[N, C]`` bool, the truth. Evaluation and analyses (how good are pseudo-labels?)
  read it; training batches never contain it.
- ``labels`` ``[N, C]`` float and ``observed`` ``[N, C]`` bool, what training may see. With full
  labels they are the truth and everything is observed; in the single-positive setting
  (:mod:`mlcl.data.single_positive`) ``labels`` holds one positive per image and ``observed`` marks
  only that entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from mlcl.errors import DataError

Transform = Callable[[Image.Image], Any]


class MultiLabelDataset(Dataset):
    """Images with multi-label targets.

    Args:
        image_paths: one file per image.
        full_labels: ``[N, C]`` bool, the true labels.
        class_names: ``C`` readable names, in label-index order.
        transform: applied to the decoded RGB ``PIL.Image``; ``None`` returns a float tensor
            ``[3, H, W]`` in [0, 1].
        image_info: per-image extra keys (e.g. the synthetic data's ``scene``, an image id).
        scene_names: names of the scenes when the data has them (built-in data), else ``None``.
        name: the data set's name, for messages (``"coco2014/train"``).
    """

    def __init__(
        self,
        image_paths: Sequence[str | Path],
        full_labels: torch.Tensor,
        class_names: Sequence[str],
        transform: Transform | None = None,
        image_info: Sequence[dict[str, Any]] | None = None,
        scene_names: Sequence[str] | None = None,
        name: str = "",
    ) -> None:
        full_labels = torch.as_tensor(full_labels).bool()
        if full_labels.ndim != 2 or full_labels.shape != (len(image_paths), len(class_names)):
            raise ValueError(
                f"full_labels must be [{len(image_paths)}, {len(class_names)}], "
                f"got {list(full_labels.shape)}"
            )
        self.image_paths: list[Path] = [Path(path) for path in image_paths]
        self.full_labels = full_labels
        self.class_names: list[str] = list(class_names)
        self.transform = transform
        self.image_info: list[dict[str, Any]] = (
            [dict(info) for info in image_info]
            if image_info is not None
            else [{} for _ in self.image_paths]
        )
        self.scene_names: list[str] | None = list(scene_names) if scene_names else None
        self.name = name
        # What training sees: the truth, all of it observed (single_positive.py changes both).
        self.labels: torch.Tensor = full_labels.float()
        self.observed: torch.Tensor = torch.ones_like(full_labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @cached_property  # image_info does not change once loaded
    def scene_ids(self) -> torch.Tensor | None:
        """``[N]`` long scene id of every image when every image records one, else ``None``."""
        if not self.image_info or any("scene" not in info for info in self.image_info):
            return None
        return torch.tensor([int(info["scene"]) for info in self.image_info], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.image_paths)

    def load_image(self, index: int) -> Image.Image:
        """The decoded RGB image ``index``; ``DataError`` naming the file if it cannot be read."""
        return load_rgb(self.image_paths[index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.load_image(index)
        image = self.transform(image) if self.transform is not None else _to_float_tensor(image)
        # Only the trainable view of the labels: never full_labels (single-positive setting).
        return {
            "image": image,
            "labels": self.labels[index],
            "observed": self.observed[index],
            "index": torch.tensor(index, dtype=torch.long),
        }

    def subset(self, limit: int) -> MultiLabelDataset:
        """The first ``limit`` images (all of them if ``limit`` is 0 or larger than the set)."""
        if limit <= 0 or limit >= len(self):
            return self
        subset = MultiLabelDataset(
            self.image_paths[:limit],
            self.full_labels[:limit],
            self.class_names,
            self.transform,
            self.image_info[:limit],
            self.scene_names,
            self.name,
        )
        subset.labels = self.labels[:limit].clone()
        subset.observed = self.observed[:limit].clone()
        return subset

    def select(self, indices: Sequence[int] | torch.Tensor) -> MultiLabelDataset:
        """The images ``indices``, in that order, with their labels as this set has them."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        rows = indices.tolist()
        selected = MultiLabelDataset(
            [self.image_paths[i] for i in rows],
            self.full_labels[indices],
            self.class_names,
            self.transform,
            [self.image_info[i] for i in rows],
            self.scene_names,
            self.name,
        )
        selected.labels = self.labels[indices].clone()
        selected.observed = self.observed[indices].clone()
        return selected

    def __repr__(self) -> str:
        return (
            f"MultiLabelDataset({self.name or 'unnamed'}: {len(self)} images, "
            f"{self.num_classes} classes)"
        )


def load_rgb(path: str | Path, draft_size: int = 0) -> Image.Image:
    """Decode an image file fully and convert it to RGB.

    A missing, truncated or non-image file raises ``DataError`` naming the file. ``draft_size``
    > 0 lets JPEG decoding scale down towards that size on the fly: much faster, for checks.
    """
    try:
        with Image.open(path) as image:
            if draft_size:
                image.draft("RGB", (draft_size, draft_size))
            image.load()  # decode now: a truncated file fails here, not later in a transform
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot decode image ({err})") from None


def _to_float_tensor(image: Image.Image) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as F

    return F.to_dtype(F.to_image(image), torch.float32, scale=True)  # [3, H, W] in [0, 1]
