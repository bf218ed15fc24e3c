"""`mlcl bench`: the measurements are made and are consistent with each other."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mlcl.bench import benchmark, synthetic_batch
from mlcl.cli import main
from mlcl.config import load_config
from mlcl.methods import build_method

TINY = [
    "model.backbone=resnet18",
    "data.image_size=32",
    "data.batch_size=4",
    "run.device=cpu",
    "run.progress=false",
]


@pytest.fixture(scope="module")
def result():
    config = load_config("baseline-quick", TINY)
    return benchmark(config, steps=2, warmup=1, repeats=2)


def test_reports_throughput_and_memory(result):
    assert result["train_images_per_s"] > 0
    assert len(result["train_step_ms_repeats"]) == 2
    # The median of two repeats lies between them.
    low, high = sorted(result["train_step_ms_repeats"])
    assert low <= result["train_step_ms"] <= high
    assert result["train_images_per_s"] == pytest.approx(4 / (result["train_step_ms"] / 1e3))
    assert result["peak_memory_mb"] > 0
    assert result["precision"] == "float32"  # no mixed precision on a CPU


def test_flops_cover_forward_and_backward(result):
    """A training step costs about three forwards (backward ≈ 2×): between 2× and 4×."""
    config = load_config("baseline-quick", TINY)
    method = build_method(config, num_classes=result["num_classes"], num_train_images=16)
    batch = synthetic_batch(4, 32, result["num_classes"], torch.device("cpu"), False)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        method.predict(batch["image"])
    forward_per_image = counter.get_total_flops() / 4
    assert 2 * forward_per_image < result["model_flops_per_image"] < 4 * forward_per_image
    assert result["mfu"] == pytest.approx(
        result["achieved_tflops"] / result["matmul_tflops_measured"]
    )


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    overrides = ["--set", *TINY]
    code = main(
        [
            "bench",
            "--config",
            "baseline-quick",
            *overrides,
            "--steps",
            "1",
            "--warmup",
            "1",
            "--repeats",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    written = json.loads(out.read_text())
    assert written["method"] == "baseline"
    assert written["train_images_per_s"] > 0
