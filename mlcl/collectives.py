"""Collective operations that are no-ops in a single process.

Methods keep state that must agree across ranks (prototypes, co-occurrence counts, per-image label
estimates). They update it with these helpers, so the same code runs on one CPU, one GPU or under
``torchrun`` without knowing which.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over ranks in place and return it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= world_size()
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0 (equal shapes on every rank)."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, rank after rank, where the ranks may
    hold different numbers of rows (a split's last batches); the other dimensions must agree.

    The result is on ``tensor``'s device. NCCL gathers only CUDA tensors, so under it a CPU
    tensor travels through the process's current GPU (evaluation keeps float64 scores on the
    CPU)."""
    if not is_distributed():
        return tensor
    home = tensor.device
    if dist.get_backend() == "nccl" and home.type != "cuda":
        tensor = tensor.to(torch.device("cuda", torch.cuda.current_device()))
    rows = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = all_gather_cat(rows).tolist()
    # all_gather needs one shape on every rank: pad to the longest share, then cut the padding.
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = all_gather_cat(padded).split(max(counts))
    return torch.cat([part[:count] for part, count in zip(parts, counts)]).to(home)
