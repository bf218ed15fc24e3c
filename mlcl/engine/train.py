"""Training: ``fit`` runs a whole training from a configuration, ``train_one_epoch`` one pass.

One iteration, for every phase of the method (most have one; Scob has two):

    outputs = model(batch, phase=phase)       # model = DDP(method) when distributed
    outputs["loss"].backward()                # scaled when training in float16
    clip the gradient norm; step the phase's optimiser

then the learning-rate schedules step, the EMA copy follows the weights and the method updates its
state (``method.after_step``, no gradients). An iteration whose loss is not finite changes nothing
(no optimiser step); after ``run.max_bad_steps`` of them in a row the run stops with an error and
``checkpoint_last.pt`` keeps the last good state.

Under DDP each process takes ``data.batch_size`` images and the gradients are averaged over
processes: a loss averaged over its batch gives the gradient of the global batch, a loss summed
over it (ASL's ``reduction="sum"``, as in its code) the average per-process batch's, as in the
papers' multi-GPU runs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

import mlcl
from mlcl.collectives import all_reduce_mean
from mlcl.config import Config, for_restoring
from mlcl.engine.checkpoint import (
    FORMAT_VERSION,
    check_compatible,
    copy_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from mlcl.engine.evaluate import collect_outputs, compute_metrics
from mlcl.engine.kill_points import kill_point
from mlcl.engine.loaders import (
    BadImage,
    batch_to_device,
    build_datasets,
    build_loaders,
    device_decoder,
    seed_epoch,
    seed_everything,
)
from mlcl.engine.optim import autocast_dtype, build_grad_scaler, build_optimizers, build_scheduler
from mlcl.engine.process_group import DistributedContext, cleanup_distributed, setup_distributed
from mlcl.engine.run_dir import (
    RunDir,
    environment_info,
    log,
    peak_memory_mb,
    read_metrics,
    run_lock,
)
from mlcl.errors import CheckpointError, ConfigError, MlclError
from mlcl.methods import Method, build_method


@dataclass
class TrainState:
    """The counters of a run; every checkpoint saves them."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # iterations done in the current epoch (mid-epoch checkpoints)
    global_step: int = 0  # iterations done in total
    best_score: float = -math.inf  # the better of mAP and EMA mAP at the best epoch
    best_map: float = math.nan
    best_epoch: int = -1
    best_ema_map: float = math.nan
    best_ema_epoch: int = -1
    epochs_without_improvement: int = 0
    bad_steps: int = 0  # iterations with a non-finite loss, in a row
    # Training images left out of their batch as undecodable (data.bad_images: skip), in the
    # order met; an image is listed again in every epoch that meets it.
    bad_images: list[str] = dataclasses.field(default_factory=list)


@dataclass
class Training:
    """Everything that is trained or steps during training, built once by ``fit``."""

    config: Config
    context: DistributedContext
    method: Method
    model: nn.Module  # the method, wrapped in DistributedDataParallel when distributed
    optimizers: dict[str, torch.optim.Optimizer]  # one per phase
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    scaler: torch.amp.GradScaler | None  # float16 only
    ema: ModelEmaV3 | None
    amp_dtype: torch.dtype | None
    class_names: list[str]
    schedule: dict[str, Any]  # what the learning-rate schedules depend on (resume checks it)
    state: TrainState = dataclasses.field(default_factory=TrainState)
    resumed_rng: dict[str, Any] | None = None  # restored when resuming in the middle of an epoch

    @property
    def device(self) -> torch.device:
        return self.context.device


class Callback:
    """Watches a run without changing it: a chapter's extra measurements, e.g. the quality of
    Scob's label estimates after every epoch. ``fit(config, callbacks=[...])`` calls these on
    the main process after the method's own epoch hooks; the run's method, configuration and
    checkpoints stay those of ``config``, so ``mlcl evaluate`` reads them as any other run's."""

    def on_epoch_start(self, method: Method, epoch: int) -> None:
        """Before the first iteration of ``epoch`` (not when resuming in its middle)."""

    def on_epoch_end(self, method: Method, epoch: int, record: dict[str, Any]) -> None:
        """After ``epoch`` was trained and evaluated; ``record`` is its line of metrics.jsonl."""


def fit(
    config: Config,
    *,
    resume: bool = False,
    progress: bool | None = None,
    train_dataset: Dataset | None = None,
    val_dataset: Dataset | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train the method of ``config`` and return the run's summary (``best_map``, ...).

    Args:
        resume: continue from ``run.out_dir/checkpoint_last.pt`` (a fresh start if there is none).
        progress: show progress bars (default: ``config.run.progress``).
        train_dataset, val_dataset: prebuilt data sets (tests, notebooks); by default both are
            built from ``config.data``. They yield batches as :mod:`mlcl.data` does, and the
            validation set has ``full_labels`` and ``class_names``.
        callbacks: :class:`Callback` objects that watch the run's epochs.
    """
    show_progress = config.run.progress if progress is None else progress
    context = setup_distributed(config.run.device)
    try:
        with run_lock(config.run.out_dir, enabled=context.is_main):
            if train_dataset is None or val_dataset is None:
                train_dataset, val_dataset = build_datasets(config, context)
            train_loader, val_loader = build_loaders(config, train_dataset, val_dataset, context)
            run_dir = RunDir(config.run.out_dir, enabled=context.is_main)
            run_dir.remove_partial_writes()  # safe: the lock keeps other runs out
            restoring = resume and run_dir.last_checkpoint.is_file()
            training = build_training(
                config, context, train_dataset, val_dataset, len(train_loader), restoring=restoring
            )
            if restoring:
                restore_training(training, run_dir.last_checkpoint)
            elif resume:
                log(f"no checkpoint in {run_dir.path}: starting a new run", context.is_main)
            run_dir.write_config(config)
            run_dir.start_metrics(training.state.epoch)
            return train_epochs(
                training, train_loader, val_loader, run_dir, show_progress, callbacks
            )
    finally:
        cleanup_distributed(context)


def build_training(
    config: Config,
    context: DistributedContext,
    train_dataset: Dataset,
    val_dataset: Dataset,
    steps_per_epoch: int,
    *,
    restoring: bool = False,
) -> Training:
    """The method on its device with its optimisers, schedules, scaler and EMA copy.

    ``restoring``: a checkpoint will overwrite the weights, so the method is built without its
    start-only inputs (pre-trained weights, a stage-1 checkpoint), which need not exist any more.
    """
    run = config.run
    if list(val_dataset.class_names) != list(train_dataset.class_names):
        raise ConfigError("data: the training and validation splits have different classes")
    seed_everything(run.seed)  # the same initial weights on every process
    method = build_method(
        for_restoring(config) if restoring else config,
        num_classes=train_dataset.num_classes,
        num_train_images=len(train_dataset),
    )
    method.to(context.device)
    if run.channels_last:
        method.to(memory_format=torch.channels_last)
    if context.distributed and run.sync_bn:
        if context.device.type != "cuda":
            raise ConfigError("run.sync_bn: PyTorch's SyncBatchNorm runs on GPUs only")
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    amp_dtype = autocast_dtype(run.amp, context.device)
    ema = None
    if run.ema > 0:
        ema = ModelEmaV3(method, decay=run.ema, use_warmup=run.ema_warmup)  # buffers too
    optimizers = build_optimizers(method, config, context.device)
    total_steps = steps_per_epoch * run.epochs
    if run.max_steps:
        total_steps = min(total_steps, run.max_steps)
    schedulers = {
        phase: build_scheduler(optimizer, config, steps_per_epoch, total_steps)
        for phase, optimizer in optimizers.items()
    }
    if run.compile:
        method.compile(mode=run.compile_mode)
    elif run.compile_mode != "default":
        raise ConfigError(f"run.compile_mode: {run.compile_mode} needs run.compile: true")
    model: nn.Module = method
    if context.distributed:
        model = DistributedDataParallel(
            method,
            device_ids=[context.device.index] if context.device.type == "cuda" else None,
            broadcast_buffers=False,  # methods keep their buffers in step themselves
            find_unused_parameters=method.find_unused_parameters,
        )
    return Training(
        config=config,
        context=context,
        method=method,
        model=model,
        optimizers=optimizers,
        schedulers=schedulers,
        scaler=build_grad_scaler(amp_dtype, context.device),
        ema=ema,
        amp_dtype=amp_dtype,
        class_names=list(train_dataset.class_names),
        schedule={
            "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps,
            **{f"optim.{name}": value for name, value in config.to_dict()["optim"].items()},
        },
    )


def train_epochs(
    training: Training,
    train_loader: DataLoader,
    val_loader: DataLoader,
    run_dir: RunDir,
    progress: bool,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train from ``training.state`` to the last epoch (or ``run.max_steps``, or an early stop),
    evaluating and checkpointing after every epoch. Returns the summary."""
    config, context, state, method = (
        training.config,
        training.context,
        training.state,
        training.method,
    )
    run = config.run
    main = context.is_main
    log(_describe(training, train_loader, run_dir), main)
    started = time.perf_counter()
    train_seconds, train_images, stopped = 0.0, 0, "completed"
    records = read_metrics(run_dir.path) if main else []
    record: dict[str, Any] = records[-1] if records else {}  # a resumed, finished run
    while state.epoch < run.epochs and not _reached_max_steps(training):
        epoch = state.epoch
        remaining = run.max_steps - state.global_step if run.max_steps else None
        seed_epoch(train_loader, run.seed, epoch, context.rank, state.step_in_epoch, remaining)
        if training.resumed_rng is not None and main:
            set_rng_state(training.resumed_rng)  # mid-epoch: continue the saved random streams
        training.resumed_rng = None
        if state.step_in_epoch == 0:
            method.on_epoch_start(epoch)
            for callback in callbacks if main else ():
                callback.on_epoch_start(method, epoch)
        train_stats = train_one_epoch(training, train_loader, run_dir, progress)
        method.on_epoch_end(epoch)
        train_seconds += train_stats["train_time_s"]
        train_images += train_stats["images"]

        evaluation_started = time.perf_counter()
        metrics = evaluate_epoch(training, val_loader)
        metrics["eval_time_s"] = time.perf_counter() - evaluation_started
        state.epoch, state.step_in_epoch = epoch + 1, 0
        improved = _update_best(state, metrics, epoch)
        record = {"epoch": epoch, "step": state.global_step, **train_stats, **metrics}
        run_dir.append_metrics(record)
        kill_point("epoch_end")
        for callback in callbacks if main else ():
            callback.on_epoch_end(method, epoch, record)
        if run.checkpoint and main:
            save_checkpoint(checkpoint_state(training), run_dir.last_checkpoint)
            if improved:
                copy_checkpoint(run_dir.last_checkpoint, run_dir.best_checkpoint)
        log(_epoch_line(training, record, improved), main)
        if run.early_stop and state.epochs_without_improvement >= run.early_stop:
            stopped = "early_stop"
            break
    if _reached_max_steps(training):
        stopped = "max_steps"
    summary = _summary(training, record, stopped, time.perf_counter() - started)
    summary["train_images_per_s"] = train_images / train_seconds if train_seconds else None
    run_dir.write_summary(summary)
    return summary


def train_one_epoch(
    training: Training, loader: DataLoader, run_dir: RunDir, progress: bool
) -> dict[str, Any]:
    """One pass over ``loader`` (from ``state.step_in_epoch`` when resuming mid-epoch).
    Returns the mean of every logged loss term (``train_<name>``), the learning rate, the
    number of images (all processes) and the images per second."""
    config, context, state = training.config, training.context, training.state
    run = config.run
    training.model.train()
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=training.device))
    decoder = device_decoder(config)
    good_steps, images, started = 0, 0, time.perf_counter()
    bar = tqdm(
        loader,
        desc=f"epoch {state.epoch + 1}/{run.epochs}",
        initial=state.step_in_epoch,
        total=state.step_in_epoch + len(loader),
        leave=False,
        disable=not (progress and context.is_main),
        dynamic_ncols=True,
    )
    for batch in bar:
        _note_bad_images(training, batch.pop("bad_images", []))
        batch = batch_to_device(batch, training.device, run.channels_last, decoder)
        terms = training_step(training, batch)
        state.global_step += 1
        state.step_in_epoch += 1
        images += batch["image"].shape[0] * context.world_size
        if terms is None:
            state.bad_steps += 1
            if state.bad_steps >= run.max_bad_steps:
                raise MlclError(
                    f"training stopped at step {state.global_step}: the loss was not finite in "
                    f"{state.bad_steps} iterations in a row (run.max_bad_steps); "
                    f"{run_dir.last_checkpoint} holds the last good state"
                )
            continue
        state.bad_steps = 0
        good_steps += 1
        kill_point("step")
        for name, value in terms.items():
            sums[name] += value
        if state.step_in_epoch % 10 == 0 or state.step_in_epoch == 1:
            seconds = time.perf_counter() - started
            bar.set_postfix(loss=f"{terms['loss'].item():.4g}", img_s=f"{images / seconds:.0f}")
        at_checkpoint = run.checkpoint_every and state.global_step % run.checkpoint_every == 0
        if at_checkpoint and run.checkpoint and context.is_main:
            save_checkpoint(checkpoint_state(training), run_dir.last_checkpoint)
    bar.close()
    seconds = time.perf_counter() - started
    stats: dict[str, Any] = {}
    if sums:
        names = sorted(sums)
        means = torch.stack([sums[name] for name in names]) / good_steps
        all_reduce_mean(means)  # the mean over every process's batches
        stats = {f"train_{name}": float(mean) for name, mean in zip(names, means)}
    stats |= _learning_rates(training)
    stats |= {
        "images": images,
        "train_time_s": seconds,
        "images_per_s": images / max(seconds, 1e-9),
    }
    return stats


def training_step(
    training: Training, batch: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor] | None:
    """One iteration over every phase (see the module docstring). Returns the detached scalar
    terms to log (``loss`` and the method's named terms; with several phases ``<phase>_<term>``
    and ``loss``, their total), or None if a loss was not finite and the iteration was
    skipped."""
    method, scaler = training.method, training.scaler
    multi_phase = len(method.phases) > 1
    merged: dict[str, torch.Tensor] = {}
    terms: dict[str, torch.Tensor] = {}
    stepped = 0
    for phase in method.phases:
        optimizer = training.optimizers[phase]
        with torch.autocast(
            training.device.type, dtype=training.amp_dtype, enabled=training.amp_dtype is not None
        ):
            outputs = training.model(batch, phase=phase)
        loss = outputs["loss"]
        if not _finite_on_every_process(loss, training.context):
            log(
                f"step {training.state.global_step + 1}: the loss of phase {phase!r} is "
                f"{loss.item()}; iteration skipped",
                training.context.is_main,
            )
            _drain_ddp(training, phase)
            break
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        if training.config.optim.grad_clip > 0:
            if scaler:
                scaler.unscale_(optimizer)
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(parameters, training.config.optim.grad_clip)
        if scaler:
            scaler.step(optimizer)
        else:
            optimizer.step()
        stepped += 1
        merged |= outputs
        prefix = f"{phase}_" if multi_phase else ""
        for name, value in outputs.items():
            if name != "logits" and value.ndim == 0:
                terms[prefix + name] = value.detach().float()
    if scaler and stepped:
        scaler.update()
    if stepped < len(method.phases):
        return None
    if multi_phase:  # the iteration's total, for the progress bar and the epoch line
        terms["loss"] = sum(terms[f"{phase}_loss"] for phase in method.phases)
    for scheduler in training.schedulers.values():
        scheduler.step()
    if training.ema is not None:
        training.ema.update(method)
    with torch.no_grad():
        method.after_step(batch, merged)
    return terms


def evaluate_epoch(training: Training, loader: DataLoader) -> dict[str, Any]:
    """Metrics of the method (``mAP``, ...) and of its EMA copy (``ema_mAP``, ...)."""
    run = training.config.run
    models = {"": training.method}
    if training.ema is not None:
        models["ema_"] = training.ema.module
    metrics: dict[str, Any] = {}
    for prefix, model in models.items():
        outputs = collect_outputs(
            model,
            loader,
            training.device,
            training.amp_dtype,
            run.channels_last,
            decoder=device_decoder(training.config),
        )
        results = compute_metrics(model, outputs, loader.dataset, run.threshold)
        metrics |= {prefix + name: value for name, value in results.items()}
        kill_point("eval")
    return metrics


def checkpoint_state(training: Training) -> dict[str, Any]:
    """Everything needed to continue the run exactly (tensors and plain Python only)."""
    method = training.method
    return {
        "format": FORMAT_VERSION,
        "method": method.name,
        "num_classes": method.num_classes,
        "num_train_images": method.num_train_images,
        "class_names": training.class_names,
        "config": training.config.to_dict(),
        "model": method.state_dict(),
        "ema": training.ema.module.state_dict() if training.ema is not None else None,
        "optimizers": {phase: opt.state_dict() for phase, opt in training.optimizers.items()},
        "schedulers": {phase: sch.state_dict() for phase, sch in training.schedulers.items()},
        "scaler": training.scaler.state_dict() if training.scaler is not None else None,
        "schedule": training.schedule,
        "state": dataclasses.asdict(training.state),
        "rng": rng_state(),
        "mlcl_version": mlcl.__version__,
    }


def restore_training(training: Training, path: Path) -> None:
    """Continue from a checkpoint written by ``checkpoint_state``."""
    checkpoint = load_checkpoint(path)
    check_compatible(checkpoint, path, training.method.name, training.class_names)
    changed = [
        f"{name} {old} -> {training.schedule.get(name)}"
        for name, old in checkpoint["schedule"].items()
        if training.schedule.get(name) != old
    ]
    if changed:
        raise CheckpointError(
            f"{path}: the learning-rate schedule cannot continue with changed settings "
            f"({'; '.join(changed)}); resume with the run's own configuration "
            f"({Path(path).parent / 'config.yaml'}) or start a new run"
        )
    training.method.load_state_dict(checkpoint["model"])
    if training.ema is not None:
        if checkpoint["ema"] is None:
            raise MlclError(f"{path}: has no EMA weights, but run.ema is {training.config.run.ema}")
        training.ema.module.load_state_dict(checkpoint["ema"])
    for phase, optimizer in training.optimizers.items():
        optimizer.load_state_dict(checkpoint["optimizers"][phase])
        training.schedulers[phase].load_state_dict(checkpoint["schedulers"][phase])
    if training.scaler is not None and checkpoint["scaler"] is not None:
        training.scaler.load_state_dict(checkpoint["scaler"])
    training.state = TrainState(**checkpoint["state"])
    if training.state.step_in_epoch:
        training.resumed_rng = checkpoint["rng"]
    log(
        f"resumed from {path}: epoch {training.state.epoch}, step {training.state.global_step}",
        training.context.is_main,
    )


# --------------------------------------------------------------------------- helpers


def _finite_on_every_process(loss: torch.Tensor, context: DistributedContext) -> bool:
    """Whether the loss is finite on every process: all must skip a step together, or DDP's
    gradient exchange would wait forever."""
    finite = torch.isfinite(loss.detach()).to(torch.int32)
    if context.distributed:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite)


def _drain_ddp(training: Training, phase: str) -> None:
    """After a skipped forward under DDP, run a backward of zero through every parameter so
    DDP's gradient exchange of that forward completes; then drop the gradients."""
    if not training.context.distributed:
        return
    parameters = [p for group in training.optimizers[phase].param_groups for p in group["params"]]
    sum(p.sum() for p in parameters).mul(0.0).backward()
    training.optimizers[phase].zero_grad(set_to_none=True)


def _note_bad_images(training: Training, bad_images: list[BadImage]) -> None:
    """Log the images a batch left out (``data.bad_images: skip``) and keep their paths for the
    summary (and the checkpoint, so a resumed run's summary lists them too)."""
    for bad in bad_images:
        log(
            f"step {training.state.global_step + 1}: skipped {bad.reason}", training.context.is_main
        )
        training.state.bad_images.append(bad.path)


def _reached_max_steps(training: Training) -> bool:
    max_steps = training.config.run.max_steps
    return bool(max_steps) and training.state.global_step >= max_steps


def _learning_rates(training: Training) -> dict[str, float]:
    phases = training.method.phases
    if len(phases) == 1:
        return {"lr": training.optimizers[phases[0]].param_groups[0]["lr"]}
    return {f"{phase}_lr": training.optimizers[phase].param_groups[0]["lr"] for phase in phases}


def _update_best(state: TrainState, metrics: dict[str, Any], epoch: int) -> bool:
    """Track the best mAP and EMA mAP; return whether the better of the two improved."""
    value = metrics["mAP"]
    if math.isnan(state.best_map) or value > state.best_map:
        state.best_map, state.best_epoch = value, epoch
    ema_value = metrics.get("ema_mAP", math.nan)
    if not math.isnan(ema_value) and (
        math.isnan(state.best_ema_map) or ema_value > state.best_ema_map
    ):
        state.best_ema_map, state.best_ema_epoch = ema_value, epoch
    score = max(value, ema_value) if not math.isnan(ema_value) else value
    if score > state.best_score:
        state.best_score, state.epochs_without_improvement = score, 0
        return True
    state.epochs_without_improvement += 1
    return False


def _describe(training: Training, loader: DataLoader, run_dir: RunDir) -> str:
    config, context = training.config, training.context
    dataset = loader.dataset
    precision = str(training.amp_dtype).removeprefix("torch.") if training.amp_dtype else "float32"
    limit = f" (at most {config.run.max_steps} steps)" if config.run.max_steps else ""
    return (
        f"{training.method.name}: {len(dataset)} training images, {len(training.class_names)} "
        f"classes; {config.run.epochs} epochs of {len(loader)} steps{limit}, batch "
        f"{config.data.batch_size} x {context.world_size} process(es) on {context.device} "
        f"({precision}) -> {run_dir.path}"
    )


def _epoch_line(training: Training, record: dict[str, Any], improved: bool) -> str:
    config = training.config
    parts = [f"epoch {record['epoch'] + 1}/{config.run.epochs}", f"step {record['step']}"]
    if "train_loss" in record:
        parts.append(f"loss {record['train_loss']:.4g}")
    parts.append(f"mAP {record['mAP']:.2f}")
    if "ema_mAP" in record:
        parts.append(f"EMA mAP {record['ema_mAP']:.2f}")
    parts.append(f"{record['images_per_s']:.0f} img/s")
    return "  ".join(parts) + ("  (best)" if improved else "")


def _summary(
    training: Training, record: dict[str, Any], stopped: str, seconds: float
) -> dict[str, Any]:
    state, config = training.state, training.config
    return {
        "method": training.method.name,
        "best_map": state.best_map,
        "best_epoch": state.best_epoch,
        "best_ema_map": state.best_ema_map,
        "best_ema_epoch": state.best_ema_epoch,
        "final_map": record.get("mAP"),
        "final_ema_map": record.get("ema_mAP"),
        "epochs": state.epoch,
        "steps": state.global_step,
        "stopped": stopped,
        "bad_images": state.bad_images,
        "time_s": seconds,
        **peak_memory_mb(training.device),
        "device": str(training.device),
        "world_size": training.context.world_size,
        "num_classes": len(training.class_names),
        "config_hash": config.hash(),
        **environment_info(),
    }
