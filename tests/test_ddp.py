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
import torch.distributed as dist
import torch.multiprocessing as mp

from mlcl.collectives import all_gather_rows
from mlcl.engine import fit, load_checkpoint, read_metrics
from mlcl.engine.evaluate import collect_outputs, compute_metrics
from mlcl.engine.loaders import build_eval_loader
from mlcl.engine.process_group import DistributedContext
from mlcl.metrics import MultiLabelMetrics
from tests.test_engine_toys import NUM_CLASSES, ToyDataset, ToyMethod, toy_config

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


class _ToyWithBrightness(ToyMethod):
    """The toy with a second, one-dimensional per-image output, as SALGL adds its scenes: its
    rows must come back in dataset order too."""

    def inference(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return super().inference(images) | {"brightness": images.mean(dim=(1, 2, 3))}


def _evaluate_split(out_dir: str, rank: int = 0, world_size: int = 1) -> dict:
    """Per-image outputs, the metrics of the split, and ``MultiLabelMetrics`` fed each process's
    share with and without the images' indices: what one process (``world_size=1``) or every
    process of a group returns."""
    torch.manual_seed(0)  # the same weights in every process
    method = _ToyWithBrightness(toy_config(out_dir), NUM_CLASSES, num_train_images=32)
    dataset = ToyDataset(15, seed=1)
    context = DistributedContext(torch.device("cpu"), rank, world_size)
    loader = build_eval_loader(dataset, batch_size=4, workers=0, context=context)
    outputs = collect_outputs(method, loader, torch.device("cpu"))
    with_indices, without_indices = (MultiLabelMetrics(NUM_CLASSES) for _ in range(2))
    with torch.no_grad():
        for batch in loader:
            logits = method.predict(batch["image"])
            with_indices.update(logits, batch["labels"], indices=batch["index"])
            without_indices.update(logits, batch["labels"])
    return {
        "outputs": outputs,
        "metrics": compute_metrics(method, outputs, dataset),
        "with_indices": with_indices.compute(),
        "without_indices": without_indices.compute(),
    }


def _evaluation_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        torch.save(_evaluate_split(out_dir, rank, world_size), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_evaluation_over_two_processes_equals_one(tmp_path):
    mp.spawn(_evaluation_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    one = _evaluate_split(str(tmp_path))
    dataset = ToyDataset(15, seed=1)
    torch.testing.assert_close(one["outputs"]["brightness"], dataset.images.mean(dim=(1, 2, 3)))
    for rank in range(2):
        two = torch.load(tmp_path / f"rank{rank}.pt")
        assert two["outputs"].keys() == {"logits", "brightness"}
        for name, value in one["outputs"].items():
            torch.testing.assert_close(two["outputs"][name], value, msg=name)  # row i is image i
        for key in ("metrics", "with_indices"):
            expected = dict(one[key])
            assert two[key].pop("per_class_ap") == pytest.approx(expected.pop("per_class_ap"))
            assert two[key] == pytest.approx(expected), key
        assert two["with_indices"]["num_images"] == 15
        # Without indices the sampler's padded repeat (image 0 again) counts twice.
        assert two["without_indices"]["num_images"] == 16


def _gather_rows_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        rows = 3 + 2 * rank  # rank 0 holds 3 rows, rank 1 holds 5
        scores = torch.arange(rows * 2, dtype=torch.float64).reshape(rows, 2) + 100 * rank
        flags = torch.arange(rows) % 2 == rank
        gathered = {"scores": all_gather_rows(scores), "flags": all_gather_rows(flags)}
        torch.save(gathered, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gathering_rows_of_unequal_shares(tmp_path):
    mp.spawn(_gather_rows_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    expected_scores = torch.cat(
        [torch.arange(6.0).reshape(3, 2), torch.arange(10.0).reshape(5, 2) + 100]
    ).double()
    expected_flags = torch.cat([torch.arange(3) % 2 == 0, torch.arange(5) % 2 == 1])
    for rank in range(2):
        gathered = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(gathered["scores"], expected_scores)  # rank after rank
        assert gathered["flags"].dtype == torch.bool
        assert torch.equal(gathered["flags"], expected_flags)
