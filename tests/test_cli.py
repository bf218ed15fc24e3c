"""The ``mlcl`` command: train and evaluate on a tiny built-in data set, presets, errors."""

from __future__ import annotations

import json

import pytest

from mlcl.cli import main
from mlcl.config import list_presets, load_config
from mlcl.data import ensure_synthetic
from mlcl.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synthetic"
    ensure_synthetic(root, num_train=16, num_val=8, image_size=32, seed=0)
    return root


def _data_args(root) -> list[str]:
    return [
        f"data.root={root}",
        "data.synthetic_train=16",
        "data.synthetic_val=8",
        "data.synthetic_image_size=32",
        "data.image_size=32",
        "data.batch_size=4",
        "data.workers=0",
    ]


def test_train_resume_and_evaluate(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    train = ["train", "--config", "baseline-quick", "--set", *_data_args(tiny_data)]
    train += [f"run.out_dir={run}", "run.epochs=2", "run.max_steps=3", "run.progress=false"]
    assert main(train) == 0
    assert "best mAP" in capsys.readouterr().out
    saved = load_config(run / "config.yaml")
    assert saved.run.max_steps == 3 and saved.data.image_size == 32
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["method"] == "baseline"

    assert main([*train, "--resume"]) == 0  # already done: nothing more to train
    assert "resumed from" in capsys.readouterr().out
    assert main([*train, "run.max_steps=5", "--resume"]) == 1
    assert "schedule cannot continue with changed settings" in capsys.readouterr().err

    out = tmp_path / "metrics.json"
    evaluate = ["evaluate", "--checkpoint", str(run / "checkpoint_last.pt"), "--out", str(out)]
    assert main([*evaluate, "--set", "data.workers=0", "run.progress=false"]) == 0
    printed = capsys.readouterr().out
    assert "mAP" in printed and "top-3" in printed
    metrics = json.loads(out.read_text())
    assert metrics["num_images"] == 8 and 0 <= metrics["mAP"] <= 100
    assert len(metrics["per_class_ap"]) == 24  # keyed by class name
    last_epoch = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert metrics["mAP"] == pytest.approx(last_epoch["mAP"])


def test_presets_are_listed_with_their_description(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list_presets()
    quick = next(line for line in lines if line.startswith("baseline-quick "))
    assert "built-in synthetic data" in quick


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--config", "baseline-quick", "--set", "data.imgsize=64"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mlcl: error: data.imgsize: unknown key") and err.count("\n") == 1
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err


def test_debug_shows_the_traceback():
    with pytest.raises(ConfigError):
        main(["--debug", "train", "--config", "no-such-preset"])
