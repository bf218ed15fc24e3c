"""`mlcl bench`: the measurements are made and are consistent with each other."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import mlcl.tools.bench as bench_module
from mlcl.cli import main
from mlcl.config import load_config
from mlcl.engine.optim import cpu_bf16_is_faster
from mlcl.methods import build_method
from mlcl.tools.bench import (
    SavedActivations,
    benchmark,
    optimizer_bytes,
    parameter_bytes,
    summary,
    synthetic_batch,
)

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
    # run.amp: auto trains in bf16 on a CPU where it is native and measured faster, else in
    # float32, and the MFU is taken against the measured matmul rate of that same precision.
    expected = "bfloat16" if cpu_bf16_is_faster() else "float32"
    assert result["precision"] == result["matmul_dtype"] == expected


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
    assert result["matmul_kernel"] in {"matmul", "conv1x1", "conv3x3"}


def test_the_reference_rate_is_the_fastest_of_the_dense_kernels(monkeypatch):
    # The kernels are timed in the order matmul, 1x1 convolution, 3x3 convolution: pretend the
    # last takes a tenth of the time of the others.
    seconds = iter([1.0, 1.0, 0.1])

    def fake_seconds(run, device):
        return next(seconds)

    monkeypatch.setattr(bench_module, "_median_seconds", fake_seconds)
    rate, kernel = bench_module.measure_matmul_tflops(torch.device("cpu"), torch.float32, size=64)
    assert kernel == "conv3x3"
    assert rate == pytest.approx(2 * 8 * 32 * 32 * 16**2 * 9 / 0.1 / 1e12)


def test_saved_activations_counted_once_per_storage():
    """Linear + ReLU, then y * y: the Linear saves its input x (8 x 16 float32: 512 bytes); the
    ReLU saves its output y and the product saves y twice (8 x 4 float32: 128 bytes, once)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 4)
    x = torch.randn(8, 16)
    with SavedActivations(linear.parameters()) as saved:
        y = torch.relu(linear(x))
        (y * y).sum().backward()
    assert saved.bytes == 8 * 16 * 4 + 8 * 4 * 4


def test_saved_activations_leave_out_parameters_and_count_the_largest_view():
    """With an input that needs a gradient the Linear also saves its weight: a parameter, left
    out. A slice and the whole of one tensor share a storage: counted once, at the whole."""
    linear = torch.nn.Linear(16, 4)
    x = torch.randn(8, 16, requires_grad=True)
    with SavedActivations(linear.parameters()) as saved:
        linear(x).sum().backward()
    assert saved.bytes == 8 * 16 * 4
    with SavedActivations() as saved:
        (x[:2] * x[:2]).sum() + (x * x).sum()
    assert saved.bytes == 8 * 16 * 4


def test_parameter_and_optimizer_bytes_follow_the_formula():
    """3x (forward read, backward read, gradient write) and AdamW's 7x (+3x clipping), over
    the trainable parameters in their own dtypes."""
    model = torch.nn.Sequential(torch.nn.Linear(10, 5), torch.nn.Linear(5, 2).half())
    model[0].bias.requires_grad_(False)
    trainable = 10 * 5 * 4 + (5 * 2 + 2) * 2
    assert parameter_bytes(model.parameters()) == 3 * trainable
    assert optimizer_bytes(model.parameters()) == 7 * trainable
    assert optimizer_bytes(model.parameters(), grad_clip=True) == 10 * trainable


def test_reports_bytes_bandwidth_and_bound(result):
    parts = ["activation_bytes_per_step", "parameter_bytes_per_step", "optimizer_bytes_per_step"]
    for key in [*parts, "bytes_per_step", "bytes_per_image", "memory_gbps_measured"]:
        assert result[key] > 0, key
    assert result["bytes_per_step"] == sum(result[key] for key in parts)
    assert result["bytes_per_image"] == pytest.approx(result["bytes_per_step"] / 4)
    # baseline-quick has one phase and one AdamW: the optimiser moves 7/3 (or 10/3 with
    # clipping) of the parameters' forward-and-backward traffic.
    ratio = result["optimizer_bytes_per_step"] / result["parameter_bytes_per_step"]
    assert ratio in (pytest.approx(7 / 3), pytest.approx(10 / 3))
    assert result["achieved_gbps"] == pytest.approx(
        result["bytes_per_step"] / (result["train_step_ms"] / 1e3) / 1e9
    )
    assert result["bandwidth_utilisation"] == pytest.approx(
        result["achieved_gbps"] / result["memory_gbps_measured"]
    )
    flops_per_step = result["model_flops_per_image"] * 4
    assert result["flops_per_byte"] == pytest.approx(flops_per_step / result["bytes_per_step"])
    ridge = result["matmul_tflops_measured"] * 1e3 / result["memory_gbps_measured"]
    assert result["ridge_flops_per_byte"] == pytest.approx(ridge)
    assert result["bound"] == ("memory" if result["flops_per_byte"] < ridge else "compute")
    assert result["bound"] in summary(result)


def test_multi_phase_methods_count_every_phase():
    """Scob steps two optimisers per iteration, sharing the backbone and encoder: its
    parameter and optimiser traffic is that of both phases' parameters, the shared ones twice."""
    overrides = [*TINY[2:], "method.dim=32", "method.num_heads=2", "method.ff_dim=32"]
    config = load_config("scob-quick", overrides)
    scob = benchmark(config, steps=1, warmup=1, repeats=1)
    # The bench plans 16 batches of training images for the label estimator.
    method = build_method(config, num_classes=scob["num_classes"], num_train_images=4 * 16)
    per_phase = [
        [p for group in method.param_groups(phase, 0.0) for p in group["params"]]
        for phase in method.phases
    ]
    assert len(per_phase) == 2
    assert scob["model_flops_per_image"] > 0  # counted through Grad-CAM's autograd.grad
    expected = sum(parameter_bytes(parameters) for parameters in per_phase)
    assert scob["parameter_bytes_per_step"] == expected
    assert expected > parameter_bytes(method.parameters())
    parts = ["activation_bytes_per_step", "parameter_bytes_per_step", "optimizer_bytes_per_step"]
    assert scob["bytes_per_step"] == sum(scob[key] for key in parts)


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
    assert f"{written['bound']}-bound" in capsys.readouterr().err  # the one-line summary
