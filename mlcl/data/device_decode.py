"""Decoding JPEGs on the training device (``data.decode: device``): the workers only read files.

In the usual set-up (``data.decode: loader``) the loader's worker processes decode every JPEG
with PIL and augment it on the CPU. With ``data.decode: device`` a worker does no pixel work:
:class:`EncodedImages` reads an image file's bytes and draws the image's augmentation (crop box,
flip, Cutout hole) with the very calls the loader-side transforms make
(:func:`~mlcl.data.transforms.build_transforms`), from the image's own seeded generator
(:class:`~mlcl.engine.loaders.SeededItems`). The parameters travel with the batch, and
:class:`DeviceDecoder` decodes the whole batch on the device (``torchvision.io.decode_jpeg``,
nvjpeg and batched on a GPU) and applies them there: crop, antialiased resize, flip,
normalisation, Cutout. Both modes therefore give the same batches up to the decoders' and
resamplers' rounding (a few levels of 255), and a resumed run is exact in either.

When it helps: nodes with many GPUs and few CPU cores per GPU, where the workers cannot decode
and resize full-size JPEGs (COCO's are about 640 x 480) as fast as the GPU trains; ``mlcl bench
--data`` tells, in both modes. On a CPU it moves the same work into the training process and
only serves as the test path of this code. RandAugment has no device version here
(``data.decode: loader`` runs it).

torchvision 0.29 deprecates its image decoders in favour of TorchCodec's: its
``torchcodec.decoders.decode_jpeg`` (CPU and CUDA) is the successor of the call made here.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import default_collate
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from mlcl.data.dataset import MultiLabelDataset
from mlcl.data.transforms import cutout_erasing, random_resized_crop
from mlcl.errors import DataError

# PIL's names for what decode_jpeg reads; MPO is a camera's multi-picture JPEG (first picture).
JPEG_FORMATS = ("JPEG", "MPO")


class EncodedImages(MultiLabelDataset):
    """The images of ``dataset`` as JPEG file bytes, each with its augmentation's parameters;
    labels, classes and the rest as in ``dataset``.

    Args:
        image_size: side of the square images the decoder makes (Cutout's hole is drawn in it).
        augment: ``"flip"`` or ``"crop"`` as ``data.augment`` (training), ``None`` for the
            evaluation transform (the whole image, no flip).
        cutout: ``data.cutout``, the side of the hole as a fraction of the image side (0: off).

    An item: ``jpeg`` ``[num_bytes]`` uint8, ``path``, ``crop`` ``[4]`` (top, left, height,
    width in the decoded image), ``flip`` bool, ``hole`` ``[4]`` (top, left, height, width in
    the output image; zero size: none), ``labels``, ``observed``, ``index``.
    """

    def __init__(
        self,
        dataset: MultiLabelDataset,
        image_size: int,
        augment: str | None = None,
        cutout: float = 0.0,
    ) -> None:
        super().__init__(
            dataset.image_paths,
            dataset.full_labels,
            dataset.class_names,
            None,
            dataset.image_info,
            dataset.scene_names,
            dataset.name,
        )
        self.labels, self.observed = dataset.labels, dataset.observed  # single positives too
        if augment not in (None, "flip", "crop"):
            raise ValueError(f"data.augment must be 'flip' or 'crop', got {augment!r}")
        self.image_size = image_size
        self.augment = augment
        self.crop = random_resized_crop(image_size) if augment == "crop" else None
        self.erasing = cutout_erasing(cutout) if augment and cutout > 0 else None

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.image_paths[index]
        jpeg, height, width = read_jpeg(path)
        crop, flip, hole = self.draw_augmentation(height, width)
        return {
            "jpeg": jpeg,
            "path": str(path),
            "crop": torch.tensor(crop),
            "flip": torch.tensor(flip),
            "hole": torch.tensor(hole),
            "labels": self.labels[index],
            "observed": self.observed[index],
            "index": torch.tensor(index, dtype=torch.long),
        }

    def draw_augmentation(self, height: int, width: int) -> tuple[list[int], bool, list[int]]:
        """Crop box, flip and Cutout hole of an image of ``height`` x ``width``, drawn from
        torch's generator in the order and with the calls of ``build_transforms``'s pipeline."""
        crop, flip, hole = [0, 0, height, width], False, [0, 0, 0, 0]
        if self.augment is None:
            return crop, flip, hole
        if self.crop is not None:
            box = self.crop.make_params([_size_only(height, width)])
            crop = [box["top"], box["left"], box["height"], box["width"]]
        flip = bool(torch.rand(1) < 0.5)  # RandomHorizontalFlip(p=0.5)'s draw
        if self.erasing is not None:
            torch.rand(1)  # RandomErasing(p=1) draws whether to erase, always yes
            erase = self.erasing.make_params([_size_only(self.image_size, self.image_size)])
            if erase["v"] is not None:  # None: no hole of that size fitted
                hole = [erase["i"], erase["j"], erase["h"], erase["w"]]
        return crop, flip, hole


def read_jpeg(path: Path) -> tuple[torch.Tensor, int, int]:
    """The bytes of the JPEG file ``path`` (``[num_bytes]`` uint8) and its height and width,
    read from its header without decoding. ``DataError`` naming the file if it is not a JPEG."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    try:
        with Image.open(io.BytesIO(data)) as header:  # parses the header only
            image_format, (width, height) = header.format, header.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise DataError(f"{path}: not an image file") from None
    if image_format not in JPEG_FORMATS:
        raise DataError(
            f"{path}: a {image_format} file; data.decode=device decodes JPEGs only "
            "(data.decode=loader reads any image)"
        )
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), height, width


def collate_encoded(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of :class:`EncodedImages` items: the files' bytes, of different lengths, stay a
    list; paths a list of strings; the rest is stacked as usual."""
    rest = [{name: value for name, value in item.items() if name != "jpeg"} for item in items]
    return default_collate(rest) | {"jpeg": [item["jpeg"] for item in items]}


@dataclass(frozen=True)
class DeviceDecoder:
    """Turns a batch of :class:`EncodedImages` into the batch the loader path delivers, on the
    training device: what ``build_transforms`` does to each image in the workers."""

    image_size: int
    mean: Sequence[float]
    std: Sequence[float]

    def __call__(self, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        """``image`` ``[B, 3, S, S]`` float32, normalised, contiguous; ``labels``,
        ``observed``, ``index`` as in the batch; all on ``device``."""
        decoded = decode_jpegs(batch["jpeg"], batch["path"], device)  # B x [3, H, W] uint8
        size = [self.image_size, self.image_size]
        images = torch.stack(
            [
                F.resize(image[:, top : top + height, left : left + width], size, antialias=True)
                for image, (top, left, height, width) in zip(decoded, batch["crop"].tolist())
            ]
        )  # [B, 3, S, S] uint8, rounded as PIL's resize rounds
        images = images.float().div_(255)
        flip = batch["flip"].to(device, non_blocking=True)[:, None, None, None]
        images = torch.where(flip, images.flip(-1), images)
        images = F.normalize(images, list(self.mean), list(self.std), inplace=True)
        if batch["hole"][:, 2:].any():  # Cutout: the hole is 0, the mean colour
            images.masked_fill_(_hole_mask(batch["hole"], self.image_size, device), 0.0)
        moved = {
            name: batch[name].to(device, non_blocking=True)
            for name in ("labels", "observed", "index")
        }
        return {"image": images, **moved}


def decode_jpegs(
    jpegs: list[torch.Tensor], paths: Sequence[str], device: torch.device
) -> list[torch.Tensor]:
    """The RGB images ``[3, H, W]`` uint8 of encoded JPEGs, decoded on ``device`` (batched on
    a GPU). ``DataError`` naming the file if one cannot be decoded."""
    try:
        return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as err:
        culprit = _first_undecodable(jpegs, paths, device)
        raise DataError(f"{culprit}: cannot decode the JPEG ({err})") from None


def _first_undecodable(
    jpegs: list[torch.Tensor], paths: Sequence[str], device: torch.device
) -> str:
    """The first file that fails to decode on its own: a batched decode does not say which."""
    for jpeg, path in zip(jpegs, paths):
        try:
            decode_jpeg(jpeg, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            return path
    return f"one of the {len(paths)} files of the batch that starts with {paths[0]}"


def _size_only(height: int, width: int) -> torch.Tensor:
    """An image-shaped tensor of that size without its pixels: all that ``make_params`` reads."""
    return torch.empty(3, 1, 1).expand(3, height, width)


def _hole_mask(holes: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """``[B, 1, S, S]`` bool, true inside each image's hole; ``holes`` ``[B, 4]`` as in
    :class:`EncodedImages`."""
    top, left, height, width = holes.to(device, non_blocking=True).unbind(1)  # [B] each
    coords = torch.arange(size, device=device)
    rows = (coords >= top[:, None]) & (coords < (top + height)[:, None])  # [B, S]
    cols = (coords >= left[:, None]) & (coords < (left + width)[:, None])  # [B, S]
    return (rows[:, :, None] & cols[:, None, :])[:, None]
