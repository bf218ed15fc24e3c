"""Optimisers, learning-rate schedules and mixed precision."""

from __future__ import annotations

import math

import pytest
import torch

from mlcl.engine import fit, read_metrics
from mlcl.engine.optim import (
    autocast_dtype,
    build_grad_scaler,
    build_optimizers,
    build_scheduler,
    lr_factor,
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


def test_lr_factor_rejects_unknown_schedules():
    with pytest.raises(ConfigError, match=r"optim\.schedule"):
        lr_factor(5, "linear", warmup_steps=0, total_steps=10, step_size=1, gamma=0.1)


def test_mixed_precision_choices():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None  # the CPU trains in float32 by default
    assert autocast_dtype("off", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match=r"run\.amp: fp16 needs a GPU"):
        autocast_dtype("fp16", cpu)
    assert build_grad_scaler(torch.bfloat16, cpu) is None
    assert build_grad_scaler(torch.float16, cpu) is not None  # float16 needs loss scaling


def test_training_in_bfloat16_on_the_cpu(tmp_path):
    config = toy_config(tmp_path, overrides={"run.amp": "bf16", "run.epochs": 1})
    fit(config, train_dataset=ToyDataset(16), val_dataset=ToyDataset(8, seed=1))
    (record,) = read_metrics(tmp_path)
    assert math.isfinite(record["train_loss"]) and 0 <= record["mAP"] <= 100
