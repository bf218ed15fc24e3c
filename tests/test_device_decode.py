"""``data.decode: device``: the workers read JPEG bytes, the engine decodes and augments each
batch on the device (here the CPU) and gets the loader path's batches."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from PIL import Image

from mlcl.cli import main
from mlcl.config import load_config, with_overrides
from mlcl.data import MultiLabelDataset
from mlcl.data.device_decode import DeviceDecoder, EncodedImages, collate_encoded
from mlcl.engine import fit
from mlcl.engine.loaders import (
    batch_to_device,
    build_datasets,
    build_loaders,
    device_decoder,
    seed_epoch,
)
from mlcl.engine.process_group import DistributedContext
from mlcl.errors import ConfigError, DataError
from tests.test_engine_toys import ToyDataset

CPU = DistributedContext(torch.device("cpu"))
IMAGE_SIZE = 32  # the built-in test images are 64 px: resizing halves them (antialiasing)
# JPEG decoders and resamplers may round a level of 255 apart; in normalised units (std ≥ 0.224):
TWO_LEVELS = 2 / 255 / 0.224
# torchvision 0.29 deprecates its decoders for TorchCodec's (see mlcl.data.device_decode).
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def _config(root, decode, **overrides):
    values = {
        "data.dataset": "synthetic",
        "data.root": str(root),
        "data.decode": decode,
        "data.image_size": IMAGE_SIZE,
        "data.batch_size": 8,
        "data.workers": 0,
        "model.backbone": "test_resnet",
        "run.device": "cpu",
        "run.progress": False,
    }
    return load_config(None, values | overrides)


def _loaders(config):
    train_dataset, val_dataset = build_datasets(config, CPU)
    return build_loaders(config, train_dataset, val_dataset, CPU)


def _epoch(config, epoch=0, skip=0):
    """Every training batch of ``epoch``, on the device, as the step gets them."""
    train_loader, _ = _loaders(config)
    seed_epoch(train_loader, config.run.seed, epoch, rank=0, skip_batches=skip)
    decoder = device_decoder(config)
    return [batch_to_device(batch, CPU.device, True, decoder) for batch in train_loader]


def _first_val_batch(config):
    _, val_loader = _loaders(config)
    return batch_to_device(next(iter(val_loader)), CPU.device, True, device_decoder(config))


def _assert_same_items(a, b):
    for name in ("labels", "observed", "index"):
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_an_evaluation_batch_matches_the_loaders(synthetic_root):
    loader = _first_val_batch(_config(synthetic_root, "loader"))
    device = _first_val_batch(_config(synthetic_root, "device"))
    _assert_same_items(loader, device)
    torch.testing.assert_close(device["image"], loader["image"], rtol=0, atol=TWO_LEVELS)


@pytest.mark.parametrize(("augment", "cutout"), [("flip", 0.0), ("crop", 0.5)])
def test_training_batches_are_the_loaders_with_the_same_draws(synthetic_root, augment, cutout):
    """Each image's crop, flip and Cutout hole are drawn as the loader's transforms draw them,
    so both modes give the same batch up to rounding."""
    overrides = {"data.augment": augment, "data.cutout": cutout}
    loader = _epoch(_config(synthetic_root, "loader", **overrides))[0]
    device = _epoch(_config(synthetic_root, "device", **overrides))[0]
    image = device["image"]
    assert image.shape == (8, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert image.dtype == torch.float32
    assert image.is_contiguous(memory_format=torch.channels_last)
    _assert_same_items(loader, device)
    torch.testing.assert_close(image, loader["image"], rtol=0, atol=TWO_LEVELS)


def test_the_same_seed_gives_the_same_augmented_batches(synthetic_root):
    """Also with workers and an epoch started part-way: what makes a resumed run exact."""
    config = _config(synthetic_root, "device", **{"data.augment": "crop", "data.cutout": 0.5})
    whole = _epoch(config)
    resumed = _epoch(with_overrides(config, {"data.workers": 2}), skip=1)
    assert len(resumed) == len(whole) - 1
    for a, b in zip(resumed, whole[1:]):
        torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=0)
        _assert_same_items(a, b)
    next_epoch = _epoch(config, epoch=1)
    assert not torch.equal(next_epoch[0]["index"], whole[0]["index"])


def test_fit_trains_with_device_decoding(synthetic_root, tmp_path):
    overrides = {
        "data.limit_train": 16,
        "data.limit_val": 16,
        "data.augment": "crop",
        "run.epochs": 1,
        "run.amp": "off",
        "run.out_dir": str(tmp_path),
    }
    summary = fit(_config(synthetic_root, "device", **overrides))
    assert summary["steps"] == 2  # 16 images in batches of 8
    assert math.isfinite(summary["best_map"])


def _one_image_dataset(path):
    return MultiLabelDataset([path], torch.ones(1, 2, dtype=torch.bool), ["a", "b"])


def _decode(dataset):
    batch = collate_encoded([dataset[i] for i in range(len(dataset))])
    return DeviceDecoder(IMAGE_SIZE, (0.5,) * 3, (0.5,) * 3)(batch, torch.device("cpu"))


def test_a_file_that_is_not_a_jpeg_is_named(tmp_path):
    png = tmp_path / "drawn.jpg"
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    with pytest.raises(DataError, match=r"drawn\.jpg: a PNG file; data\.decode=device"):
        EncodedImages(_one_image_dataset(png), IMAGE_SIZE)[0]
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(DataError, match=r"notes\.jpg: not an image file"):
        EncodedImages(_one_image_dataset(text), IMAGE_SIZE)[0]


def test_a_jpeg_that_cannot_be_decoded_is_named(synthetic_root, tmp_path):
    good = next((synthetic_root / "images" / "train").glob("*.jpg"))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:700])  # the header and a little of the scan
    shutil.copy(good, tmp_path / "good.jpg")
    paths = [tmp_path / "good.jpg", truncated]
    dataset = MultiLabelDataset(paths, torch.ones(2, 2, dtype=torch.bool), ["a", "b"])
    with pytest.raises(DataError, match=r"truncated\.jpg: cannot decode the JPEG"):
        _decode(EncodedImages(dataset, IMAGE_SIZE))


def test_what_has_no_device_version_is_refused(synthetic_root):
    with pytest.raises(ConfigError, match=r"data\.randaugment: .*use data\.decode=loader"):
        _loaders(_config(synthetic_root, "device", **{"data.randaugment": True}))
    toys = ToyDataset(size=8, image_size=8)
    with pytest.raises(ConfigError, match=r"data\.decode: .*ToyDataset has none"):
        build_loaders(_config(synthetic_root, "device"), toys, toys, CPU)


def test_bench_times_the_data_pipeline_with_device_decoding(synthetic_root, tmp_path, capsys):
    out = tmp_path / "bench.json"
    settings = [
        f"data.root={synthetic_root}",
        "data.decode=device",
        f"data.image_size={IMAGE_SIZE}",
        "data.batch_size=4",
        "model.backbone=test_resnet",
        "run.device=cpu",
    ]
    arguments = ["bench", "--config", "baseline-quick", "--set", *settings, "--data"]
    code = main([*arguments, "--steps", "1", "--warmup", "1", "--repeats", "1", "--out", str(out)])
    assert code == 0
    written = json.loads(out.read_text())
    assert written["data_decode"] == "device"
    assert written["data_decode_device"] == "cpu"
    assert written["data_images_per_s"] > 0
    assert isinstance(written["data_bound"], bool)
