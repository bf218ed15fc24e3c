"""The ``mlcl`` command.

    mlcl train --config baseline-quick [--set run.epochs=2 ...] [--resume]
    torchrun --nproc_per_node 4 -m mlcl.cli train --config baseline-coco --set data.root=/data/coco
    mlcl evaluate --checkpoint runs/baseline-quick/checkpoint_best.pt [--ema] [--out metrics.json]
                  [--calibrate]   (per-class thresholds from the holdout split, then CF1@cal...)
    mlcl predict --checkpoint CKPT IMAGE_OR_DIR... [--threshold T | --top-k K] [--out FILE.jsonl|.csv]
                 [--explain DIR] [--device D] [--batch-size N] [--ema]
    mlcl export --checkpoint CKPT --format onnx|torchscript --out FILE [--static-batch N] [--ema]
    mlcl prototypes --checkpoint runs/q2l-coco/checkpoint_best.pt --out PROTOTYPES.pt [--ema]
    mlcl presets
    mlcl data synth | check | download     (mlcl.data.cli)

An error made on purpose (a bad key, a missing file) prints one line, ``mlcl: error: ...``, and
exits with status 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlcl.data.cli import add_data_commands
from mlcl.errors import MlclError, UsageError

MAIN_METRICS = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlcl", description="Multi-label image classification with contrastive learning."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a method (also under torchrun)")
    train.add_argument(
        "--config", required=True, metavar="PRESET_OR_YAML", help="a preset name or a YAML file"
    )
    _add_set_argument(train)
    train.add_argument(
        "--resume", action="store_true", help="continue from run.out_dir/checkpoint_last.pt"
    )
    train.set_defaults(func=_train)

    evaluate = commands.add_parser("evaluate", help="metrics of a checkpoint on a data split")
    evaluate.add_argument("--checkpoint", required=True, type=Path, metavar="PATH")
    _add_set_argument(evaluate, "e.g. data.root=/data/coco2014 data.eval_batch_size=128")
    evaluate.add_argument("--split", default="val", choices=("val", "train", "holdout"))
    evaluate.add_argument(
        "--calibrate",
        action="store_true",
        help="first pick per-class thresholds on the holdout split (data.holdout) and store them",
    )
    evaluate.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    evaluate.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    evaluate.add_argument("--out", type=Path, metavar="JSON", help="also write the metrics here")
    evaluate.set_defaults(func=_evaluate)

    predict = commands.add_parser("predict", help="labels of your own image files")
    predict.add_argument("--checkpoint", required=True, type=Path, metavar="PATH")
    predict.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    choose = predict.add_mutually_exclusive_group()
    choose.add_argument(
        "--threshold", type=float, help="one threshold for every class (default: calibrated, 0.5)"
    )
    choose.add_argument("--top-k", type=int, metavar="K", help="the K best labels of each image")
    predict.add_argument("--out", type=Path, metavar="FILE", help="write .jsonl or .csv instead")
    predict.add_argument("--explain", type=Path, metavar="DIR", help="one evidence PNG per image")
    predict.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument("--ema", action="store_true", help="predict with the EMA weights")
    predict.set_defaults(func=_predict)

    export = commands.add_parser("export", help="the model as an ONNX or TorchScript file")
    export.add_argument("--checkpoint", required=True, type=Path, metavar="PATH")
    export.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    export.add_argument("--out", required=True, type=Path, metavar="FILE")
    export.add_argument(
        "--static-batch", type=int, metavar="N", help="fix the batch size to N (default: any)"
    )
    weights = export.add_mutually_exclusive_group()
    weights.add_argument("--ema", action="store_true", default=None, help="the EMA weights")
    weights.add_argument(
        "--no-ema", dest="ema", action="store_false", help="the plain weights (default: EMA if any)"
    )
    export.set_defaults(func=_export)

    prototypes = commands.add_parser(
        "prototypes", help="SADCL's class prototypes from a q2l checkpoint (method.prototypes_file)"
    )
    prototypes.add_argument("--checkpoint", required=True, type=Path, metavar="PATH")
    prototypes.add_argument("--out", required=True, type=Path, metavar="FILE", help=".pt or .npy")
    _add_set_argument(prototypes, "e.g. data.root=/data/coco2014")
    prototypes.add_argument("--ema", action="store_true", help="the EMA weights' features")
    prototypes.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    prototypes.add_argument(
        "--threshold", type=float, default=0.85, help="confident positives only (SADCL: 0.85)"
    )
    prototypes.set_defaults(func=_prototypes)

    presets = commands.add_parser("presets", help="list the shipped configuration presets")
    presets.set_defaults(func=_presets)

    add_data_commands(commands)  # mlcl data synth | check | download

    bench = commands.add_parser(
        "bench", help="training images/s, peak memory, FLOPs and MFU of a preset"
    )
    bench.add_argument("--config", required=True, metavar="PRESET_OR_YAML")
    _add_set_argument(bench)
    bench.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    bench.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    bench.add_argument("--repeats", type=int, default=3, help="the median of these is reported")
    bench.add_argument("--data", action="store_true", help="also time the data pipeline alone")
    bench.add_argument("--out", type=Path, metavar="JSON", help="also write the result here")
    bench.set_defaults(func=_bench)

    sweep = commands.add_parser(
        "sweep", help="run a grid of chapters x parameter sets through papermill"
    )
    sweep.add_argument("grid", help="a grid YAML file or the name of a shipped grid (quick, ...)")
    sweep.add_argument("--out", type=Path, default=Path("runs/sweep"), help="runs and report")
    sweep.add_argument("--notebooks", type=Path, default=Path("notebooks"), metavar="DIR")
    sweep.add_argument("--kernel", default=None, help="Jupyter kernel (default: the notebook's)")
    sweep.add_argument(
        "--cell-timeout",
        type=int,
        metavar="SECONDS",
        help="fail a run whose cell runs longer (default: no limit); bounds a kernel that hangs",
    )
    sweep.add_argument(
        "--retries",
        type=int,
        default=0,
        metavar="N",
        help="execute a run again, up to N times, when a cell timed out or the kernel died",
    )
    sweep.add_argument(
        "--rerun",
        action="store_true",
        help="execute again the runs an earlier sweep into --out finished (default: reuse them)",
    )
    sweep.set_defaults(func=_sweep)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except MlclError as err:
        if args.debug:
            raise
        print(f"mlcl: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mlcl: interrupted", file=sys.stderr)
        return 130


# --------------------------------------------------------------------------- commands


def _train(args: argparse.Namespace) -> int:
    from mlcl.config import load_config
    from mlcl.engine import fit

    config = load_config(args.config, args.set)  # fit checks the method section first
    summary = fit(config, resume=args.resume)
    if summary["best_map"] is not None:
        print(f"best mAP {summary['best_map']:.2f} (epoch {summary['best_epoch'] + 1})", end="")
        if summary["best_ema_epoch"] >= 0:
            print(
                f", EMA {summary['best_ema_map']:.2f} (epoch {summary['best_ema_epoch'] + 1})",
                end="",
            )
        print(f"; run in {config.run.out_dir}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mlcl.config import from_dict, with_overrides
    from mlcl.engine import evaluate, load_method
    from mlcl.engine.calibrate import calibrate_thresholds, stored_thresholds
    from mlcl.engine.checkpoint import check_compatible
    from mlcl.engine.loaders import build_split, data_root
    from mlcl.engine.optim import autocast_dtype
    from mlcl.engine.process_group import resolve_device

    device = resolve_device(args.device)
    if args.calibrate:
        calibrate_thresholds(args.checkpoint, ema=args.ema, device=args.device, overrides=args.set)
    method, checkpoint = load_method(args.checkpoint, ema=args.ema, device=device)
    config = from_dict(checkpoint["config"])
    if args.set:
        config = with_overrides(config, args.set)
    dataset = build_split(config, args.split, data_root(config), train=False)
    check_compatible(checkpoint, args.checkpoint, method.name, dataset.class_names)
    metrics = evaluate(
        method,
        dataset,
        batch_size=config.data.eval_batch_size or config.data.batch_size,
        workers=config.data.workers,
        device=device,
        threshold=config.run.threshold,
        thresholds=stored_thresholds(checkpoint, args.ema),
        # The run's own precision, so that the metrics are the ones its training reported
        # (--set run.amp=off evaluates in float32).
        amp_dtype=autocast_dtype(config.run.amp, device),
        channels_last=config.run.channels_last,
        progress=config.run.progress,
    )
    weights = "EMA weights" if args.ema else "weights"
    print(
        f"{args.checkpoint} ({weights}) on {config.data.dataset}/{args.split}, {len(dataset)} images"
    )
    print(format_metrics(metrics))
    if args.out:
        result = {
            "checkpoint": str(args.checkpoint),
            "ema": args.ema,
            "dataset": config.data.dataset,
            "split": args.split,
            **metrics,
            "per_class_ap": dict(zip(dataset.class_names, metrics["per_class_ap"])),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from mlcl.predict import predict, write_predictions

    if args.out is not None and args.out.suffix not in (".jsonl", ".csv"):
        raise UsageError(f"--out {args.out}: write a .jsonl or a .csv file")
    predictions = predict(
        args.checkpoint,
        args.images,
        threshold=args.threshold,
        top_k=args.top_k,
        ema=args.ema,
        device=args.device,
        batch_size=args.batch_size,
        explain_dir=args.explain,
    )
    if args.out is not None:
        write_predictions(predictions, args.out)
    else:
        for item in predictions:
            labels = ", ".join(f"{label} ({item.scores[label]:.2f})" for label in item.labels)
            print(f"{item.file}: {labels}")
    if predictions.errors:
        print(f"mlcl: {len(predictions.errors)} file(s) could not be read", file=sys.stderr)
        return 1
    return 0


def _export(args: argparse.Namespace) -> int:
    from mlcl.export import export_model

    path = export_model(
        args.checkpoint,
        args.format,
        args.out,
        ema=args.ema,
        dynamic_batch=args.static_batch is None,
        batch_size=args.static_batch or 2,
    )
    print(f"wrote {path}")
    return 0


def _prototypes(args: argparse.Namespace) -> int:
    from mlcl.engine.prototypes import write_prototypes

    prototypes = write_prototypes(
        args.checkpoint,
        args.out,
        ema=args.ema,
        device=args.device,
        overrides=args.set,
        threshold=args.threshold,
    )
    classes, dim = prototypes.shape
    print(f"wrote {args.out}: {classes} prototypes of {dim} dimensions")
    return 0


def _presets(args: argparse.Namespace) -> int:
    from mlcl.config import describe_preset, list_presets

    names = list_presets()
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name:<{width}}  {describe_preset(name)}")
    return 0


# --------------------------------------------------------------------------- helpers


def _bench(args: argparse.Namespace) -> int:
    from mlcl.config import load_config
    from mlcl.tools.bench import benchmark, summary

    config = load_config(args.config, args.set)
    config.run.progress = False
    result = benchmark(
        config, steps=args.steps, warmup=args.warmup, repeats=args.repeats, data=args.data
    )
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    print(summary(result), file=sys.stderr)  # stdout stays one JSON document
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from mlcl.sweep import load_grid, run_sweep

    runs = load_grid(args.grid, args.notebooks)
    results = run_sweep(
        runs,
        args.out,
        kernel_name=args.kernel,
        rerun=args.rerun,
        cell_timeout=args.cell_timeout,
        retries=args.retries,
    )
    for result in results:
        status = "reused" if result.reused else result.status
        print(f"{status:6s}  {result.name}  ({result.seconds} s)  {result.error}")
    failed = sum(result.status != "ok" for result in results)
    print(f"{len(results) - failed} ok, {failed} failed; report: {args.out / 'report.md'}")
    return 1 if failed else 0


def format_metrics(metrics: dict[str, Any]) -> str:
    """The main metrics as a small table: one row at the threshold, one for the top 3 and one
    at the calibrated thresholds when there are some."""
    header = f"{'':8}" + "".join(f"{name:>8}" for name in MAIN_METRICS)
    rows = [header]
    rows_of = [("", ""), ("top-3", "_top3")] + [("cal", "@cal")] * ("CF1@cal" in metrics)
    for label, suffix in rows_of:
        cells = [metrics.get(name + suffix) for name in MAIN_METRICS]
        rows.append(f"{label:8}" + "".join(_cell(value) for value in cells))
    return "\n".join(rows)


def _cell(value: float | None) -> str:
    return f"{value:8.2f}" if isinstance(value, int | float) else f"{'':8}"


def _add_set_argument(parser: argparse.ArgumentParser, example: str = "") -> None:
    parser.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override configuration keys, e.g. run.epochs=2 optim.lr=1e-4 " + example,
    )


if __name__ == "__main__":
    sys.exit(main())
