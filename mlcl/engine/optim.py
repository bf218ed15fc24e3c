"""Optimisers, learning-rate schedules and mixed precision.

One AdamW per method phase, over the parameter groups the method gives (a group may carry its own
``"lr"``; the schedule scales every group alike). Schedules advance once per iteration.
"""

from __future__ import annotations

import functools
import math

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from mlcl.config import Config
from mlcl.errors import ConfigError
from mlcl.methods import Method


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
    ``total_steps`` iterations."""
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
    factor = functools.partial(
        lr_factor,
        schedule=optim.schedule,
        warmup_steps=round(optim.warmup_epochs * steps_per_epoch),
        total_steps=total_steps,
        step_size=max(1, round(optim.step_epochs * steps_per_epoch)),
        gamma=optim.step_gamma,
    )
    return LambdaLR(optimizer, factor)


def lr_factor(
    step: int, schedule: str, warmup_steps: int, total_steps: int, step_size: int, gamma: float
) -> float:
    """Multiplier of the base learning rate at iteration ``step`` (counted from 0): a linear
    warm-up, then constant, cosine to zero, or step decay."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if schedule == "step":
        return gamma ** ((step - warmup_steps) // step_size)
    raise ConfigError(f"optim.schedule: unknown schedule {schedule!r}")


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``run.amp`` asks for on ``device`` (None: full precision)."""
    if amp == "off":
        return None
    if amp == "auto":
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
