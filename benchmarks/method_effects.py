"""The evidence table: every comparison and ablation of the book, at the chapters' budget, over
seeds.

    .venv/bin/python benchmarks/method_effects.py --seeds 3

trains each variant of ``mlcl.effects.VARIANTS`` that a comparison uses, seed after seed (all
variants at seed 0 first, so an interrupted run already compares something), into
``runs/method-effects/<variant>/seed<N>/``, and rewrites ``benchmarks/results/method_effects.json``
and ``.md`` after every run: for each variant the per-seed final-epoch mAP, mean and standard
deviation, the per-epoch curves and the seconds each run took; for each comparison its claims
with the gap, the larger standard deviation and the verdict; the budget, the data setting, the
machine and the command. Started again, it reads back the runs that finished with the same
configuration and trains only the others.

``--only`` limits it to some comparisons; ``--set KEY=VALUE`` changes the budget (a smoke run:
``--set run.epochs=1 data.synthetic_train=200``); results of a changed budget say so.
``--add VARIANT ...`` trains only those variants (new ones, e.g. a method tuned on the holdout
split by ``benchmarks/holdout_tuning.py``) and adds them to the existing record, whose other
variants stay as they were measured; it refuses a record of another budget or other seeds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from mlcl.effects import (
    BUDGET,
    COMPARISONS,
    METRIC,
    VARIANTS,
    Spread,
    claim_rows,
    epoch_curve,
    run_dir,
    seeds_of,
    train_variant,
)
from mlcl.engine.run_dir import git_commit as commit_of_checkout
from mlcl.engine.run_dir import processor_name

RESULTS = Path(__file__).parent / "results" / "method_effects"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of every variant")
    parser.add_argument("--only", nargs="+", default=None, help="comparison names")
    parser.add_argument("--root", default="runs/method-effects", help="where the runs go")
    parser.add_argument("--out", default=str(RESULTS), help="results path without suffix")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="budget")
    parser.add_argument("--add", nargs="+", default=None, metavar="VARIANT", help="add to record")
    args = parser.parse_args(argv)

    budget = dict(BUDGET)
    for item in args.set:
        key, _, value = item.partition("=")
        budget[key] = yaml.safe_load(value)
    comparisons = [c for c in COMPARISONS if args.only is None or c.name in args.only]
    if not comparisons:
        parser.error(
            f"--only: no such comparison (known: {', '.join(c.name for c in COMPARISONS)})"
        )
    names = list(dict.fromkeys(v for c in comparisons for v in c.variants))
    seeds = seeds_of(args.seeds)
    command = shlex.join(["python", "benchmarks/method_effects.py", *(argv or sys.argv[1:])])

    runs: dict[str, dict[int, dict[str, Any]]] = {}
    if args.add:
        record = _record_to_add_to(parser, args, budget, seeds)
        record.setdefault("additions", []).append(
            {"command": command, "variants": args.add, "started": now(), "git_commit": git_commit()}
        )
        runs = _measured_runs(record, keep=set(record["variants"]) - set(args.add))
        names = list(args.add)
    else:
        record = {
            "command": command,
            "started": now(),
            "machine": machine_info(),
            "git_commit": git_commit(),
            "budget": budget,
            "budget_changed": {k: v for k, v in budget.items() if BUDGET.get(k) != v},
            "metric": METRIC,
            "seeds": seeds,
            "variants": {},
            "comparisons": [],
        }
    runs |= {name: {} for name in names}
    for seed in seeds:
        for name in names:
            summary = train_variant(name, seed, args.root, budget)
            runs[name][seed] = {
                "value": summary[METRIC],
                "seconds": summary["time_s"],
                "curve": epoch_curve(run_dir(args.root, name, seed)),
                "epochs": summary["epochs"],
            }
            print(f"{name:<32} seed {seed}  mAP {summary[METRIC]:6.2f}", flush=True)
            _write(record, runs, comparisons, Path(args.out))
    (record["additions"][-1] if args.add else record)["finished"] = now()
    _write(record, runs, comparisons, Path(args.out))
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0


def _record_to_add_to(
    parser: argparse.ArgumentParser, args: argparse.Namespace, budget: dict, seeds: list[int]
) -> dict[str, Any]:
    """The record ``--add`` extends, checked: it exists, and its budget and seeds are these."""
    path = Path(args.out).with_suffix(".json")
    if args.only is not None:
        parser.error("--add extends the whole record: leave out --only")
    unknown = [name for name in args.add if name not in VARIANTS]
    if unknown:
        parser.error(f"--add: no variant {', '.join(map(repr, unknown))} in mlcl.effects.VARIANTS")
    if not path.is_file():
        parser.error(f"--add: {path} does not exist; run the whole benchmark first")
    record = json.loads(path.read_text())
    if record["budget"] != budget or record["seeds"] != seeds:
        parser.error(
            f"--add: {path} was measured with another budget or seeds ({record['seeds']}); "
            "its variants and the added ones would not compare: run the whole benchmark"
        )
    return record


def _measured_runs(record: dict[str, Any], keep: set[str]) -> dict[str, dict[int, dict]]:
    """The per-seed runs of the record's variants in ``keep``, as ``main`` collects them."""
    return {
        name: {
            seed: {"value": value, "seconds": seconds, "curve": curve}
            for seed, value, seconds, curve in zip(
                variant["seeds"], variant["values"], variant["seconds"], variant["curves"]
            )
        }
        for name, variant in record["variants"].items()
        if name in keep
    }


def _write(record: dict, runs: dict, comparisons: list, out: Path) -> None:
    spreads = {
        name: Spread(tuple(run["value"] for run in per_seed.values()))
        for name, per_seed in runs.items()
        if per_seed
    }
    record["variants"] = {
        name: {
            "preset": VARIANTS[name].preset,
            "overrides": VARIANTS[name].overrides,
            "description": VARIANTS[name].description,
            "seeds": list(per_seed),
            "values": [run["value"] for run in per_seed.values()],
            "mean": spreads[name].mean,
            "std": spreads[name].std,
            "seconds": [run["seconds"] for run in per_seed.values()],
            "curves": [run["curve"] for run in per_seed.values()],
        }
        for name, per_seed in runs.items()
        if per_seed
    }
    record["comparisons"] = [
        {
            "name": c.name,
            "chapter": c.chapter,
            "variants": list(c.variants),
            "claims": claim_rows(c, spreads) if all(v in spreads for v in c.variants) else [],
        }
        for c in comparisons
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out.with_suffix(".json"), json.dumps(record, indent=1, default=str) + "\n")
    atomic_write(out.with_suffix(".md"), _markdown(record))


def _markdown(record: dict) -> str:
    variants = record["variants"]
    lines = [
        "# Method effects: each comparison and ablation over seeds",
        "",
        f"Command: `{record['command']}` (commit {record['git_commit']}), started "
        f"{record['started']}, finished {record.get('finished', '(still running)')}.",
        f"Machine: {record['machine']['processor']}, {record['machine']['cores']} cores, "
        f"torch {record['machine']['torch']} ({record['machine']['threads']} threads).",
        f"Budget (every variant): {_budget_text(record['budget'])}.",
        f"Value: `{record['metric']}`, the validation mAP after the last epoch (no epoch or "
        "seed is chosen on it); mean ± sample standard deviation over seeds "
        f"{', '.join(map(str, record['seeds']))}. A claim *wins* when the gap of the means "
        "exceeds the larger of the two standard deviations.",
    ]
    if record["budget_changed"]:
        lines.append(f"**Budget changed from the chapters'**: {record['budget_changed']}.")
    for amendment in record.get("amendments", []):
        lines.append(
            f"Amended {amendment['date']} (commit {amendment['git_commit']}): {amendment['change']}"
        )
    for addition in record.get("additions", []):
        lines.append(
            f"Added later by `{addition['command']}` (commit {addition['git_commit']}, finished "
            f"{addition.get('finished', '(still running)')}): {', '.join(addition['variants'])}."
        )
    for comparison in record["comparisons"]:
        lines += ["", f"## {comparison['name']} (chapter {comparison['chapter'][:2]})", ""]
        lines += ["| variant | mAP mean ± std | per seed | s / run | what it is |"]
        lines += ["| --- | --- | --- | --- | --- |"]
        for name in comparison["variants"]:
            if name not in variants:
                continue
            v = variants[name]
            per_seed = ", ".join(f"{x:.2f}" for x in v["values"])
            seconds = sum(v["seconds"]) / len(v["seconds"])
            lines.append(
                f"| {name} | {v['mean']:.2f} ± {v['std']:.2f} | {per_seed} | {seconds:.0f} "
                f"| {v['description']} |"
            )
        if comparison["claims"]:
            lines += ["", "| claim | gap | larger std | verdict |", "| --- | --- | --- | --- |"]
            for claim in comparison["claims"]:
                lines.append(
                    f"| {claim['claim']} | {claim['gap']:+.2f} | {claim['larger_std']:.2f} "
                    f"| {claim['verdict']} |"
                )
    return "\n".join(lines) + "\n"


def _budget_text(budget: dict[str, Any]) -> str:
    keys = (
        "data.synthetic_setting",
        "data.synthetic_train",
        "data.synthetic_val",
        "data.image_size",
        "model.backbone",
        "run.epochs",
        "data.batch_size",
        "run.amp",
    )
    return ", ".join(f"`{key}={budget[key]}`" for key in keys)


def atomic_write(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def machine_info() -> dict[str, Any]:
    return {
        "processor": processor_name(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def git_commit() -> str:
    """The short commit of the code, for the record."""
    return (commit_of_checkout() or "unknown")[:7]


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


if __name__ == "__main__":
    raise SystemExit(main())
