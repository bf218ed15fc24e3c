"""The training loop: resumption, non-finite losses, several phases, early stop, the run dir."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest
import torch
from PIL import Image

import mlcl.engine.train as train_module
from mlcl.data import MultiLabelDataset
from mlcl.engine import Callback, evaluate, fit, load_checkpoint, load_method, read_metrics
from mlcl.engine.checkpoint import save_checkpoint
from mlcl.engine.optim import build_optimization
from mlcl.engine.run_dir import run_lock
from mlcl.engine.train import training_step
from mlcl.errors import ConfigError, DataError, MlclError
from mlcl.methods import build_method
from tests.test_engine_toys import ToyDataset, toy_config


def _datasets():
    return ToyDataset(size=32, image_size=16, seed=0), ToyDataset(size=16, image_size=16, seed=1)


def _fit(config, **kwargs):
    train, val = _datasets()
    return fit(config, train_dataset=train, val_dataset=val, **kwargs)


class _Killed(Exception):
    """Stands for the process being killed."""


def _kill_after_checkpoint(monkeypatch, at_step: int):
    """Make the run die right after it writes the checkpoint of iteration ``at_step``."""
    real_save = train_module.save_checkpoint

    def save_then_die(state, path):
        real_save(state, path)
        if path.name == "checkpoint_last.pt" and state["state"]["global_step"] == at_step:
            raise _Killed

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)


def _assert_same_run(dir_a, dir_b):
    a = load_checkpoint(dir_a / "checkpoint_last.pt")
    b = load_checkpoint(dir_b / "checkpoint_last.pt")
    assert a["state"] == b["state"]
    for part in ("model", "ema"):  # weights and buffers (the method's state)
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            torch.testing.assert_close(a[part][name], b[part][name], rtol=0, atol=0, msg=name)
    steps_a = [s["step"] for s in a["optimizers"]["main"]["state"].values()]
    steps_b = [s["step"] for s in b["optimizers"]["main"]["state"].values()]
    assert steps_a == steps_b


# Dropout, shuffling and EMA: every source of state and randomness the resume must restore.
RESUME = {"run.epochs": 3, "run.ema": 0.9, "method.dropout": 0.3}


def test_resumed_run_ends_with_exactly_the_weights_of_an_uninterrupted_one(tmp_path, monkeypatch):
    _fit(toy_config(tmp_path / "whole", overrides=RESUME))

    config = toy_config(tmp_path / "resumed", overrides=RESUME)
    _kill_after_checkpoint(monkeypatch, at_step=4)  # end of epoch 1 of 3 (4 steps per epoch)
    with pytest.raises(_Killed):
        _fit(config)
    monkeypatch.undo()
    _fit(config, resume=True)

    _assert_same_run(tmp_path / "whole", tmp_path / "resumed")
    whole = read_metrics(tmp_path / "whole")
    resumed = read_metrics(tmp_path / "resumed")
    assert [r["epoch"] for r in resumed] == [0, 1, 2]  # no line lost or repeated
    assert [r["mAP"] for r in resumed] == [r["mAP"] for r in whole]


def test_resume_from_a_mid_epoch_checkpoint_is_exact_too(tmp_path, monkeypatch):
    overrides = RESUME | {"run.checkpoint_every": 3}
    _fit(toy_config(tmp_path / "whole", overrides=overrides))

    config = toy_config(tmp_path / "resumed", overrides=overrides)
    _kill_after_checkpoint(monkeypatch, at_step=6)  # half-way through epoch 2
    with pytest.raises(_Killed):
        _fit(config)
    assert (
        load_checkpoint(tmp_path / "resumed" / "checkpoint_last.pt")["state"]["step_in_epoch"] == 2
    )
    monkeypatch.undo()
    _fit(config, resume=True)
    _assert_same_run(tmp_path / "whole", tmp_path / "resumed")


def test_a_non_finite_loss_skips_the_step(tmp_path):
    _fit(toy_config(tmp_path, overrides={"run.epochs": 1, "method.nan_steps": [2]}))
    checkpoint = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert checkpoint["state"]["global_step"] == 4
    # 4 iterations, 1 skipped: AdamW took 3 steps.
    steps = {float(s["step"]) for s in checkpoint["optimizers"]["main"]["state"].values()}
    assert steps == {3.0}


def test_non_finite_losses_in_a_row_stop_the_run_and_keep_the_last_checkpoint(tmp_path, capsys):
    config = toy_config(tmp_path, overrides={"method.nan_steps": [6, 7, 8], "run.max_bad_steps": 2})
    with pytest.raises(MlclError, match=r"step 7: the loss was not finite in 2 iterations"):
        _fit(config)
    assert "step 6: the loss of phase 'main' is nan" in capsys.readouterr().out
    checkpoint = load_checkpoint(tmp_path / "checkpoint_last.pt")  # still readable
    assert checkpoint["state"]["epoch"] == 1 and checkpoint["state"]["global_step"] == 4
    assert all(
        torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point()
    )


def test_a_two_phase_method_steps_both_optimisers(tmp_path):
    config = toy_config(tmp_path, method="test-two-phase", overrides={"run.epochs": 1})
    train, val = _datasets()
    torch.manual_seed(config.run.seed)
    summary = fit(config, train_dataset=train, val_dataset=val)
    checkpoint = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert set(checkpoint["optimizers"]) == {"classify", "align"}
    for phase in ("classify", "align"):
        steps = {float(s["step"]) for s in checkpoint["optimizers"][phase]["state"].values()}
        assert steps == {4.0}, phase
    (record,) = read_metrics(tmp_path)
    assert {"train_classify_loss", "train_classify_bce", "train_align_spread"} <= record.keys()
    assert {"classify_lr", "align_lr"} <= record.keys()
    assert summary["steps"] == 4


def test_run_directory_files(tmp_path):
    summary = _fit(toy_config(tmp_path, overrides={"run.ema": 0.5}))
    assert {p.name for p in tmp_path.iterdir()} == {
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "checkpoint_last.pt",
        "checkpoint_best.pt",
    }
    records = read_metrics(tmp_path)
    assert [r["epoch"] for r in records] == [0, 1]
    for key in (
        "step",
        "lr",
        "train_loss",
        "train_bce",
        "mAP",
        "ema_mAP",
        "mean_logit",
        "train_time_s",
        "eval_time_s",
        "images_per_s",
    ):
        assert key in records[0], key
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["best_map"] == pytest.approx(max(r["mAP"] for r in records))
    assert on_disk["best_ema_map"] == pytest.approx(max(r["ema_mAP"] for r in records))
    assert on_disk["versions"]["torch"] == torch.__version__
    assert summary["config_hash"] == on_disk["config_hash"]
    assert summary["train_images_per_s"] > 0


def test_callbacks_watch_every_epoch_and_leave_the_run_as_it_was(tmp_path):
    class Watcher(Callback):
        def __init__(self):
            self.events = []

        def on_epoch_start(self, method, epoch):
            self.events.append(("start", epoch, method.training))

        def on_epoch_end(self, method, epoch, record):
            self.events.append(("end", epoch, record["mAP"]))

    watcher = Watcher()
    ema = {"run.ema": 0.5}  # _assert_same_run compares the EMA weights too
    watched = _fit(toy_config(tmp_path / "watched", overrides=ema), callbacks=[watcher])
    plain = _fit(toy_config(tmp_path / "plain", overrides=ema))
    records = read_metrics(tmp_path / "watched")
    assert watcher.events == [
        ("start", 0, True),
        ("end", 0, records[0]["mAP"]),
        ("start", 1, True),
        ("end", 1, records[1]["mAP"]),
    ]
    assert watched["best_map"] == plain["best_map"]
    _assert_same_run(tmp_path / "watched", tmp_path / "plain")


def test_best_checkpoint_reproduces_the_best_map(tmp_path):
    summary = _fit(toy_config(tmp_path, overrides={"run.epochs": 3}))
    method, checkpoint = load_method(tmp_path / "checkpoint_best.pt")
    assert checkpoint["state"]["epoch"] == summary["best_epoch"] + 1
    metrics = evaluate(method, _datasets()[1], batch_size=5)
    assert metrics["mAP"] == pytest.approx(summary["best_map"], abs=1e-9)


def test_early_stop(tmp_path):
    # With a zero learning rate nothing improves after the first epoch.
    summary = _fit(
        toy_config(tmp_path, overrides={"run.epochs": 6, "run.early_stop": 2, "optim.lr": 0.0})
    )
    assert summary["stopped"] == "early_stop"
    assert summary["epochs"] == 3 and summary["best_epoch"] == 0


def test_max_steps_stops_mid_epoch(tmp_path):
    summary = _fit(toy_config(tmp_path, overrides={"run.epochs": 5, "run.max_steps": 6}))
    assert summary["stopped"] == "max_steps" and summary["steps"] == 6
    assert [r["step"] for r in read_metrics(tmp_path)] == [4, 6]


def test_an_interrupted_write_leaves_the_old_checkpoint(tmp_path):
    path = tmp_path / "checkpoint_last.pt"
    save_checkpoint({"format": 1, "weights": torch.ones(3)}, path)
    with pytest.raises(Exception, match="pickle"):  # fails half-way through writing
        save_checkpoint({"format": 1, "weights": torch.zeros(3), "bad": lambda: 0}, path)
    torch.testing.assert_close(load_checkpoint(path)["weights"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pt"]  # no temporary left


def test_the_compile_mode_reaches_torch_compile(tmp_path, monkeypatch):
    """Recorded, not compiled: compiling on the CPU would take minutes."""
    modes = []

    def record_mode(function, *args, mode=None, **kwargs):
        modes.append(mode)
        return function  # the method runs uncompiled

    monkeypatch.setattr(torch, "compile", record_mode)
    overrides = {"run.epochs": 1, "run.compile": True, "run.compile_mode": "reduce-overhead"}
    summary = _fit(toy_config(tmp_path, overrides=overrides))
    assert modes == ["reduce-overhead"]
    assert summary["steps"] == 4


def test_a_compile_mode_without_compile_is_an_error(tmp_path):
    config = toy_config(tmp_path, overrides={"run.compile_mode": "max-autotune"})
    with pytest.raises(ConfigError, match=r"run\.compile_mode: max-autotune needs run\.compile"):
        _fit(config)


def test_a_second_run_into_the_same_directory_is_refused(tmp_path):
    with run_lock(tmp_path):  # the first run, still going
        with pytest.raises(MlclError, match=r"another run is writing into this directory \(pid"):
            _fit(toy_config(tmp_path, overrides={"run.epochs": 1}))
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    _fit(toy_config(tmp_path, overrides={"run.epochs": 1}))  # the first one has ended
    assert not (tmp_path / "run.lock").exists()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    finished = subprocess.Popen(["true"])
    finished.wait()  # its pid no longer runs: a run killed on this host
    lock = {"pid": finished.pid, "host": socket.gethostname()}
    (tmp_path / "run.lock").write_text(json.dumps(lock))
    (tmp_path / ".checkpoint_last.pt.abc.tmp").write_bytes(b"half a checkpoint")
    _fit(toy_config(tmp_path, overrides={"run.epochs": 1}))
    assert not (tmp_path / "run.lock").exists()
    assert not list(tmp_path.glob(".checkpoint_*.tmp"))  # the killed write's leftovers


def test_a_lock_from_another_host_is_refused(tmp_path):
    (tmp_path / "run.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(MlclError, match=r"a run on host elsewhere \(pid 1\) holds .*delete"):
        _fit(toy_config(tmp_path, overrides={"run.epochs": 1}))


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    with pytest.raises(ConfigError):
        _fit(toy_config(tmp_path, overrides={"run.compile_mode": "max-autotune"}))
    assert not (tmp_path / "run.lock").exists()


def _image_folder(tmp_path, size: int, broken: int):
    """``size`` 16 px images of a MultiLabelDataset on disk, image ``broken`` not an image."""
    toy = ToyDataset(size=size, image_size=16, seed=0)
    paths = []
    for index in range(size):
        path = tmp_path / "images" / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (index * 7, 0, 0)).save(path)
        paths.append(path)
    paths[broken].write_bytes(b"\x89PNG, cut short")
    return MultiLabelDataset(paths, toy.full_labels, toy.class_names)


def test_an_undecodable_image_ends_the_run_by_default(tmp_path):
    train = _image_folder(tmp_path, size=16, broken=5)
    config = toy_config(tmp_path / "run", overrides={"run.epochs": 1})
    with pytest.raises(DataError, match=r"5\.png: "):
        fit(config, train_dataset=train, val_dataset=ToyDataset(8, image_size=16))


def test_skip_leaves_an_undecodable_image_out_and_names_it(tmp_path, capsys):
    train = _image_folder(tmp_path, size=16, broken=5)
    overrides = {"run.epochs": 2, "data.bad_images": "skip"}
    config = toy_config(tmp_path / "run", overrides=overrides)
    summary = fit(config, train_dataset=train, val_dataset=ToyDataset(8, image_size=16))
    broken = str(train.image_paths[5])
    assert summary["bad_images"] == [broken, broken]  # met once in each epoch
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["bad_images"] == [
        broken,
        broken,
    ]
    assert f"skipped {broken}: " in capsys.readouterr().out
    # Each epoch: 2 batches of 8, one of them 7 images.
    assert [r["images"] for r in read_metrics(tmp_path / "run")] == [15, 15]


def test_skip_with_a_batch_of_only_bad_images_is_an_error(tmp_path):
    train = _image_folder(tmp_path, size=8, broken=0)
    for path in train.image_paths:
        path.write_bytes(b"not an image")
    config = toy_config(tmp_path / "run", overrides={"data.bad_images": "skip"})
    with pytest.raises(DataError, match=r"no image of a batch of 8 could be decoded"):
        fit(config, train_dataset=train, val_dataset=ToyDataset(8, image_size=16))


def test_training_step_steps_on_a_finite_loss_and_skips_a_non_finite_one():
    """``training_step`` alone, without ``fit``: the toy's second forward has a NaN loss."""
    config = toy_config("unused", overrides={"method.nan_steps": [2], "optim.schedule": "constant"})
    method = build_method(config, num_classes=5, num_train_images=8)
    optimization = build_optimization(method, config, torch.device("cpu"), steps_per_epoch=4)
    batch = next(iter(torch.utils.data.DataLoader(ToyDataset(8), batch_size=8)))
    optimizer, scheduler = optimization.optimizers["main"], optimization.schedulers["main"]
    before = {name: p.detach().clone() for name, p in method.named_parameters()}

    terms = training_step(method, batch, optimization)
    assert set(terms) == {"loss", "bce"} and torch.isfinite(terms["loss"])
    assert {int(s["step"]) for s in optimizer.state.values()} == {1}  # AdamW stepped
    assert scheduler.last_epoch == 1
    assert all(not torch.equal(p, before[name]) for name, p in method.named_parameters())
    after = {name: p.detach().clone() for name, p in method.state_dict().items()}

    assert training_step(method, batch, optimization, step=2) is None  # NaN: skipped
    assert {int(s["step"]) for s in optimizer.state.values()} == {1}
    assert scheduler.last_epoch == 1
    for name, value in method.state_dict().items():  # weights and after_step's buffers alike
        if name != "forward_calls":
            torch.testing.assert_close(value, after[name], rtol=0, atol=0, msg=name)
