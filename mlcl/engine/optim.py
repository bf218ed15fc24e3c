"""Optimisers, learning-rate schedules and mixed precision.

One AdamW per method phase, over the parameter groups the method gives (a group may carry its own
``"lr"``; the schedule scales every group alike). Schedules advance once per iteration.
:class:`Optimization` holds them with the float16 gradient scaler and takes a phase's step.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    OneCycleLR,
    SequentialLR,
    StepLR,
)

from mlcl.config import Config, RunConfig
from mlcl.errors import ConfigError
from mlcl.methods import Method


@dataclass
class Optimization:
    """What updates the weights: one optimiser and one learning-rate schedule per phase, the
    float16 gradient scaler they share, and the settings the schedules were planned with (a
    resumed run must keep them)."""

    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, LRScheduler]
    scaler: torch.amp.GradScaler | None = None
    grad_clip: float = 0.0  # max gradient norm, per phase; 0 = off
    schedule: dict[str, Any] = field(default_factory=dict)

    def step(self, phase: str, loss: torch.Tensor) -> None:
        """Backward of ``loss`` (scaled in float16), the gradient norm clipped, and a step of
        the phase's optimiser."""
        optimizer, scaler = self.optimizers[phase], self.scaler
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        if self.grad_clip > 0:
            if scaler:
                scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(stepped_parameters(optimizer), self.grad_clip)
        if scaler:
            scaler.step(optimizer)
        else:
            optimizer.step()

    def step_schedules(self) -> None:
        for scheduler in self.schedulers.values():
            scheduler.step()

    def learning_rates(self) -> dict[str, float]:
        """The current learning rate of each phase's first parameter group: ``lr``, or
        ``<phase>_lr`` with several phases."""
        if len(self.optimizers) == 1:
            (optimizer,) = self.optimizers.values()
            return {"lr": optimizer.param_groups[0]["lr"]}
        return {f"{phase}_lr": opt.param_groups[0]["lr"] for phase, opt in self.optimizers.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizers": {phase: opt.state_dict() for phase, opt in self.optimizers.items()},
            "schedulers": {phase: sch.state_dict() for phase, sch in self.schedulers.items()},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "schedule": self.schedule,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``'s (the caller checks ``schedule`` first)."""
        for phase, optimizer in self.optimizers.items():
            load_scheduler_state(self.schedulers[phase], state["schedulers"][phase])
            optimizer.load_state_dict(state["optimizers"][phase])  # the learning rates too
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])


def stepped_parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every parameter ``optimizer`` steps."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def build_optimization(
    method: Method,
    config: Config,
    device: torch.device,
    steps_per_epoch: int,
    amp_dtype: torch.dtype | None = None,
) -> Optimization:
    """The optimisers, schedules and scaler of ``config`` for ``method``, the schedules planned
    for ``steps_per_epoch`` iterations per epoch."""
    optimizers = build_optimizers(method, config, device)
    total_steps = planned_steps(config.run, steps_per_epoch)
    return Optimization(
        optimizers=optimizers,
        schedulers={
            phase: build_scheduler(optimizer, config, steps_per_epoch, total_steps)
            for phase, optimizer in optimizers.items()
        },
        scaler=build_grad_scaler(amp_dtype, device),
        grad_clip=config.optim.grad_clip,
        schedule={
            "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps,
            **{f"optim.{name}": value for name, value in config.to_dict()["optim"].items()},
        },
    )


def planned_steps(run: RunConfig, steps_per_epoch: int) -> int:
    """The iterations a run takes: all its epochs', or ``run.max_steps`` if fewer."""
    total_steps = steps_per_epoch * run.epochs
    return min(total_steps, run.max_steps) if run.max_steps else total_steps


def build_optimizers(
    method: Method, config: Config, device: torch.device
) -> dict[str, torch.optim.Optimizer]:
    """``{phase: AdamW}`` over ``method.param_groups(phase, weight_decay)``."""
    optim = config.optim
    optimizers = {}
    for phase in method.phases:
        groups = method.param_groups(phase, optim.weight_decay)
        if not any(group["params"] for group in groups):
            raise ConfigError(f"model.method: phase {phase!r} has no trainable parameters")
        optimizers[phase] = torch.optim.AdamW(
            groups,
            lr=optim.lr,
            betas=optim.betas,
            weight_decay=optim.weight_decay,
            fused=device.type == "cuda",  # one kernel for the whole update
        )
    return optimizers


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: Config, steps_per_epoch: int, total_steps: int
) -> LRScheduler:
    """The schedule of ``config.optim.schedule``, stepped once per iteration for
    ``total_steps`` iterations.

    ``cosine``, ``constant`` and ``step`` start with a linear warm-up of ``optim.warmup_epochs``:
    over its W iterations the factor of the base rate grows as 1/W, 2/W, ..., 1; then it stays
    at 1 (``constant``), falls along a half cosine to 0 at ``total_steps`` (``cosine``), or is
    multiplied by ``optim.step_gamma`` every ``optim.step_epochs`` (``step``).
    """
    optim = config.optim
    if optim.schedule == "onecycle":
        # As in the ASL / Query2Label training scripts: torch's OneCycleLR with its defaults
        # (cosine annealing, start at max_lr / 25, momentum cycled between 0.85 and 0.95).
        # torch's OneCycleLR divides by zero when the warm-up spans exactly one step: very
        # short runs (tests, smoke runs) follow the start of a cycle of at least 2 / pct_start.
        shortest = math.ceil(2 / optim.pct_start) if optim.pct_start > 0 else 2
        return OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=max(total_steps, shortest),
            pct_start=optim.pct_start,
        )
    warmup_steps = round(optim.warmup_epochs * steps_per_epoch)
    if optim.schedule == "constant":
        return _linear_warmup(optimizer, warmup_steps)  # which then holds the factor 1
    if optim.schedule == "cosine":
        decay: LRScheduler = CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    elif optim.schedule == "step":
        step_size = max(1, round(optim.step_epochs * steps_per_epoch))
        decay = StepLR(optimizer, step_size=step_size, gamma=optim.step_gamma)
    else:
        raise ConfigError(f"optim.schedule: unknown schedule {optim.schedule!r}")
    if not warmup_steps:
        return decay
    warmup = _linear_warmup(optimizer, warmup_steps)
    return SequentialLR(optimizer, [warmup, decay], milestones=[warmup_steps])


def _linear_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int) -> LinearLR:
    """Factors (step + 1) / W at steps 0 .. W - 1 of a warm-up of W steps, then 1 for good
    (with W = 0: 1 from the start)."""
    return LinearLR(
        optimizer,
        start_factor=1 / warmup_steps if warmup_steps else 1.0,
        total_iters=max(warmup_steps - 1, 0),
    )


def load_scheduler_state(scheduler: LRScheduler, state: dict[str, Any]) -> None:
    """Continue ``scheduler`` from ``state``, also from a checkpoint of mlcl before the
    schedules were torch's own (a ``LambdaLR`` of mlcl's formula, with ``lr_lambdas``): its
    iterations are replayed. Load the optimiser's state after it: it restores the learning
    rates the checkpoint was written with."""
    if "lr_lambdas" not in state:
        scheduler.load_state_dict(state)
        return
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": on purpose
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(state["last_epoch"]):
            scheduler.step()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively: AVX512-BF16 (Intel since Cooper Lake, AMD since
    Zen 4) or AMX tiles (Intel Xeon since Sapphire Rapids).

    There bf16 autocast trains every ``-quick`` preset faster than float32, and its final mAP
    stays within the seed-to-seed spread, as on a GPU (baseline-quick alone lost 0.7-0.8 mAP over
    two seeds, a little more than its spread): with AMX, where oneDNN's bf16 products run 8x the
    float32 rate, whole trainings ran 1.2-1.7x faster
    (``benchmarks/results/precision/cpu_bf16_amx.md``); with AVX512-BF16 alone (AMD Zen 4)
    1.15-1.5x (``cpu_bf16_avx512bf16.md``). Elsewhere bf16 is emulated, and on an AVX2 CPU it
    trained baseline-quick 10x slower (``cpu_bf16_avx2.md``). ``run.amp: auto`` asks
    :func:`cpu_bf16_is_faster`, which also measures."""
    # Private helpers of torch (what its compiler checks); where one is absent, the answer is no.
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


@functools.cache
def cpu_bf16_is_faster() -> bool:
    """Whether ``run.amp: auto`` trains in bf16 on this CPU: it multiplies bf16 natively
    (:func:`cpu_has_native_bf16`) and bf16 autocast runs a small product and convolution faster
    than float32 here (:func:`cpu_bf16_speedup`). Measured once per process.

    The flags alone are not enough. oneDNN, which runs these products, decides for itself which
    instructions to use, and where it does not use the bf16 ones (a virtual machine that hides
    them from it, ``ONEDNN_MAX_CPU_ISA`` set lower) bf16 is emulated. On an AVX512-BF16 CPU capped
    at AVX512 the probe measured bf16 at 0.62x float32's speed and baseline-quick's step at 0.46x;
    capped at AVX2, 0.01x and 0.09x (``benchmarks/results/precision/bf16_probe.md``)."""
    return cpu_has_native_bf16() and cpu_bf16_speedup() > 1.0


def cpu_bf16_speedup(repeats: int = 3) -> float:
    """float32 time over bf16-autocast time, on the CPU with torch's threads, of a 256x512 by
    512x512 product and a 3x3 convolution of 8x64x32x32 (the best of ``repeats`` after one
    warm-up, which compiles oneDNN's kernels): about 0.1 s, up to 2 s where bf16 is emulated."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(256, 512, generator=generator)
    b = torch.randn(512, 512, generator=generator)
    images = torch.randn(8, 64, 32, 32, generator=generator)
    kernels = torch.randn(64, 64, 3, 3, generator=generator)

    def seconds(bf16: bool) -> float:
        best = math.inf
        for attempt in range(repeats + 1):
            start = time.perf_counter()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                a @ b
                F.conv2d(images, kernels, padding=1)
            if attempt > 0:  # the first is the warm-up
                best = min(best, time.perf_counter() - start)
        return best

    return seconds(bf16=False) / seconds(bf16=True)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``run.amp`` asks for on ``device`` (None: full precision)."""
    if amp == "off":
        return None
    if amp == "auto":
        if device.type == "cpu":
            return torch.bfloat16 if cpu_bf16_is_faster() else None
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("run.amp: fp16 needs a GPU (use bf16 or off on the CPU)")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def build_grad_scaler(
    dtype: torch.dtype | None, device: torch.device
) -> torch.amp.GradScaler | None:
    """A gradient scaler for float16 (its narrow range underflows small gradients); bfloat16
    and float32 need none."""
    if dtype is torch.float16:
        return torch.amp.GradScaler(device.type)
    return None
