"""Image transforms (torchvision ``transforms.v2``) for training and evaluation.

Training: resize + horizontal flip (``augment="flip"``) or random resized crop + flip
(``augment="crop"``; scale 0.5–1, as in Scob's recipe, so that most objects stay in the crop),
optionally RandAugment and Cutout, then conversion to a normalised float tensor.
Evaluation: resize to a square + normalise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transforms(
    train: bool,
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    augment: str = "flip",
    randaugment: bool = False,
    cutout: float = 0.0,
) -> v2.Compose:
    """A transform from a PIL image to a normalised ``[3, image_size, image_size]`` float tensor.

    Args:
        train: add the training augmentations; ``False`` gives resize + normalise.
        augment: ``"flip"`` (resize + flip) or ``"crop"`` (random resized crop + flip).
        randaugment: add RandAugment (torchvision's defaults: 2 operations, magnitude 9).
        cutout: side of one square hole, as a fraction of the image side, filled with the mean
            colour (0 after normalisation); 0 turns it off. Scob uses half the side (0.5).
    """
    size = (image_size, image_size)
    if not train:
        steps = [v2.Resize(size, antialias=True)]
    elif augment == "flip":
        steps = [v2.Resize(size, antialias=True), v2.RandomHorizontalFlip()]
    elif augment == "crop":
        steps = [random_resized_crop(image_size), v2.RandomHorizontalFlip()]
    else:
        raise ValueError(f"data.augment must be 'flip' or 'crop', got {augment!r}")
    if train and randaugment:
        steps.append(v2.RandAugment())
    steps += [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]
    if train and cutout > 0:
        steps.append(cutout_erasing(cutout))
    return v2.Compose(steps)


# The two random transforms below are shared with decoding on the device
# (mlcl.data.device_decode), which draws their parameters the same way.


def random_resized_crop(image_size: int) -> v2.RandomResizedCrop:
    """The crop of ``augment="crop"`` (50-100 % of the area), resized to ``image_size``
    square."""
    return v2.RandomResizedCrop((image_size, image_size), scale=(0.5, 1.0), antialias=True)


def cutout_erasing(cutout: float) -> v2.RandomErasing:
    """Cutout: one square hole of side ``cutout`` x the image side, filled with 0 (the mean
    colour, once normalised)."""
    if not 0 < cutout < 1:
        raise ValueError(f"data.cutout must be in [0, 1), got {cutout}")
    # A square hole of side cutout·image side: area fraction cutout², aspect ratio 1.
    return v2.RandomErasing(p=1.0, scale=(cutout**2, cutout**2), ratio=(1.0, 1.0))
