"""Kill a training anywhere with SIGKILL, resume it, and end with exactly the uninterrupted run.

Each run is a real ``mlcl train`` process (the baseline, timm's tiny ``test_resnet``, the
built-in data at 32 px), killed through the engine's named kill points
(:mod:`mlcl.engine.kill_points`): after a step, in the middle of writing a checkpoint, during
evaluation and between an epoch's metrics line and its checkpoint. Every kill is a real
``SIGKILL``: no ``finally`` block runs, the run lock and a half-written temporary file stay
behind, as after a crash. After the last resume the weights (and EMA weights, optimiser steps,
counters) equal an uninterrupted run's bit for bit and ``metrics.jsonl`` holds every epoch once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mlcl.engine import load_checkpoint

EPOCHS = 3

# 4 steps per epoch, 12 in all; checkpoints after steps 3, 4 (epoch end), 6, 8 (end), 9, 12 and
# 12 (end). Each process resumes from what the one before left and is killed at (point, n-th
# arrival in that process); then the checkpoint on disk is that of the global step given.
KILLS = [
    ("checkpoint:2", 3),  # writing epoch 0's end-of-epoch checkpoint, after its metrics line
    ("eval:3", 6),  # evaluating epoch 1 (the weights done, their EMA copy not yet)
    ("epoch_end:1", 6),  # epoch 1's metrics line written, its checkpoint not yet
    ("step:4", 9),  # step 10, after the optimiser step
    ("checkpoint:2", 12),  # the last end-of-epoch checkpoint, half written
]


def _config(data_root: Path, out_dir: Path) -> dict:
    return {
        "data": {
            "dataset": "synthetic",
            "root": str(data_root),
            "image_size": 32,
            "batch_size": 4,
            "workers": 0,
        },
        "model": {"method": "baseline", "backbone": "test_resnet"},
        "optim": {"lr": 1e-2},
        "run": {
            "out_dir": str(out_dir),
            "epochs": EPOCHS,
            "device": "cpu",
            "amp": "off",
            "ema": 0.9,
            "checkpoint_every": 3,  # mid-epoch checkpoints (4 steps per epoch)
            "progress": False,
            "channels_last": False,
        },
        "method": {"dropout": 0.2},  # training then depends on the random generators too
    }


def _train(config_file: Path, kill_at: str = "", resume: bool = False) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLCL_TEST_KILL_AT": kill_at}
    command = [sys.executable, "-m", "mlcl.cli", "train", "--config", str(config_file)]
    result = subprocess.run(
        [*command, *(["--resume"] if resume else [])],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
    )
    if result.returncode not in (0, -signal.SIGKILL):
        pytest.fail(f"mlcl train failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return result.returncode


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from mlcl.data import generate

    root = tmp_path_factory.mktemp("data") / "synthetic"
    return generate(root, num_train=16, num_val=8, image_size=32, seed=0, workers=1)


def _write_config(tmp_path: Path, data_root: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(_config(data_root, tmp_path / name)))
    return path


def test_a_run_killed_anywhere_resumes_to_exactly_the_uninterrupted_weights(tmp_path, data_root):
    assert _train(_write_config(tmp_path, data_root, "whole")) == 0
    killed = _write_config(tmp_path, data_root, "killed")
    last = tmp_path / "killed" / "checkpoint_last.pt"
    for number, (kill_at, step_on_disk) in enumerate(KILLS):
        code = _train(killed, kill_at=kill_at, resume=number > 0)
        assert code == -signal.SIGKILL, f"{kill_at} was never reached"
        assert load_checkpoint(last)["state"]["global_step"] == step_on_disk, kill_at
    assert (tmp_path / "killed" / "run.lock").exists()  # a killed run cannot clean up
    assert list((tmp_path / "killed").glob(".checkpoint_last.pt.*.tmp"))  # nor its half write
    assert _train(killed, resume=True) == 0

    whole = load_checkpoint(tmp_path / "whole" / "checkpoint_last.pt")
    resumed = load_checkpoint(tmp_path / "killed" / "checkpoint_last.pt")
    assert resumed["state"] == whole["state"]
    for part in ("model", "ema"):
        for name, value in whole[part].items():
            assert torch.equal(resumed[part][name], value), f"{part}.{name}"
    assert (
        resumed["optimizers"]["main"]["state"].keys() == whole["optimizers"]["main"]["state"].keys()
    )
    for key, state in whole["optimizers"]["main"]["state"].items():
        assert torch.equal(resumed["optimizers"]["main"]["state"][key]["exp_avg"], state["exp_avg"])

    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [record["epoch"] for record in records] == list(range(EPOCHS))
    whole_records = [
        json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["mAP"] for r in records] == [r["mAP"] for r in whole_records]
    leftovers = {p.name for p in (tmp_path / "killed").iterdir()} - {
        p.name for p in (tmp_path / "whole").iterdir()
    }
    assert not leftovers  # no lock, no temporary checkpoint file
