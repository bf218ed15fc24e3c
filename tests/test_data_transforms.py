"""Training and evaluation transforms: output shapes, normalisation, Cutout's hole."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mlcl.data import IMAGENET_MEAN, IMAGENET_STD, build_transforms


def image(width: int = 50, height: int = 30, colour=(255, 0, 128)) -> Image.Image:
    return Image.new("RGB", (width, height), colour)


@pytest.mark.parametrize("augment", ["flip", "crop"])
@pytest.mark.parametrize("randaugment", [False, True])
def test_training_output_shape(augment, randaugment):
    transform = build_transforms(True, 32, augment=augment, randaugment=randaugment, cutout=0.25)
    out = transform(image())
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


def test_eval_resizes_and_normalises():
    out = build_transforms(False, 16)(image())
    assert out.shape == (3, 16, 16)
    expected = [(v - m) / s for v, m, s in zip((1.0, 0.0, 128 / 255), IMAGENET_MEAN, IMAGENET_STD)]
    torch.testing.assert_close(out.mean((1, 2)), torch.tensor(expected), atol=1e-4, rtol=0)


def test_custom_mean_std():
    out = build_transforms(False, 8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(image())
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([1.0, -1.0, 128 / 255 * 2 - 1]))


def test_cutout_makes_one_square_hole_of_the_asked_side():
    torch.manual_seed(0)
    transform = build_transforms(True, 40, mean=(0, 0, 0), std=(1, 1, 1), cutout=0.5)
    out = transform(image(40, 40, (255, 255, 255)))  # white: the hole is the only zeros
    hole = out[0] == 0
    rows, columns = hole.any(1).nonzero()[:, 0], hole.any(0).nonzero()[:, 0]
    assert int(hole.sum()) == 20 * 20
    assert len(rows) == 20 and len(columns) == 20  # a 20 × 20 square


def test_flip_flips():
    picture = Image.new("RGB", (4, 4), (0, 0, 0))
    picture.putpixel((0, 0), (255, 255, 255))
    transform = build_transforms(True, 4, mean=(0, 0, 0), std=(1, 1, 1))
    corners = {tuple(transform(picture)[0, 0, [0, 3]].tolist()) for _ in range(40)}
    assert corners == {(1.0, 0.0), (0.0, 1.0)}


def test_bad_options():
    with pytest.raises(ValueError, match="augment"):
        build_transforms(True, 32, augment="mixup")
    with pytest.raises(ValueError, match="cutout"):
        build_transforms(True, 32, cutout=1.5)
