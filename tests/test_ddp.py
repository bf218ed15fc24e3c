"""Two processes (gloo, CPU) train the same weights as one process with the same global batch.

The toy network has no BatchNorm: per-process BatchNorm statistics would differ from one
process's over the global batch (``run.sync_bn`` fixes that on GPUs; PyTorch's SyncBatchNorm has
no CPU implementation). Its method averages its per-step state over processes, and one process
alone produces a NaN loss at one iteration, which both must skip together.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from mlcl.engine import fit, load_checkpoint, read_metrics
from tests.test_engine_toys import ToyDataset, toy_config

OVERRIDES = {"run.epochs": 2, "run.ema": 0.8, "method.nan_steps": [3]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    # Half the batch per process; only process 1 produces the NaN loss.
    config = toy_config(out_dir, overrides=OVERRIDES | {"data.batch_size": 4, "method.nan_rank": 1})
    fit(config, train_dataset=ToyDataset(32), val_dataset=ToyDataset(15, seed=1))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(root / "two")), nprocs=2, join=True)
    single = toy_config(root / "one", overrides=OVERRIDES | {"data.batch_size": 8})
    fit(single, train_dataset=ToyDataset(32), val_dataset=ToyDataset(15, seed=1))
    return root / "one", root / "two"


def test_two_processes_train_the_weights_of_one(runs):
    one = load_checkpoint(runs[0] / "checkpoint_last.pt")
    two = load_checkpoint(runs[1] / "checkpoint_last.pt")
    assert one["state"] == two["state"]  # same steps, same skipped iteration
    for part in ("model", "ema"):
        for name, value in one[part].items():
            # Sums over the batch are split in two halves: equal up to rounding.
            torch.testing.assert_close(two[part][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_evaluation_gathers_every_image_once(runs):
    one, two = read_metrics(runs[0]), read_metrics(runs[1])
    for record_one, record_two in zip(one, two, strict=True):
        assert record_two["num_images"] == 15  # 15 images over 2 processes: one padded repeat
        assert record_two["mAP"] == pytest.approx(record_one["mAP"], abs=1e-4)
        assert record_two["train_loss"] == pytest.approx(record_one["train_loss"], rel=1e-5)
