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
import functools
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

import mlcl
from mlcl.collectives import all_reduce_mean, is_main_process
from mlcl.config import Config, RunConfig
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
from mlcl.engine.optim import (
    Optimization,
    autocast_dtype,
    build_optimization,
    stepped_parameters,
)
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
from mlcl.methods import Method, build_method, for_restoring, resolve_config


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
    config = resolve_config(config)  # checked before any data is read; saved in full
    context = setup_distributed(config.run.device)
    try:
        with run_lock(config.run.out_dir, enabled=context.is_main):
            if train_dataset is None or val_dataset is None:
                train_dataset, val_dataset = build_datasets(config, context)
            loaders = build_loaders(config, train_dataset, val_dataset, context)
            run_dir = RunDir(config.run.out_dir, enabled=context.is_main)
            run_dir.remove_partial_writes()  # safe: the lock keeps other runs out
            restoring = resume and run_dir.last_checkpoint.is_file()
            method, model, ema, optimization = build_training(
                config, context, train_dataset, val_dataset, len(loaders[0]), restoring=restoring
            )
            class_names = list(train_dataset.class_names)
            state, resumed_rng = TrainState(), None
            if restoring:
                state, resumed_rng = restore_training(
                    run_dir.last_checkpoint, method, ema, optimization, class_names, context
                )
            elif resume:
                log(f"no checkpoint in {run_dir.path}: starting a new run", context.is_main)
            run_dir.write_config(config)
            run_dir.start_metrics(state.epoch)
            return train_epochs(
                model,
                loaders,
                optimization,
                state,
                run_dir,
                config,
                context,
                class_names=class_names,
                ema=ema,
                resumed_rng=resumed_rng,
                progress=config.run.progress if progress is None else progress,
                callbacks=callbacks,
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
) -> tuple[Method, nn.Module, ModelEmaV3 | None, Optimization]:
    """The method on its device; the module the training forward runs through (the method,
    compiled with ``run.compile``, in DistributedDataParallel when distributed); its EMA copy
    (``run.ema``); its optimisers, schedules and scaler.

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
    ema = ModelEmaV3(method, decay=run.ema, use_warmup=run.ema_warmup) if run.ema > 0 else None
    amp_dtype = autocast_dtype(run.amp, context.device)
    optimization = build_optimization(method, config, context.device, steps_per_epoch, amp_dtype)
    return method, _training_module(method, run, context), ema, optimization


def train_epochs(
    model: nn.Module,
    loaders: tuple[DataLoader, DataLoader],
    optimization: Optimization,
    state: TrainState,
    run_dir: RunDir,
    config: Config,
    context: DistributedContext,
    *,
    class_names: Sequence[str],
    ema: ModelEmaV3 | None = None,
    resumed_rng: dict[str, Any] | None = None,
    progress: bool = False,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train from ``state`` to the last epoch (or ``run.max_steps``, or an early stop),
    evaluating and checkpointing after every epoch. Returns the summary."""
    run, method = config.run, _method_of(model)
    train_loader, val_loader = loaders
    snapshot = functools.partial(
        checkpoint_state, config, method, ema, optimization, state, list(class_names)
    )
    checkpoint = functools.partial(_save_last, run_dir, run.checkpoint, snapshot)
    log(_describe(method, train_loader, config, context, run_dir), context.is_main)
    started, trained, stopped = time.perf_counter(), [], "completed"
    records = read_metrics(run_dir.path) if context.is_main else []
    record: dict[str, Any] = records[-1] if records else {}  # a resumed, finished run
    while state.epoch < run.epochs and not _reached_max_steps(state, run):
        _start_epoch(train_loader, method, state, run, context, resumed_rng, callbacks)
        resumed_rng = None
        trained.append(
            train_one_epoch(
                model,
                train_loader,
                optimization,
                state,
                config,
                context,
                ema=ema,
                checkpoint=checkpoint,
                progress=progress,
            )
        )
        record, improved = _end_epoch(
            method, ema, val_loader, state, trained[-1], run_dir, config, context, callbacks
        )
        checkpoint(best=improved)
        log(_epoch_line(run, record, improved), context.is_main)
        if run.early_stop and state.epochs_without_improvement >= run.early_stop:
            stopped = "early_stop"
            break
    if _reached_max_steps(state, run):
        stopped = "max_steps"
    summary = _summary(method, state, record, stopped, started, trained, config, context)
    run_dir.write_summary(summary)
    return summary


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimization: Optimization,
    state: TrainState,
    config: Config,
    context: DistributedContext,
    *,
    ema: ModelEmaV3 | None = None,
    checkpoint: Callable[[], None] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """One pass over ``loader`` (from ``state.step_in_epoch`` when resuming mid-epoch), calling
    ``checkpoint`` every ``run.checkpoint_every`` iterations. Returns the mean of every logged
    loss term (``train_<name>``), the learning rate, the number of images (all processes) and
    the images per second."""
    run = config.run
    amp_dtype = autocast_dtype(run.amp, context.device)
    model.train()
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=context.device))
    decoder = device_decoder(config)
    good_steps, images, started = 0, 0, time.perf_counter()
    bar = _progress_bar(loader, state, run.epochs, enabled=progress and context.is_main)
    for batch in bar:
        _note_bad_images(state, batch.pop("bad_images", []), context.is_main)
        batch = batch_to_device(batch, context.device, run.channels_last, decoder)
        terms = training_step(
            model, batch, optimization, amp_dtype=amp_dtype, ema=ema, step=state.global_step + 1
        )
        state.global_step += 1
        state.step_in_epoch += 1
        images += batch["image"].shape[0] * context.world_size
        if terms is None:
            state.bad_steps += 1
            if state.bad_steps >= run.max_bad_steps:
                raise _too_many_bad_steps(state, run)
            continue
        state.bad_steps = 0
        good_steps += 1
        kill_point("step")
        for name, value in terms.items():
            sums[name] += value
        if state.step_in_epoch % 10 == 0 or state.step_in_epoch == 1:
            seconds = time.perf_counter() - started
            bar.set_postfix(loss=f"{terms['loss'].item():.4g}", img_s=f"{images / seconds:.0f}")
        if checkpoint and run.checkpoint_every and state.global_step % run.checkpoint_every == 0:
            checkpoint()
    bar.close()
    seconds = time.perf_counter() - started
    return {
        **_mean_terms(sums, good_steps),
        **optimization.learning_rates(),
        "images": images,
        "train_time_s": seconds,
        "images_per_s": images / max(seconds, 1e-9),
    }


def training_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    optimization: Optimization,
    *,
    amp_dtype: torch.dtype | None = None,
    ema: ModelEmaV3 | None = None,
    step: int = 0,
) -> dict[str, torch.Tensor] | None:
    """One iteration over every phase of the method ``model`` runs (see the module docstring).
    Returns the detached scalar terms to log (``loss`` and the method's named terms; with
    several phases ``<phase>_<term>`` and ``loss``, their total), or None if a loss was not
    finite and the iteration was skipped (logged as iteration ``step``)."""
    method = _method_of(model)
    multi_phase = len(method.phases) > 1
    merged: dict[str, torch.Tensor] = {}
    terms: dict[str, torch.Tensor] = {}
    stepped = 0
    device_type = batch["image"].device.type  # where the forward runs
    for phase in method.phases:
        with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(batch, phase=phase)
        if _skip_non_finite(model, outputs["loss"], optimization.optimizers[phase]):
            loss = outputs["loss"].item()
            message = f"step {step}: the loss of phase {phase!r} is {loss}; iteration skipped"
            log(message, is_main_process())
            break
        optimization.step(phase, outputs["loss"])
        stepped += 1
        merged |= outputs
        terms |= _scalar_terms(outputs, prefix=f"{phase}_" if multi_phase else "")
    if optimization.scaler is not None and stepped:
        optimization.scaler.update()
    if stepped < len(method.phases):
        return None
    if multi_phase:  # the iteration's total, for the progress bar and the epoch line
        terms["loss"] = sum(terms[f"{phase}_loss"] for phase in method.phases)
    optimization.step_schedules()
    if ema is not None:
        ema.update(method)
    with torch.no_grad():
        method.after_step(batch, merged)
    return terms


def evaluate_epoch(
    method: Method, ema: ModelEmaV3 | None, loader: DataLoader, config: Config, device: torch.device
) -> dict[str, Any]:
    """Metrics of the method (``mAP``, ...) and of its EMA copy (``ema_mAP``, ...)."""
    run = config.run
    models = {"": method} if ema is None else {"": method, "ema_": ema.module}
    metrics: dict[str, Any] = {}
    for prefix, model in models.items():
        outputs = collect_outputs(
            model,
            loader,
            device,
            autocast_dtype(run.amp, device),
            run.channels_last,
            decoder=device_decoder(config),
        )
        results = compute_metrics(model, outputs, loader.dataset, run.threshold)
        metrics |= {prefix + name: value for name, value in results.items()}
        kill_point("eval")
    return metrics


def checkpoint_state(
    config: Config,
    method: Method,
    ema: ModelEmaV3 | None,
    optimization: Optimization,
    state: TrainState,
    class_names: list[str],
) -> dict[str, Any]:
    """Everything needed to continue the run exactly (tensors and plain Python only)."""
    return {
        "format": FORMAT_VERSION,
        "method": method.name,
        "num_classes": method.num_classes,
        "num_train_images": method.num_train_images,
        "class_names": class_names,
        "config": config.to_dict(),
        "model": method.state_dict(),
        "ema": ema.module.state_dict() if ema is not None else None,
        **optimization.state_dict(),  # optimizers, schedulers, scaler, schedule
        "state": dataclasses.asdict(state),
        "rng": rng_state(),
        "mlcl_version": mlcl.__version__,
    }


def restore_training(
    path: Path,
    method: Method,
    ema: ModelEmaV3 | None,
    optimization: Optimization,
    class_names: list[str],
    context: DistributedContext,
) -> tuple[TrainState, dict[str, Any] | None]:
    """Continue from a checkpoint written by ``checkpoint_state``: the weights and the
    optimisation's state are loaded in place. Returns the run's counters and, when it stopped
    in the middle of an epoch, the random state to continue that epoch with."""
    checkpoint = load_checkpoint(path)
    check_compatible(checkpoint, path, method.name, class_names)
    changed = [
        f"{name} {old} -> {optimization.schedule.get(name)}"
        for name, old in checkpoint["schedule"].items()
        if optimization.schedule.get(name) != old
    ]
    if changed:
        raise CheckpointError(
            f"{path}: the learning-rate schedule cannot continue with changed settings "
            f"({'; '.join(changed)}); resume with the run's own configuration "
            f"({Path(path).parent / 'config.yaml'}) or start a new run"
        )
    method.load_state_dict(checkpoint["model"])
    if ema is not None:
        if checkpoint["ema"] is None:
            raise MlclError(f"{path}: has no EMA weights, but run.ema is {ema.decay}")
        ema.module.load_state_dict(checkpoint["ema"])
    optimization.load_state_dict(checkpoint)
    state = TrainState(**checkpoint["state"])
    log(f"resumed from {path}: epoch {state.epoch}, step {state.global_step}", context.is_main)
    return state, checkpoint["rng"] if state.step_in_epoch else None


# --------------------------------------------------------------------------- helpers


def _training_module(method: Method, run: RunConfig, context: DistributedContext) -> nn.Module:
    """The module the training forward runs through: the method (compiled with
    ``run.compile``), wrapped in DistributedDataParallel when distributed."""
    if run.compile:
        method.compile(mode=run.compile_mode)
    elif run.compile_mode != "default":
        raise ConfigError(f"run.compile_mode: {run.compile_mode} needs run.compile: true")
    if not context.distributed:
        return method
    return DistributedDataParallel(
        method,
        device_ids=[context.device.index] if context.device.type == "cuda" else None,
        broadcast_buffers=False,  # methods keep their buffers in step themselves
        find_unused_parameters=method.find_unused_parameters,
    )


def _method_of(model: nn.Module) -> Method:
    """The method that ``model`` (the method, or DistributedDataParallel around it) runs."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def _skip_non_finite(model: nn.Module, loss: torch.Tensor, optimizer: Optimizer) -> bool:
    """Whether the iteration must be skipped: the loss is not finite on some process.

    All processes must skip together, or DDP's gradient exchange would wait forever; and
    under DDP the skipped forward's exchange is completed by a backward of zero through every
    parameter, whose gradients are then dropped."""
    finite = torch.isfinite(loss.detach()).to(torch.int32)
    if not isinstance(model, DistributedDataParallel):
        return not finite
    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if finite:
        return False
    sum(p.sum() for p in stepped_parameters(optimizer)).mul(0.0).backward()
    optimizer.zero_grad(set_to_none=True)
    return True


def _scalar_terms(outputs: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The loss and the method's named scalar terms of a phase's outputs, detached."""
    return {
        prefix + name: value.detach().float()
        for name, value in outputs.items()
        if name != "logits" and value.ndim == 0
    }


def _mean_terms(sums: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
    """``train_<name>``: each term's mean over ``steps`` iterations of every process."""
    if not sums:
        return {}
    names = sorted(sums)
    means = torch.stack([sums[name] for name in names]) / steps
    all_reduce_mean(means)  # the mean over every process's batches
    return {f"train_{name}": float(mean) for name, mean in zip(names, means)}


def _progress_bar(loader: DataLoader, state: TrainState, epochs: int, enabled: bool) -> tqdm:
    return tqdm(
        loader,
        desc=f"epoch {state.epoch + 1}/{epochs}",
        initial=state.step_in_epoch,
        total=state.step_in_epoch + len(loader),
        leave=False,
        disable=not enabled,
        dynamic_ncols=True,
    )


def _start_epoch(
    loader: DataLoader,
    method: Method,
    state: TrainState,
    run: RunConfig,
    context: DistributedContext,
    resumed_rng: dict[str, Any] | None,
    callbacks: Sequence[Callback],
) -> None:
    """Seed the epoch's batches and random streams (from where a mid-epoch checkpoint stopped:
    ``resumed_rng``), and call the epoch-start hooks unless resuming in the epoch's middle."""
    remaining = run.max_steps - state.global_step if run.max_steps else None
    seed_epoch(loader, run.seed, state.epoch, context.rank, state.step_in_epoch, remaining)
    if resumed_rng is not None and context.is_main:
        set_rng_state(resumed_rng)  # mid-epoch: continue the saved random streams
    if state.step_in_epoch == 0:
        method.on_epoch_start(state.epoch)
        for callback in callbacks if context.is_main else ():
            callback.on_epoch_start(method, state.epoch)


def _save_last(
    run_dir: RunDir, enabled: bool, snapshot: Callable[[], dict[str, Any]], best: bool = False
) -> None:
    """Write ``snapshot()`` to ``checkpoint_last.pt`` and, if ``best``, copy it to
    ``checkpoint_best.pt``: on the main process, when ``enabled`` (``run.checkpoint``)."""
    if enabled and run_dir.enabled:
        save_checkpoint(snapshot(), run_dir.last_checkpoint)
        if best:
            copy_checkpoint(run_dir.last_checkpoint, run_dir.best_checkpoint)


def _end_epoch(
    method: Method,
    ema: ModelEmaV3 | None,
    loader: DataLoader,
    state: TrainState,
    train_stats: dict[str, Any],
    run_dir: RunDir,
    config: Config,
    context: DistributedContext,
    callbacks: Sequence[Callback],
) -> tuple[dict[str, Any], bool]:
    """After an epoch's training: the method's epoch-end hook, the evaluation, the epoch
    counted done, its line of metrics.jsonl and the callbacks. Returns the line and whether
    the epoch is the best so far."""
    epoch = state.epoch
    method.on_epoch_end(epoch)
    started = time.perf_counter()
    metrics = evaluate_epoch(method, ema, loader, config, context.device)
    metrics["eval_time_s"] = time.perf_counter() - started
    state.epoch, state.step_in_epoch = epoch + 1, 0
    improved = _update_best(state, metrics, epoch)
    record = {"epoch": epoch, "step": state.global_step, **train_stats, **metrics}
    run_dir.append_metrics(record)
    kill_point("epoch_end")
    for callback in callbacks if context.is_main else ():
        callback.on_epoch_end(method, epoch, record)
    return record, improved


def _note_bad_images(state: TrainState, bad_images: list[BadImage], main: bool) -> None:
    """Log the images a batch left out (``data.bad_images: skip``) and keep their paths for the
    summary (and the checkpoint, so a resumed run's summary lists them too)."""
    for bad in bad_images:
        log(f"step {state.global_step + 1}: skipped {bad.reason}", main)
        state.bad_images.append(bad.path)


def _too_many_bad_steps(state: TrainState, run: RunConfig) -> MlclError:
    last_checkpoint = RunDir(run.out_dir, enabled=False).last_checkpoint  # a path, no writes
    return MlclError(
        f"training stopped at step {state.global_step}: the loss was not finite in "
        f"{state.bad_steps} iterations in a row (run.max_bad_steps); "
        f"{last_checkpoint} holds the last good state"
    )


def _reached_max_steps(state: TrainState, run: RunConfig) -> bool:
    return bool(run.max_steps) and state.global_step >= run.max_steps


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


def _describe(
    method: Method, loader: DataLoader, config: Config, context: DistributedContext, run_dir: RunDir
) -> str:
    amp_dtype = autocast_dtype(config.run.amp, context.device)
    precision = str(amp_dtype).removeprefix("torch.") if amp_dtype else "float32"
    limit = f" (at most {config.run.max_steps} steps)" if config.run.max_steps else ""
    return (
        f"{method.name}: {len(loader.dataset)} training images, {method.num_classes} "
        f"classes; {config.run.epochs} epochs of {len(loader)} steps{limit}, batch "
        f"{config.data.batch_size} x {context.world_size} process(es) on {context.device} "
        f"({precision}) -> {run_dir.path}"
    )


def _epoch_line(run: RunConfig, record: dict[str, Any], improved: bool) -> str:
    parts = [f"epoch {record['epoch'] + 1}/{run.epochs}", f"step {record['step']}"]
    if "train_loss" in record:
        parts.append(f"loss {record['train_loss']:.4g}")
    parts.append(f"mAP {record['mAP']:.2f}")
    if "ema_mAP" in record:
        parts.append(f"EMA mAP {record['ema_mAP']:.2f}")
    parts.append(f"{record['images_per_s']:.0f} img/s")
    return "  ".join(parts) + ("  (best)" if improved else "")


def _summary(
    method: Method,
    state: TrainState,
    record: dict[str, Any],
    stopped: str,
    started: float,
    trained: list[dict[str, Any]],
    config: Config,
    context: DistributedContext,
) -> dict[str, Any]:
    """The run's summary; ``trained``: the statistics of the epochs this process trained."""
    train_seconds = sum(stats["train_time_s"] for stats in trained)
    train_images = sum(stats["images"] for stats in trained)
    return {
        "method": method.name,
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
        "time_s": time.perf_counter() - started,
        **peak_memory_mb(context.device),
        "device": str(context.device),
        "world_size": context.world_size,
        "num_classes": method.num_classes,
        "config_hash": config.hash(),
        **environment_info(),
        "train_images_per_s": train_images / train_seconds if train_seconds else None,
    }
