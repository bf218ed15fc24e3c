"""Calibrated thresholds: the holdout split, the best-F1 cut per class, stored and reported."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mlcl.cli import main
from mlcl.config import load_config
from mlcl.engine import load_checkpoint
from mlcl.engine.calibrate import best_f1_thresholds, calibrate_thresholds
from mlcl.engine.loaders import build_split
from mlcl.errors import ConfigError, UsageError


def test_best_f1_threshold_separates_a_class_it_can():
    probabilities = torch.tensor([[0.9, 0.2], [0.7, 0.1], [0.3, 0.4], [0.1, 0.3]])
    targets = torch.tensor([[1, 0], [1, 0], [0, 0], [0, 0]], dtype=torch.bool)
    thresholds = best_f1_thresholds(probabilities, targets)
    assert thresholds[0] == pytest.approx(0.5)  # halfway between 0.7 and 0.3
    assert thresholds[1] == 0.5  # no positive: left at 0.5
    wide = torch.tensor([[0.9], [0.8], [0.6], [0.2]])
    truth = torch.tensor([[1], [0], [1], [0]], dtype=torch.bool)
    assert best_f1_thresholds(wide, truth)[0] == pytest.approx(0.4)  # F1 0.8 keeping three


def test_holdout_split_is_a_fixed_part_of_training(synthetic_root):
    config = load_config("baseline-quick", {"data.holdout": 0.25, "data.image_size": 32})
    train = build_split(config, "train", str(synthetic_root))
    holdout = build_split(config, "holdout", str(synthetic_root))
    assert len(holdout) == 16 and len(train) == 48
    assert not set(holdout.image_paths) & set(train.image_paths)
    again = build_split(with_seed(config, 7), "holdout", str(synthetic_root))
    assert again.image_paths == holdout.image_paths  # whatever the run's seed
    with pytest.raises(ConfigError, match="no 'holdout' split"):
        build_split(load_config("baseline-quick"), "holdout", str(synthetic_root))


def with_seed(config, seed):
    config.run.seed = seed
    return config


def test_calibrate_stores_thresholds_that_evaluate_reports(tiny_checkpoint, tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    shutil.copyfile(tiny_checkpoint("baseline-quick", **{"data.holdout": 0.25}), path)
    with pytest.raises(UsageError, match="not calibrated on 'val'"):
        calibrate_thresholds(path, split="val")
    with pytest.raises(ConfigError, match="differs from the training's"):
        calibrate_thresholds(path, overrides=["data.holdout=0.5"])
    out = tmp_path / "metrics.json"
    args = ["evaluate", "--checkpoint", str(path), "--calibrate", "--out", str(out)]
    assert main([*args, "--set", "run.progress=false"]) == 0
    stored = load_checkpoint(path)["thresholds"]["model"]
    assert stored["split"] == "holdout" and stored["num_images"] == 4
    assert (
        stored["values"].shape == (24,) and ((stored["values"] > 0) & (stored["values"] < 1)).all()
    )
    metrics = json.loads(out.read_text())
    assert {"CF1@cal", "OF1@cal", "CF1", "OF1"} <= set(metrics)
    assert "cal" in capsys.readouterr().out
