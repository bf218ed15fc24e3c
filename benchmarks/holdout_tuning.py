"""Tune the methods that lose at the book's budget, on the holdout split, never on validation.

    .venv/bin/python benchmarks/holdout_tuning.py

MulCon and SADCL come with the weights their papers and code use on COCO (a contrastive weight
of 1 and τ = 0.1; 100·SSCL + 50·PSCL), and at the book's budget both lose to their baselines
(``benchmarks/results/method_effects.md``). Before the book says a method does not help, it gives
it a fair chance: a small grid of the method's own loss weights and temperature, every point
trained at ``mlcl.effects.BUDGET`` on the training images minus a fifth held out
(``data.holdout=0.2``, one fixed draw) and scored on that held-out fifth, over two seeds. The
validation split takes no part in the choice: it is what the benchmark then reports.

Writes ``benchmarks/results/holdout_tuning/holdout_tuning.{json,md}``: each point's per-seed
holdout mAP, mean and standard deviation, and each method's chosen point (the highest mean). The
chosen values are the overrides of the ``"<method>, tuned on holdout"`` variants of
``mlcl.effects`` (a test checks the two agree); ``method_effects.py --add`` measures them on
validation beside the rest. Runs go to ``runs/holdout-tuning/``; a finished one is read back.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from method_effects import atomic_write, git_commit, machine_info, now

from mlcl.effects import BUDGET, METRIC, VARIANTS, Spread, Variant, seeds_of, train_variant

RESULTS = Path(__file__).parent / "results" / "holdout_tuning" / "holdout_tuning"
HOLDOUT = 0.2

# Each method's grid: its variant in mlcl.effects and the points tried (the first is its default).
GRIDS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "mulcon": (
        "mulcon",
        [
            {"method.contrastive_weight": weight, "method.temperature": temperature}
            for weight, temperature in ((1.0, 0.1), (0.1, 0.1), (0.1, 0.3), (0.0, 0.1))
        ],
    ),
    "sadcl": (
        "sadcl",
        [
            {"method.sscl_weight": sscl, "method.pscl_weight": pscl}
            for sscl, pscl in ((100.0, 50.0), (10.0, 5.0), (1.0, 0.5), (0.1, 0.05), (0.0, 0.0))
        ],
    ),
}


def point_name(method: str, overrides: dict[str, Any]) -> str:
    """``mulcon, contrastive_weight 0.3, temperature 0.1``: the run folder's name."""
    return ", ".join(
        [method] + [f"{k.removeprefix('method.')} {v:g}" for k, v in overrides.items()]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 of every point")
    parser.add_argument("--only", nargs="+", choices=sorted(GRIDS), default=sorted(GRIDS))
    parser.add_argument("--root", default="runs/holdout-tuning", help="where the runs go")
    parser.add_argument("--out", default=str(RESULTS), help="results path without suffix")
    args = parser.parse_args(argv)

    budget = BUDGET | {"data.holdout": HOLDOUT}
    record: dict[str, Any] = {
        "command": shlex.join(["python", "benchmarks/holdout_tuning.py", *(argv or sys.argv[1:])]),
        "started": now(),
        "machine": machine_info(),
        "git_commit": git_commit(),
        "budget": budget,
        "split": "holdout",
        "metric": METRIC,
        "seeds": seeds_of(args.seeds),
        "methods": {},
    }
    for method in args.only:
        base_name, points = GRIDS[method]
        base = VARIANTS[base_name]
        results = []
        for overrides in points:
            variant = Variant(
                point_name(method, overrides), base.preset, base.overrides | overrides
            )
            values = []
            for seed in record["seeds"]:
                summary = train_variant(variant, seed, args.root, budget, split="holdout")
                values.append(summary[METRIC])
                print(f"{variant.name:<52} seed {seed}  holdout mAP {values[-1]:6.2f}", flush=True)
            spread = Spread(tuple(values))
            results.append(
                {"overrides": overrides, "values": values, "mean": spread.mean, "std": spread.std}
            )
        chosen = max(results, key=lambda result: result["mean"])
        record["methods"][method] = {
            "variant": base_name,
            "preset": base.preset,
            "points": results,
            "default": points[0],
            "chosen": chosen["overrides"],
        }
        _write(record, Path(args.out))
    record["finished"] = now()
    _write(record, Path(args.out))
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0


def _write(record: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out.with_suffix(".json"), json.dumps(record, indent=1) + "\n")
    atomic_write(out.with_suffix(".md"), _markdown(record))


def _markdown(record: dict[str, Any]) -> str:
    machine = record["machine"]
    lines = [
        "# Tuning on the holdout split: the losing methods' own weights",
        "",
        f"Command: `{record['command']}` (commit {record['git_commit']}), started "
        f"{record['started']}, finished {record.get('finished', '(still running)')}.",
        f"Machine: {machine['processor']}, {machine['cores']} cores, torch {machine['torch']}.",
        f"Budget: `mlcl.effects.BUDGET` with `data.holdout={record['budget']['data.holdout']}`: "
        "training on the other images, every point scored on the held-out ones "
        f"(`{record['metric']}`, the last epoch's mAP), seeds "
        f"{', '.join(map(str, record['seeds']))}. The validation split is not used.",
    ]
    for amendment in record.get("amendments", []):
        lines.append(
            f"Amended {amendment['date']} (commit {amendment['git_commit']}): {amendment['change']}"
        )
    for method, result in record["methods"].items():
        keys = list(result["default"])
        lines += ["", f"## {method}", ""]
        lines += ["| " + " | ".join(k.removeprefix("method.") for k in keys)]
        lines[-1] += " | holdout mAP mean ± std | per seed | |"
        lines += ["| " + " | ".join("---" for _ in keys) + " | --- | --- | --- |"]
        for point in result["points"]:
            marks = []
            if point["overrides"] == result["default"]:
                marks.append("default")
            if point["overrides"] == result["chosen"]:
                marks.append("**chosen**")
            values = ", ".join(f"{v:.2f}" for v in point["values"])
            lines.append(
                "| "
                + " | ".join(f"{point['overrides'][k]:g}" for k in keys)
                + f" | {point['mean']:.2f} ± {point['std']:.2f} | {values} | {', '.join(marks)} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
