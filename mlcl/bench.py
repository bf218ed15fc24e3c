"""Throughput of a preset: training images/s, peak memory, FLOPs and model FLOP utilisation.

``mlcl bench --config PRESET --out result.json`` measures two things separately:

- **the training step** on synthetic tensors already on the device (so the data pipeline cannot
  be the bottleneck): the engine's own ``training_step`` (every phase, optimiser steps, EMA,
  ``after_step``) with the preset's precision, channels-last and compile settings; warm-up
  excluded, several repeats, the median reported;
- **the data pipeline alone**: the preset's training loader (decoding, augmentation, collation
  with its workers), iterated without a model; with ``data.decode: device``, the loader (reading
  files) and the decoding and augmentation on the training device after it.

A training step is data-bound when the second number is below the first. Model FLOPs per image
come from PyTorch's FLOP counter over one whole training step (forward and backward); dividing
the achieved FLOP/s by the device's *measured* dense matrix-multiply rate (in the training
precision) gives the model FLOP utilisation (MFU).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mlcl.config import Config, with_overrides
from mlcl.engine.distributed import setup_distributed
from mlcl.engine.run_dir import environment_info, peak_memory_mb
from mlcl.engine.train import build_training, training_step

# Classes of each data set, for benchmarking without the data on disk.
NUM_CLASSES = {"coco2014": 80, "coco2017": 80, "voc2007": 20, "voc2012": 20, "nuswide": 81}


class _Shape:
    """Stands in for a data set where only its size and classes matter (method construction)."""

    def __init__(self, num_classes: int, num_images: int) -> None:
        self.num_classes = num_classes
        self.class_names = [f"class_{i}" for i in range(num_classes)]
        self._num_images = num_images

    def __len__(self) -> int:
        return self._num_images


def synthetic_batch(
    batch_size: int, image_size: int, num_classes: int, device: torch.device, channels_last: bool
) -> dict[str, torch.Tensor]:
    """A batch of random images with about three positives per image, on ``device``."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    labels = (torch.rand(batch_size, num_classes, generator=generator) < 3 / num_classes).float()
    labels[
        torch.arange(batch_size), torch.randint(num_classes, (batch_size,), generator=generator)
    ] = 1
    batch = {
        "image": image,
        "labels": labels,
        "observed": torch.ones(batch_size, num_classes, dtype=torch.bool),
        "index": torch.arange(batch_size),
    }
    batch = {name: value.to(device) for name, value in batch.items()}
    if channels_last:
        batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
    return batch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_train_step(
    config: Config, num_classes: int, steps: int = 20, warmup: int = 5, repeats: int = 3
) -> dict[str, Any]:
    """Median training images/s of ``config``'s method on synthetic tensors, its peak memory and
    its FLOPs per image."""
    context = setup_distributed(config.run.device)
    device = context.device
    batch_size, image_size = config.data.batch_size, config.data.image_size
    shape = _Shape(num_classes, num_images=batch_size * 16)
    # Plan the learning-rate schedule for every step taken here (OneCycle refuses to go past its
    # planned total): one epoch that holds the warm-up, the timed repeats and the FLOP count.
    config = with_overrides(config, {"run.epochs": 1, "run.max_steps": 0})
    total_steps = warmup + repeats * steps + 1
    training = build_training(config, context, shape, shape, steps_per_epoch=total_steps)
    batch = synthetic_batch(batch_size, image_size, num_classes, device, config.run.channels_last)
    training.model.train()

    for _ in range(warmup):
        training_step(training, batch)
    _synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    step_seconds = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            training_step(training, batch)
        _synchronize(device)
        step_seconds.append((time.perf_counter() - start) / steps)
    memory = peak_memory_mb(device)  # CUDA max allocated, or the process's peak RSS on a CPU

    with FlopCounterMode(display=False) as counter:
        training_step(training, batch)
    flops_per_image = counter.get_total_flops() / batch_size

    median_step = statistics.median(step_seconds)
    images_per_s = batch_size / median_step
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": str(training.amp_dtype).removeprefix("torch.")
        if training.amp_dtype
        else "float32",
        "batch_size": batch_size,
        "image_size": image_size,
        "num_classes": num_classes,
        "train_step_ms": 1e3 * median_step,
        "train_step_ms_repeats": [1e3 * s for s in step_seconds],
        "train_images_per_s": images_per_s,
        **memory,
        "model_flops_per_image": flops_per_image,
        "achieved_tflops": flops_per_image * images_per_s / 1e12,
        "amp_dtype": training.amp_dtype,
    }


def measure_matmul_tflops(device: torch.device, dtype: torch.dtype, size: int = 4096) -> float:
    """The device's dense matrix-multiply rate in TFLOP/s, measured (median of several)."""
    if device.type == "cpu":
        size = min(size, 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _synchronize(device)
    seconds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        _synchronize(device)
        seconds.append((time.perf_counter() - start) / 10)
    return 2 * size**3 / statistics.median(seconds) / 1e12


def measure_data_pipeline(config: Config, batches: int = 30, repeats: int = 3) -> dict[str, Any]:
    """Images/s of the preset's training data alone: the loader (decode, augment, collate) or,
    with ``data.decode=device``, the loader (read files) and the decoding and augmentation on
    the training device."""
    from mlcl.engine.loaders import build_datasets, build_loaders, device_decoder

    context = setup_distributed(config.run.device)
    decoder = device_decoder(config)
    train_dataset, val_dataset = build_datasets(config, context)
    train_loader, _ = build_loaders(config, train_dataset, val_dataset, context)
    rates = []
    iterator = iter(train_loader)
    next(iterator)  # workers started, first batch ready: warm-up
    for _ in range(repeats):
        images, start = 0, time.perf_counter()
        for _ in range(batches):
            try:
                batch = next(iterator)
            except StopIteration:
                iterator = iter(train_loader)
                batch = next(iterator)
            if decoder is not None:
                batch = decoder(batch, context.device)
            images += batch["image"].shape[0]
        _synchronize(context.device)
        rates.append(images / (time.perf_counter() - start))
    return {
        "data_images_per_s": statistics.median(rates),
        "data_images_per_s_repeats": rates,
        "data_workers": config.data.workers,
        "data_decode": config.data.decode,
        # Where the JPEGs were decoded and augmented: the workers' CPU, or the training device.
        "data_decode_device": "cpu" if decoder is None else str(context.device),
    }


def benchmark(
    config: Config,
    *,
    steps: int = 20,
    warmup: int = 5,
    repeats: int = 3,
    data: bool = False,
    data_batches: int = 30,
) -> dict[str, Any]:
    """Every measurement of the module for ``config``, as one JSON-ready dict."""
    num_classes = NUM_CLASSES.get(config.data.dataset)
    if num_classes is None:
        from mlcl.data.synthetic import CATEGORIES

        num_classes = len(CATEGORIES)
    result: dict[str, Any] = {
        "method": config.model.method,
        "backbone": config.model.backbone,
        "dataset": config.data.dataset,
        "channels_last": config.run.channels_last,
        "compile": config.run.compile,
        "compile_mode": config.run.compile_mode,
        "steps": steps,
        "warmup_steps": warmup,
        "repeats": repeats,
    }
    step = measure_train_step(config, num_classes, steps, warmup, repeats)
    amp_dtype = step.pop("amp_dtype")
    result |= step
    device = torch.device(step["device"])
    matmul_dtype = amp_dtype or torch.float32
    matmul_tflops = measure_matmul_tflops(device, matmul_dtype)
    result["matmul_tflops_measured"] = matmul_tflops
    result["matmul_dtype"] = str(matmul_dtype).removeprefix("torch.")
    result["mfu"] = step["achieved_tflops"] / matmul_tflops
    if data:
        result |= measure_data_pipeline(config, data_batches, repeats)
        result["data_bound"] = result["data_images_per_s"] < result["train_images_per_s"]
    result["environment"] = environment_info()
    return result
