"""Checkpoints: refused when made for another method or label set, or unreadable."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mlcl.engine import fit, load_checkpoint, load_method
from mlcl.engine.checkpoint import rng_state, set_rng_state
from mlcl.errors import CheckpointError
from tests.test_engine_toys import ToyDataset, toy_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    fit(
        toy_config(out, overrides={"run.epochs": 1}),
        train_dataset=ToyDataset(16),
        val_dataset=ToyDataset(8, seed=1),
    )
    return out


def test_resuming_another_method_is_refused(run_dir):
    config = toy_config(run_dir, method="test-two-phase")
    with pytest.raises(CheckpointError, match=r"made for method 'test-toy'.*'test-two-phase'"):
        fit(config, resume=True, train_dataset=ToyDataset(16), val_dataset=ToyDataset(8))


def test_resuming_with_another_label_set_is_refused(run_dir):
    data = {
        "train_dataset": ToyDataset(16, num_classes=3),
        "val_dataset": ToyDataset(8, num_classes=3),
    }
    with pytest.raises(CheckpointError, match="made for 5 classes, but the data set has 3"):
        fit(toy_config(run_dir), resume=True, **data)


def test_missing_or_corrupt_checkpoints_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nothing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"corrupt\.pt: not a PyTorch checkpoint \(not a zip"):
        load_checkpoint(corrupt)
    empty = tmp_path / "empty.pt"
    empty.touch()
    with pytest.raises(CheckpointError, match=r"empty\.pt: empty file"):
        load_checkpoint(empty)
    truncated = tmp_path / "truncated.pt"
    torch.save({"format": 1, "weights": torch.ones(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match=r"truncated\.pt: not a PyTorch checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an mlcl checkpoint"):
        load_checkpoint(foreign)


def test_load_method_rebuilds_the_trained_method(run_dir):
    method, checkpoint = load_method(run_dir / "checkpoint_last.pt")
    assert method.name == "test-toy" and not method.training
    for name, value in method.state_dict().items():
        torch.testing.assert_close(value, checkpoint["model"][name], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_method(run_dir / "checkpoint_last.pt", ema=True)


def test_random_states_round_trip():
    state = rng_state()
    expected = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(state)
    again = (torch.rand(3), random.random(), np.random.rand())
    torch.testing.assert_close(again[0], expected[0])
    assert again[1:] == expected[1:]


def test_a_checkpoint_holding_other_objects_is_refused_in_one_line(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"format": 1, "window": slice(0, 3)}, path)  # a slice: not for weights_only
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: holds objects other than tensors and plain containers")
    assert "\n" not in message and "weights_only" in message
