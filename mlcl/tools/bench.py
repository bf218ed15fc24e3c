"""Throughput of a preset: training images/s, peak memory, FLOPs, model FLOP utilisation and
memory traffic.

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
precision) gives the model FLOP utilisation (MFU); that rate is the fastest of a ``matmul`` and two
convolutions (see :func:`measure_matmul_tflops`).

Bytes moved per training step are a **lower-bound estimate**, counted once on the timed batch:

- ``activation_bytes_per_step``: the tensors autograd saves for backward in every phase's
  forward (each storage once, parameters left out), written in the forward and read in the
  backward: 2x their size;
- ``parameter_bytes_per_step``: each trainable parameter read in the forward and the backward
  and its gradient written, for every phase over the parameters its optimiser steps: 3x;
- ``optimizer_bytes_per_step``: AdamW reads parameter, gradient and both moments and writes
  parameter and moments (7x), plus 3x with gradient clipping (norm read, scaling read + write).

Intermediates that are not saved for backward, cache misses, re-reads, the EMA update and
frozen parameters are not counted, so the true traffic is higher: ``bandwidth_utilisation``
(achieved bytes/s over the device's measured copy bandwidth) is an underestimate. ``bound`` is
``"memory"`` when the step's arithmetic intensity (``flops_per_byte``) is below the device's
ridge point (measured matmul FLOP/s over measured bandwidth): the step would be memory-bound
even at this minimum traffic; ``"compute"`` otherwise.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mlcl.config import Config, with_overrides
from mlcl.engine.optim import Optimization, autocast_dtype, stepped_parameters
from mlcl.engine.process_group import setup_distributed
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


class _NoModuleTracker:
    """Stands in for FlopCounterMode's module tracker: every count goes to the global total."""

    parents = frozenset({"Global"})

    def __enter__(self) -> None:
        pass

    def __exit__(self, *args: object) -> None:
        pass


class TotalFlopCounter(FlopCounterMode):
    """PyTorch's FLOP counter without its per-module breakdown, which only the total needs. The
    breakdown's backward hooks fail when a forward calls ``torch.autograd.grad`` itself
    (Scob's Grad-CAM masks): "A leaf node was passed to _will_engine_execute_node"."""

    def __init__(self) -> None:
        super().__init__(display=False)
        self.mod_tracker = _NoModuleTracker()


class SavedActivations:
    """Counts the bytes of the tensors autograd saves for backward while the context is active.

    Each storage counts once (a tensor saved by several operations, or several views of one
    tensor, is in memory once), at the largest size any of its saved views covers; storages of
    ``exclude`` (the parameters, whose traffic is counted apart) are left out. The counted
    storages are held until the context exits, so that memory freed by one phase's backward and
    reused by the next phase's forward is not mistaken for the same tensor.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._excluded = {tensor.untyped_storage().data_ptr() for tensor in exclude}
        self._saved: dict[int, tuple[torch.UntypedStorage, int]] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self.bytes = 0

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self._excluded:
            size = tensor.numel() * tensor.element_size()
            previous = self._saved.get(key, (storage, 0))[1]
            self._saved[key] = (storage, max(size, previous))
        return tensor

    def __enter__(self) -> SavedActivations:
        self._hooks.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._hooks.__exit__(kind, error, traceback)
        self.bytes = sum(size for _, size in self._saved.values())
        self._saved.clear()


def _trainable_bytes(parameters: Iterable[torch.Tensor]) -> int:
    return sum(p.numel() * p.element_size() for p in parameters if p.requires_grad)


def parameter_bytes(parameters: Iterable[torch.Tensor]) -> int:
    """Bytes one forward and backward move for ``parameters``: each read in the forward and in
    the backward, its gradient written. (Under autocast the backward reads the saved
    low-precision copy, counted with the activations, and casts the gradient back up: about the
    same traffic.)"""
    return 3 * _trainable_bytes(parameters)


def optimizer_bytes(parameters: Iterable[torch.Tensor], grad_clip: bool = False) -> int:
    """Bytes one AdamW step moves for ``parameters``: reads parameter, gradient, exp_avg and
    exp_avg_sq, writes parameter, exp_avg and exp_avg_sq (7x; the fused and foreach kernels move
    about this much, the per-parameter loop more). Gradient clipping reads every gradient for
    the norm and reads and writes it to scale it (3x more)."""
    return (10 if grad_clip else 7) * _trainable_bytes(parameters)


def step_bytes(optimization: Optimization, activation_bytes: int) -> dict[str, int]:
    """The lower-bound memory traffic of one training step by source (see the module
    docstring); every phase runs its forward, backward and optimiser step."""
    grad_clip = optimization.grad_clip > 0
    parameter = optimizer = 0
    for phase_optimizer in optimization.optimizers.values():
        parameters = stepped_parameters(phase_optimizer)
        parameter += parameter_bytes(parameters)
        optimizer += optimizer_bytes(parameters, grad_clip)
    activation = 2 * activation_bytes  # written in the forward, read in the backward
    return {
        "activation_bytes_per_step": activation,
        "parameter_bytes_per_step": parameter,
        "optimizer_bytes_per_step": optimizer,
        "bytes_per_step": activation + parameter + optimizer,
    }


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
    # planned total): one epoch that holds the warm-up, the timed repeats and the FLOP and byte
    # count.
    config = with_overrides(config, {"run.epochs": 1, "run.max_steps": 0})
    total_steps = warmup + repeats * steps + 1
    method, model, ema, optimization = build_training(
        config, context, shape, shape, steps_per_epoch=total_steps
    )
    amp_dtype = autocast_dtype(config.run.amp, device)
    batch = synthetic_batch(batch_size, image_size, num_classes, device, config.run.channels_last)
    model.train()

    def step() -> None:
        training_step(model, batch, optimization, amp_dtype=amp_dtype, ema=ema)

    for _ in range(warmup):
        step()
    _synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    step_seconds = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _synchronize(device)
        step_seconds.append((time.perf_counter() - start) / steps)
    memory = peak_memory_mb(device)  # CUDA max allocated, or the process's peak RSS on a CPU

    # FLOPs and saved activations of one more step on the same batch, outside the timed region.
    with TotalFlopCounter() as counter, SavedActivations(method.parameters()) as saved:
        step()
    flops_per_image = counter.get_total_flops() / batch_size
    traffic = step_bytes(optimization, saved.bytes)

    median_step = statistics.median(step_seconds)
    images_per_s = batch_size / median_step
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": str(amp_dtype).removeprefix("torch.") if amp_dtype else "float32",
        "batch_size": batch_size,
        "image_size": image_size,
        "num_classes": num_classes,
        "train_step_ms": 1e3 * median_step,
        "train_step_ms_repeats": [1e3 * s for s in step_seconds],
        "train_images_per_s": images_per_s,
        **memory,
        "model_flops_per_image": flops_per_image,
        "achieved_tflops": flops_per_image * images_per_s / 1e12,
        **traffic,
        "bytes_per_image": traffic["bytes_per_step"] / batch_size,
        "achieved_gbps": traffic["bytes_per_step"] / median_step / 1e9,
        "amp_dtype": amp_dtype,
    }


def measure_matmul_tflops(
    device: torch.device, dtype: torch.dtype, size: int = 4096
) -> tuple[float, str]:
    """The device's dense matrix-multiply rate in TFLOP/s, measured, and the kernel that gave it.

    PyTorch sends a ``matmul`` to the BLAS library (cuBLAS, MKL, OpenBLAS) and a convolution to
    the convolution library (cuDNN, oneDNN), and on a CPU the two can differ by 2x: on an AMD
    EPYC, MKL's float32 GEMM runs at less than half the rate of oneDNN's 3x3 convolutions, and a
    ResNet would exceed "100 %" of the matmul rate. So the rate is the fastest of three dense
    kernels: a square ``matmul``, the same GEMM as a 1x1 convolution, and a 3x3 convolution
    (channels-last). On GPUs the matmul is the fastest, as expected of tensor cores.
    """
    if device.type == "cpu":
        size = min(size, 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    # The same product as a 1x1 convolution: size positions (a 32 x size/32 map) of size channels.
    tokens = _channels_last_randn((1, size, 32, size // 32), device, dtype)
    pointwise = torch.randn(size, size, 1, 1, device=device, dtype=dtype)
    channels = size // 4
    images = _channels_last_randn((8, channels, 32, 32), device, dtype)
    spatial = _channels_last_randn((channels, channels, 3, 3), device, dtype)
    work = {
        "matmul": (lambda: a @ b, 2 * size**3),
        "conv1x1": (lambda: F.conv2d(tokens, pointwise), 2 * size**3),
        "conv3x3": (
            lambda: F.conv2d(images, spatial, padding=1),
            2 * 8 * 32 * 32 * channels**2 * 9,
        ),
    }
    rates = {
        name: flops / _median_seconds(run, device) / 1e12 for name, (run, flops) in work.items()
    }
    kernel = max(rates, key=rates.get)
    return rates[kernel], kernel


def _channels_last_randn(
    shape: tuple[int, int, int, int], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    # Drawn in place, not converted from a view of another tensor: oneDNN ran such a copy at
    # half the speed of a fresh tensor with the very same strides.
    return torch.randn(shape, device=device, dtype=dtype).contiguous(
        memory_format=torch.channels_last
    )


def _median_seconds(
    run: Callable[[], object], device: torch.device, calls_per_round: int = 10
) -> float:
    """Median seconds of one call of ``run``: 3 warm-up calls, then 5 timed rounds of
    ``calls_per_round`` calls each."""
    for _ in range(3):
        run()
    _synchronize(device)
    seconds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls_per_round):
            run()
        _synchronize(device)
        seconds.append((time.perf_counter() - start) / calls_per_round)
    return statistics.median(seconds)


def measure_memory_bandwidth(device: torch.device, megabytes: int | None = None) -> float:
    """The device's memory bandwidth in GB/s, measured: a large tensor copied (read + write),
    median of several. 256 MB on a GPU; 64 MB on a CPU, which keeps it quick and still well
    beyond its caches."""
    if megabytes is None:
        megabytes = 256 if device.type == "cuda" else 64
    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device).fill_(1)
    target = torch.empty_like(source)
    seconds = _median_seconds(lambda: target.copy_(source), device, calls_per_round=1)
    return 2 * source.numel() / seconds / 1e9


def roofline(result: dict[str, Any]) -> dict[str, Any]:
    """Bandwidth utilisation, arithmetic intensity, the device's ridge point and the bound
    that applies, from a result holding the step's figures and the device's measured rates."""
    flops_per_step = result["model_flops_per_image"] * result["batch_size"]
    flops_per_byte = flops_per_step / result["bytes_per_step"]
    ridge = result["matmul_tflops_measured"] * 1e12 / (result["memory_gbps_measured"] * 1e9)
    return {
        "bandwidth_utilisation": result["achieved_gbps"] / result["memory_gbps_measured"],
        "flops_per_byte": flops_per_byte,
        "ridge_flops_per_byte": ridge,
        "bound": "memory" if flops_per_byte < ridge else "compute",
    }


def summary(result: dict[str, Any]) -> str:
    """One line of the main figures of a result of ``benchmark``."""
    return (
        f"{result['train_images_per_s']:.1f} images/s, "
        f"{result['model_flops_per_image'] / 1e9:.2f} GFLOP/image, MFU {result['mfu']:.1%}; "
        f"{result['bytes_per_image'] / 1e6:.1f} MB/image (lower bound), "
        f"{result['achieved_gbps']:.1f} of {result['memory_gbps_measured']:.1f} GB/s "
        f"({result['bandwidth_utilisation']:.1%}); {result['flops_per_byte']:.1f} FLOP/byte, "
        f"ridge {result['ridge_flops_per_byte']:.1f}: {result['bound']}-bound"
    )


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
    matmul_tflops, matmul_kernel = measure_matmul_tflops(device, matmul_dtype)
    result["matmul_tflops_measured"] = matmul_tflops
    result["matmul_dtype"] = str(matmul_dtype).removeprefix("torch.")
    result["matmul_kernel"] = matmul_kernel  # matmul | conv1x1 | conv3x3: the fastest
    result["mfu"] = step["achieved_tflops"] / matmul_tflops
    result["memory_gbps_measured"] = measure_memory_bandwidth(device)
    result |= roofline(result)
    if data:
        result |= measure_data_pipeline(config, data_batches, repeats)
        result["data_bound"] = result["data_images_per_s"] < result["train_images_per_s"]
    result["environment"] = environment_info()
    return result
