"""Process set-up for one process or many under ``torchrun``.

``torchrun --nproc_per_node N -m mlcl.cli train ...`` starts N processes and tells each its place
through environment variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...).
:func:`setup_distributed` reads them, picks the process's device and joins the process group, so
the same command trains on one CPU, one GPU, several GPUs or several nodes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mlcl.errors import ConfigError


@dataclass
class DistributedContext:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    owns_process_group: bool = False  # True when this set-up started it (and must end it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → the process's GPU if there is one, else the CPU; ``cuda`` → the process's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"run.device: {name!r} is not a device (auto, cpu, cuda, cuda:N)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device: {name!r} asked for, but no GPU is visible to PyTorch")
    return device


def setup_distributed(device_name: str = "auto") -> DistributedContext:
    """Join the process group that ``torchrun`` describes (NCCL on GPUs, gloo on CPUs), or use
    the one already initialised by the caller; a single process otherwise."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(device, dist.get_rank(), dist.get_world_size())
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size == 1:
        return DistributedContext(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(device, dist.get_rank(), world_size, owns_process_group=True)


def cleanup_distributed(context: DistributedContext) -> None:
    if context.owns_process_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    if context.distributed:
        dist.barrier()
