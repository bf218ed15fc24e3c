"""What the contrastive losses compute under DDP, with two processes (gloo, CPU).

MulCon's loss, SSCL and PSCL contrast the label-level features of a batch with each other (and
with a detached memory bank or prototypes). No method gathers those features across processes:
each process contrasts its own ``data.batch_size`` images, as SADCL's public code does (its
memory holds one slot per image of the per-GPU batch), and DDP averages the gradients. So two
processes train with the gradient of the *mean of the per-process losses*, not of one loss over
the global batch, and no gradient has to flow through a gather (lightly's ``GatherLayer``). The
test pins both halves of that statement: if a method began to gather features without their
gradient, or with it, the first or the second assertion would fail.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mlcl.losses import multilabel_supcon_loss, pscl_loss, sscl_loss

BATCH, CLASSES, DIM = 8, 4, 6


def _problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs ``[B, C, D]``, labels, a detached memory bank ``[B, C, D]`` and prototypes."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(BATCH, CLASSES, DIM, generator=generator)
    labels = (torch.rand(BATCH, CLASSES, generator=generator) < 0.5).float()
    labels[:, 0] = 1.0  # every half of the batch has positive pairs
    memory = torch.randn(BATCH, CLASSES, DIM, generator=generator)
    prototypes = torch.randn(CLASSES, DIM, generator=generator)
    return inputs, labels, memory, prototypes


def _head() -> nn.Linear:
    torch.manual_seed(1)
    return nn.Linear(DIM, DIM)


def _losses(
    head: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, memory: torch.Tensor, prototypes
) -> torch.Tensor:
    features = head(inputs)  # [b, C, D]
    views = torch.stack([features, memory], dim=1)  # SSCL: the batch and its memory slots
    return (
        multilabel_supcon_loss(features, labels)
        + sscl_loss(views, labels)
        + pscl_loss(features, prototypes, labels)
    )


def _worker(rank: int, port: int, out_file: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        inputs, labels, memory, prototypes = _problem()
        half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
        model = DistributedDataParallel(_head())
        _losses(model, inputs[half], labels[half], memory[half], prototypes).backward()
        if rank == 0:
            torch.save(model.module.weight.grad, out_file)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_contrast_their_own_halves(tmp_path):
    out_file = tmp_path / "grad.pt"
    mp.spawn(_worker, args=(_free_port(), str(out_file)), nprocs=2, join=True)
    two_processes = torch.load(out_file, weights_only=True)

    inputs, labels, memory, prototypes = _problem()
    per_half = _head()
    for half in (slice(0, BATCH // 2), slice(BATCH // 2, BATCH)):
        (_losses(per_half, inputs[half], labels[half], memory[half], prototypes) / 2).backward()
    global_batch = _head()
    _losses(global_batch, inputs, labels, memory, prototypes).backward()

    torch.testing.assert_close(two_processes, per_half.weight.grad, rtol=1e-5, atol=1e-6)
    # The global batch's loss has other pairs (across the halves): a different gradient.
    assert not torch.allclose(two_processes, global_batch.weight.grad, rtol=1e-3, atol=1e-4)
