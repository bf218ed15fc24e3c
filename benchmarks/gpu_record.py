"""The GPU record: everything to measure on a lent GPU, most important first, within one call
of the device tool (at most 10 minutes).

On the development machine, once: ``make gpu-wheels`` puts into ``.gpu-wheels/`` the wheels of
mlcl's dependencies that the device image lacks (pydantic, pycocotools, for its Python 3.12).
Then, through the device tool, with ``carry=[".gpu-wheels"]``::

    bash benchmarks/gpu_record.sh all       # every part below in this order, within --deadline
    bash benchmarks/gpu_record.sh bench     # every full preset, eager (about 3 min)
    bash benchmarks/gpu_record.sh train     # AMP, EMA, a killed run resumed, on CUDA
    bash benchmarks/gpu_record.sh compile   # torch.compile, CUDA graphs, Scob's two phases
    bash benchmarks/gpu_record.sh data      # the loader against data.decode=device

A session has 15 minutes of device time, the machine's start included, and one call runs at most
10: ``all`` runs the parts most important first and gives each command what is left of
``--deadline`` seconds (540 by default), recording the commands it had no time for as skipped,
so that one call brings back whatever fitted. Each part writes every command's JSON and log
under ``--out``/<part>/ and prints a table last; ``gpu_record.sh`` packs them into
``$OUT/gpu-record.tar.gz``, to be unpacked into ``benchmarks/results/gpu/<device>/``.
``--smoke`` runs the same commands on the CPU with a tiny model and one step, to check them
before device time is spent on them.

The presets are trained from random weights (``model.pretrained=false``): the device machine
reaches no weight hub, and speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

PRESETS = ("baseline-coco", "q2l-coco", "sadcl-coco", "salgl-coco", "scob-coco")
BUILT_IN_448 = [  # the built-in data at the presets' size, for the parts that read images
    "data.dataset=synthetic",
    "data.root=",
    "data.synthetic_image_size=448",
    "data.synthetic_train=1024",
    "data.synthetic_val=128",
]
SMOKE = [  # --smoke: the same commands, small enough for a CPU
    "run.device=cpu",
    "model.backbone=test_resnet",
    "data.image_size=64",
    "data.batch_size=4",
    "data.eval_batch_size=4",
    "data.workers=0",
    "data.synthetic_image_size=64",
    "data.synthetic_train=32",
    "data.synthetic_val=8",
]


MIN_COMMAND_S = 45  # a command is not started with less time than this left before the deadline


class Recorder:
    """Runs ``mlcl`` commands one after another, each under a time limit and all before a
    deadline, keeping each one's log and a row for the closing table; a failed command is
    recorded and the part goes on, one there is no time left for is recorded as skipped."""

    def __init__(self, out: Path, smoke: bool, deadline: float) -> None:
        self.out = out
        self.smoke = smoke
        self.deadline = deadline  # time.monotonic() by which every command has ended
        self.rows: list[tuple[str, str, float]] = []
        out.mkdir(parents=True, exist_ok=True)

    def mlcl(
        self,
        name: str,
        args: list[str],
        overrides: list[str],
        limit_s: float,
        kill_at_step: int = 0,
    ) -> bool:
        """Run ``mlcl ARGS --set OVERRIDES``; with ``kill_at_step`` the process is killed
        (SIGKILL, through the engine's test hook) after that step, and that counts as success."""
        left = self.deadline - time.monotonic()
        if left < MIN_COMMAND_S:
            self.rows.append((name, "skipped (deadline)", 0.0))
            return False
        limit_s = min(limit_s, left)
        overrides = [*overrides, *(SMOKE if self.smoke else ["run.device=cuda"])]
        command = [sys.executable, "-m", "mlcl.cli", *args, "--set", *overrides]
        env = {**os.environ, "MLCL_TEST_KILL_AT": f"step:{kill_at_step}"} if kill_at_step else None
        expected = -signal.SIGKILL if kill_at_step else 0
        started = time.perf_counter()
        with open(self.out / f"{name}.log", "w") as log:
            log.write(" ".join(command) + "\n\n")
            log.flush()
            try:
                code = subprocess.run(
                    command, stdout=log, stderr=subprocess.STDOUT, timeout=limit_s, env=env
                ).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        seconds = time.perf_counter() - started
        self.rows.append((name, "ok" if code == expected else f"failed ({code})", seconds))
        return code == expected

    def bench(self, name: str, preset: str, overrides: list[str], data: bool = False) -> None:
        steps = ["--steps", "1", "--warmup", "0", "--repeats", "1"]
        if not self.smoke:
            steps = ["--steps", "10", "--warmup", "3", "--repeats", "3"]
        args = ["bench", "--config", preset, *steps, "--out", str(self.out / f"{name}.json")]
        if data:
            args.append("--data")
        self.mlcl(name, args, ["model.pretrained=false", *overrides], limit_s=300)

    def table(self) -> str:
        lines = ["| command | result | s | images/s | peak MB | MFU | data images/s |"]
        lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for name, result, seconds in self.rows:
            cells = ["", "", "", ""]
            path = self.out / f"{name}.json"
            if path.is_file():
                bench = json.loads(path.read_text())
                cells = [
                    f"{bench['train_images_per_s']:.1f}",
                    f"{bench['peak_memory_mb']:.0f}",
                    f"{bench['mfu']:.1%}",
                    f"{bench['data_images_per_s']:.1f}" if "data_images_per_s" in bench else "",
                ]
            lines.append(f"| {name} | {result} | {seconds:.0f} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def part_bench(recorder: Recorder) -> None:
    """Every full preset as shipped (bf16 autocast, channels-last, fused AdamW), eager."""
    for preset in PRESETS:
        recorder.bench(preset, preset, [])


def part_compile(recorder: Recorder) -> None:
    """torch.compile's default mode and CUDA graphs (reduce-overhead) on Query2Label, and Scob,
    whose contrastive phase is a second optimiser step of its own, under CUDA graphs."""
    recorder.bench("q2l-coco-compile", "q2l-coco", ["run.compile=true"])
    reduce_overhead = ["run.compile=true", "run.compile_mode=reduce-overhead"]
    recorder.bench("q2l-coco-cudagraphs", "q2l-coco", reduce_overhead)
    recorder.bench("scob-coco-cudagraphs", "scob-coco", reduce_overhead)


def part_data(recorder: Recorder) -> None:
    """The training loader (8 workers decoding and augmenting JPEGs) against data.decode=device
    (nvjpeg and the augmentations on the GPU), on the built-in data at 448 px: q2l-coco, whose
    crops, flips and Cutout both modes have (baseline-coco's RandAugment has no device version)."""
    for decode in ("loader", "device"):
        name = f"q2l-coco-decode-{decode}"
        recorder.bench(name, "q2l-coco", [*BUILT_IN_448, f"data.decode={decode}"], data=True)


def part_train(recorder: Recorder) -> None:
    """q2l-coco on the built-in data at 448 px for 300 steps with a checkpoint every 75, killed
    (SIGKILL) after step 150 and resumed (12, 6 and 3 with --smoke): the summary must count all
    300 steps, and the EMA must have been evaluated."""
    kill_at, total = (6, 12) if recorder.smoke else (150, 300)
    run_dir = recorder.out / "q2l-coco-run"
    overrides = [
        *BUILT_IN_448,
        "model.pretrained=false",
        "run.epochs=10",  # 32 steps an epoch
        f"run.checkpoint_every={kill_at // 2}",
        f"run.max_steps={total}",
        f"run.out_dir={run_dir}",
        "run.progress=false",
    ]
    train = ["train", "--config", "q2l-coco"]
    if not recorder.mlcl(f"train-killed-at-{kill_at}", train, overrides, 400, kill_at):
        return
    if not recorder.mlcl("train-resumed", [*train, "--resume"], overrides, limit_s=400):
        return
    summary = json.loads((run_dir / "summary.json").read_text())
    # The run's checkpoints stay on the device; its per-epoch metrics come back.
    shutil.copyfile(run_dir / "metrics.jsonl", recorder.out / "train_metrics.jsonl")
    checks = {
        "steps": summary["steps"] == total,
        "ema_evaluated": summary["final_ema_map"] is not None,
        "finite_map": summary["final_map"] is not None,
        "resumed": "resumed from" in (recorder.out / "train-resumed.log").read_text(),
    }
    (recorder.out / "train_checks.json").write_text(
        json.dumps({"checks": checks, "summary": summary}, indent=2) + "\n"
    )
    recorder.rows.append((f"train checks {checks}", "ok" if all(checks.values()) else "FAILED", 0))


# Most important first: ``all`` runs them in this order.
PARTS = {"bench": part_bench, "train": part_train, "compile": part_compile, "data": part_data}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=[*PARTS, "all"])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-record")))
    parser.add_argument("--smoke", action="store_true", help="on the CPU, tiny: a dry run")
    parser.add_argument(
        "--deadline", type=float, default=540, help="seconds from now by which every command ends"
    )
    args = parser.parse_args()
    deadline = time.monotonic() + args.deadline
    parts = list(PARTS) if args.part == "all" else [args.part]
    recorders = [Recorder(args.out / part, args.smoke, deadline) for part in parts]
    for part, recorder in zip(parts, recorders):
        PARTS[part](recorder)
    for part, recorder in zip(parts, recorders):
        print(f"\n## {part}\n\n{recorder.table()}")
    if any(result != "ok" for recorder in recorders for _, result, _ in recorder.rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
