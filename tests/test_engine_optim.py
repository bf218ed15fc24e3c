"""Optimisers, learning-rate schedules and mixed precision."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from mlcl.engine import fit, optim, read_metrics
from mlcl.engine.optim import (
    autocast_dtype,
    build_grad_scaler,
    build_optimizers,
    build_scheduler,
    load_scheduler_state,
)
from mlcl.errors import ConfigError
from mlcl.methods import build_method, split_weight_decay
from tests.test_engine_toys import ToyDataset, toy_config


def _learning_rates(config, steps_per_epoch=10, total_steps=40):
    method = build_method(config, num_classes=3, num_train_images=10)
    optimizer = build_optimizers(method, config, torch.device("cpu"))["main"]
    scheduler = build_scheduler(optimizer, config, steps_per_epoch, total_steps)
    rates = []
    for _ in range(total_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_cosine_with_warm_up():
    config = toy_config("unused", overrides={"optim.schedule": "cosine", "optim.warmup_epochs": 1})
    rates = _learning_rates(config)
    lr = config.optim.lr
    assert rates[0] == pytest.approx(lr / 10)  # linear warm-up over 10 steps
    assert rates[9] == pytest.approx(lr)
    assert rates[10 + 15] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 15 / 30)))
    assert rates[-1] < lr * 0.01


def test_step_and_constant_schedules():
    step = toy_config("unused", overrides={"optim.schedule": "step", "optim.step_epochs": 2})
    rates = _learning_rates(step)
    assert rates[19] == pytest.approx(step.optim.lr) and rates[20] == pytest.approx(
        0.1 * step.optim.lr
    )
    constant = toy_config("unused", overrides={"optim.schedule": "constant"})
    assert set(_learning_rates(constant)) == {constant.optim.lr}


def test_onecycle_peaks_after_pct_start():
    config = toy_config("unused", overrides={"optim.pct_start": 0.25})
    rates = _learning_rates(config)
    assert max(rates) == pytest.approx(config.optim.lr)
    assert rates.index(max(rates)) == 9  # 0.25 * 40 steps
    assert rates[0] == pytest.approx(config.optim.lr / 25) and rates[-1] < rates[0]


def test_a_parameter_group_keeps_its_own_learning_rate():
    config = toy_config("unused", overrides={"optim.schedule": "constant", "optim.lr": 1e-3})
    method = build_method(config, num_classes=3, num_train_images=10)
    method.param_groups = lambda phase, weight_decay: [
        *split_weight_decay(method.net.conv.named_parameters(), weight_decay),
        *split_weight_decay(method.net.classifier.named_parameters(), weight_decay, lr=1e-2),
    ]
    optimizer = build_optimizers(method, config, torch.device("cpu"))["main"]
    assert [group["lr"] for group in optimizer.param_groups] == [1e-3, 1e-3, 1e-2, 1e-2]
    assert [group["weight_decay"] for group in optimizer.param_groups] == [1e-4, 0.0] * 2


def _formula(
    step: int, schedule: str, warmup_steps: int, total_steps: int, step_size: int, gamma: float
) -> float:
    """mlcl's own schedule formula before the schedules were torch's (a LambdaLR of it): the
    oracle the torch schedulers must follow. Multiplier of the base learning rate at iteration
    ``step`` (from 0): a linear warm-up, then constant, cosine to zero, or step decay."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return gamma ** ((step - warmup_steps) // step_size)


def _two_group_optimizer(lr: float) -> torch.optim.Optimizer:
    """Two parameter groups: the configured lr, and a group with its own ten times higher."""
    first, second = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    return torch.optim.AdamW([{"params": [first]}, {"params": [second], "lr": 10 * lr}], lr=lr)


def _run(optimizer, scheduler, steps: int) -> list[list[float]]:
    """The learning rate of every group at each of ``steps`` iterations, and after the last."""
    rates = []
    for _ in range(steps):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return [*rates, [group["lr"] for group in optimizer.param_groups]]


SPE = 7  # iterations per epoch
SCHEDULES = [
    ("cosine", {}),
    ("cosine", {"optim.warmup_epochs": 1 / 7}),  # a warm-up of one iteration
    ("cosine", {"optim.warmup_epochs": 0.5}),  # 4 iterations (3.5, rounded to even)
    ("cosine", {"optim.warmup_epochs": 6, "run.epochs": 5}),  # longer than the run
    ("cosine", {"optim.warmup_epochs": 1, "run.max_steps": 20}),
    ("constant", {}),
    ("constant", {"optim.warmup_epochs": 2}),
    ("step", {}),
    ("step", {"optim.warmup_epochs": 1, "optim.step_epochs": 0.3, "optim.step_gamma": 0.5}),
]


@pytest.mark.parametrize(("schedule", "overrides"), SCHEDULES)
def test_torch_schedules_follow_the_formula_of_before(schedule, overrides):
    config = toy_config(
        "unused", overrides={"optim.schedule": schedule, "run.epochs": 5, **overrides}
    )
    optim, run = config.optim, config.run
    total = min(SPE * run.epochs, run.max_steps) if run.max_steps else SPE * run.epochs
    optimizer = _two_group_optimizer(optim.lr)
    rates = _run(optimizer, build_scheduler(optimizer, config, SPE, total), total)
    for step, at_step in enumerate(rates):
        factor = _formula(
            step,
            schedule,
            warmup_steps=round(optim.warmup_epochs * SPE),
            total_steps=total,
            step_size=max(1, round(optim.step_epochs * SPE)),
            gamma=optim.step_gamma,
        )
        expected = [optim.lr * factor, 10 * optim.lr * factor]
        assert at_step == pytest.approx(expected, rel=1e-12, abs=1e-18), step


@pytest.mark.parametrize(("schedule", "overrides"), SCHEDULES[1::2])
def test_a_schedule_resumes_from_its_state_dict(schedule, overrides):
    config = toy_config("unused", overrides={"optim.schedule": schedule, **overrides})
    total = 4 * SPE
    optimizer = _two_group_optimizer(config.optim.lr)
    whole = _run(optimizer, build_scheduler(optimizer, config, SPE, total), total)

    first = _two_group_optimizer(config.optim.lr)
    scheduler = build_scheduler(first, config, SPE, total)
    _run(first, scheduler, 9)  # past the warm-up
    again = _two_group_optimizer(config.optim.lr)
    resumed = build_scheduler(again, config, SPE, total)
    load_scheduler_state(resumed, scheduler.state_dict())
    again.load_state_dict(first.state_dict())
    assert _run(again, resumed, total - 9) == whole[9:]  # bit for bit


def test_a_checkpoint_of_the_formula_resumes_on_the_torch_schedule():
    """Checkpoints written before the schedules were torch's hold a LambdaLR's state."""
    config = toy_config("unused", overrides={"optim.schedule": "cosine", "optim.warmup_epochs": 1})
    total = 4 * SPE
    optimizer = _two_group_optimizer(config.optim.lr)
    whole = _run(optimizer, build_scheduler(optimizer, config, SPE, total), total)

    old = _two_group_optimizer(config.optim.lr)
    formula = LambdaLR(old, lambda step: _formula(step, "cosine", SPE, total, SPE, 0.1))
    _run(old, formula, 10)
    again = _two_group_optimizer(config.optim.lr)
    resumed = build_scheduler(again, config, SPE, total)
    load_scheduler_state(resumed, formula.state_dict())
    again.load_state_dict(old.state_dict())
    continued = [lr for at_step in _run(again, resumed, total - 10) for lr in at_step]
    expected = [lr for at_step in whole[10:] for lr in at_step]
    assert continued == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_an_unknown_schedule_is_refused():
    config = toy_config("unused", overrides={"optim.schedule": "cosine"})
    config = dataclasses.replace(config, optim=dataclasses.replace(config.optim, schedule="linear"))
    with pytest.raises(ConfigError, match=r"optim\.schedule: unknown schedule 'linear'"):
        build_scheduler(_two_group_optimizer(1e-3), config, SPE, 10)


def test_mixed_precision_choices(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(optim, "cpu_bf16_is_faster", lambda: False)
    assert autocast_dtype("auto", cpu) is None  # float32 where bf16 is emulated
    monkeypatch.setattr(optim, "cpu_bf16_is_faster", lambda: True)
    assert autocast_dtype("auto", cpu) is torch.bfloat16  # where bf16 was measured faster
    assert autocast_dtype("off", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match=r"run\.amp: fp16 needs a GPU"):
        autocast_dtype("fp16", cpu)
    assert build_grad_scaler(torch.bfloat16, cpu) is None
    assert build_grad_scaler(torch.float16, cpu) is not None  # float16 needs loss scaling


def test_native_bf16_is_either_of_torchs_cpu_checks(monkeypatch):
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in checks:
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert not optim.cpu_has_native_bf16()
    for name in checks:
        monkeypatch.setattr(torch.cpu, name, lambda: True)
        assert optim.cpu_has_native_bf16(), name
        monkeypatch.setattr(torch.cpu, name, lambda: False)
    for name in checks:  # a torch without these private checks: float32, as before
        monkeypatch.delattr(torch.cpu, name)
    assert not optim.cpu_has_native_bf16()


@pytest.mark.parametrize(
    ("native", "speedup", "chosen"), [(False, 3.0, False), (True, 0.5, False), (True, 2.0, True)]
)
def test_auto_chooses_bf16_where_the_cpu_has_it_and_it_measures_faster(
    monkeypatch, native, speedup, chosen
):
    monkeypatch.setattr(optim, "cpu_has_native_bf16", lambda: native)
    probes = []
    monkeypatch.setattr(optim, "cpu_bf16_speedup", lambda: probes.append(1) or speedup)
    optim.cpu_bf16_is_faster.cache_clear()
    try:
        assert optim.cpu_bf16_is_faster() is chosen
        assert optim.cpu_bf16_is_faster() is chosen
    finally:
        optim.cpu_bf16_is_faster.cache_clear()  # the next caller measures this CPU itself
    assert len(probes) == (1 if native else 0)  # measured once, and only where bf16 is native


def test_the_bf16_probe_measures_a_ratio_of_two_timings():
    speedup = optim.cpu_bf16_speedup(repeats=1)
    assert math.isfinite(speedup) and speedup > 0


def test_training_in_bfloat16_on_the_cpu(tmp_path):
    config = toy_config(tmp_path, overrides={"run.amp": "bf16", "run.epochs": 1})
    fit(config, train_dataset=ToyDataset(16), val_dataset=ToyDataset(8, seed=1))
    (record,) = read_metrics(tmp_path)
    assert math.isfinite(record["train_loss"]) and 0 <= record["mAP"] <= 100
