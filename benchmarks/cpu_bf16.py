"""bf16 autocast on the CPU against float32: is it faster on this processor?

A benchmark, not a test: run it by hand and keep its Markdown (``--out``). Reduced precision only
pays on a CPU whose cores multiply bf16 natively (AVX512-BF16 or AMX); elsewhere oneDNN converts
and the matrix products run slower than in float32. The script records what the processor
offers, the measured matrix-multiply rate in both precisions, and ``mlcl bench``'s training step
(images/s, peak memory, MFU against the rate of the training's own precision) for each preset in
float32 (``run.amp=off``) and bf16 (``run.amp=bf16``), the two interleaved preset by preset.
Each ``mlcl bench`` runs in a process of its own: on a CPU its peak memory is the process's
peak resident set, which would otherwise carry over from one preset to the next.
With ``--train-seeds`` it also trains each preset as it is (its data, epochs and schedule) in
both precisions at each seed and compares the final mAP: the same-seed difference against the
difference between seeds tells whether bf16 costs accuracy. The runs are kept under
``--runs-dir``, and a run that finished there is read back, so a killed benchmark resumes.

    .venv/bin/python benchmarks/cpu_bf16.py --out benchmarks/results/precision/cpu_bf16_avx2.md
    .venv/bin/python benchmarks/cpu_bf16.py --presets baseline-quick q2l-quick ... \
        --train-seeds 0 1 --out benchmarks/results/precision/cpu_bf16_amx.md

Its results live in a folder of their own: chapter 09 reads every JSON file directly in
``benchmarks/results/`` as an ``mlcl bench`` result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from mlcl.config import load_config
from mlcl.engine import fit
from mlcl.engine.run_dir import environment_info, processor_name
from mlcl.tools.bench import measure_matmul_tflops

PRESETS = ("baseline-quick",)  # bf16 without native support is slow: one preset by default
PRECISIONS = ("off", "bf16")  # run.amp values: float32, then bf16 autocast


def bf16_cpu_flags() -> list[str]:
    """The processor's native bf16 features, from /proc/cpuinfo (Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return []
    flags = next(
        (line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), ""
    )
    return sorted({flag for flag in flags.split() if "bf16" in flag or flag.startswith("amx")})


def bench_in_own_process(
    preset: str, amp: str, steps: int, warmup: int, env: dict[str, str] | None = None
) -> dict:
    """``mlcl bench`` of ``preset`` on the CPU at ``run.amp=amp``, in a fresh process (with the
    environment ``env``, default this one's)."""
    with tempfile.TemporaryDirectory(prefix="mlcl-bf16-bench-") as folder:
        out = Path(folder) / "bench.json"
        command = [
            *(sys.executable, "-m", "mlcl.cli", "bench", "--config", preset),
            *("--steps", str(steps), "--warmup", str(warmup), "--repeats", "1"),
            *("--out", str(out), "--set", "run.device=cpu", f"run.amp={amp}"),
            "run.progress=false",
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
        return json.loads(out.read_text())


def train_in_both_precisions(preset: str, seeds: list[int], root: Path) -> dict[str, list]:
    """``{amp: [summary of seed, ...]}``: the preset trained as it is, on the CPU, in float32
    and in bf16 at each seed (the two precisions alternate seed by seed). A run whose
    ``summary.json`` is in ``root`` already is read back, not trained again."""
    runs: dict[str, list] = {amp: [] for amp in PRECISIONS}
    for seed in seeds:
        for amp in PRECISIONS:
            out_dir = root / preset / f"{amp}-seed{seed}"
            finished = out_dir / "summary.json"
            if finished.is_file():
                summary = json.loads(finished.read_text())
            else:
                overrides = {
                    "run.device": "cpu",
                    "run.amp": amp,
                    "run.seed": seed,
                    "run.progress": False,
                    "run.out_dir": str(out_dir),
                }
                summary = fit(load_config(preset, overrides), resume=True)
            runs[amp].append(
                {
                    "seed": seed,
                    **{
                        key: summary[key]
                        for key in ("final_map", "final_ema_map", "train_images_per_s", "time_s")
                    },
                }
            )
            print(preset, amp, seed, f"mAP {summary['final_map']:.2f}", file=sys.stderr)
    return runs


def run(
    presets: list[str], steps: int, warmup: int, train_seeds: list[int], runs_dir: Path
) -> dict:
    cpu = torch.device("cpu")
    record = {
        "processor": processor_name(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16_flags": bf16_cpu_flags(),
        "threads": torch.get_num_threads(),
        "matmul_tflops": {
            str(dtype).removeprefix("torch."): measure_matmul_tflops(cpu, dtype)[0]
            for dtype in (torch.float32, torch.bfloat16)
        },
        "presets": {},
        "training": {},
        "environment": environment_info(),
    }
    for preset in presets:
        for amp in PRECISIONS:
            result = bench_in_own_process(preset, amp, steps, warmup)
            record["presets"].setdefault(preset, {})[amp] = {
                key: result[key]
                for key in ("train_images_per_s", "peak_memory_mb", "mfu", "precision")
            }
            print(preset, amp, f"{result['train_images_per_s']:.1f} images/s", file=sys.stderr)
    for preset in presets if train_seeds else ():
        record["training"][preset] = train_in_both_precisions(preset, train_seeds, runs_dir)
    return record


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def training_lines(training: dict) -> list[str]:
    """The Markdown table of the final mAP in both precisions."""
    lines = [
        "",
        "Final validation mAP of each preset trained as it is (mean ± sample std over the seeds; "
        "EMA weights in brackets where the preset keeps an EMA). *bf16 − fp32, same seed*: the "
        "largest difference at one seed; *seed to seed*: the largest difference between two "
        "seeds in one precision, the noise the first is measured against.",
        "",
        "| preset | seeds | fp32 mAP | bf16 mAP | bf16 − fp32, same seed | seed to seed "
        "| fp32 train images/s | bf16 train images/s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for preset, runs in training.items():
        fp32, bf16 = runs["off"], runs["bf16"]
        maps = {amp: [run["final_map"] for run in runs[amp]] for amp in PRECISIONS}
        same_seed = max((b - f for b, f in zip(maps["bf16"], maps["off"])), key=abs)
        seed_to_seed = max(max(values) - min(values) for values in maps.values())
        cells = []
        for amp in PRECISIONS:
            cell = _mean_std(maps[amp])
            if runs[amp][0]["final_ema_map"] is not None:
                cell += f" ({_mean_std([run['final_ema_map'] for run in runs[amp]])})"
            cells.append(cell)
        speed = [statistics.median(run["train_images_per_s"] for run in r) for r in (fp32, bf16)]
        lines.append(
            f"| {preset} | {', '.join(str(run['seed']) for run in fp32)} | {cells[0]} "
            f"| {cells[1]} | {same_seed:+.2f} | {seed_to_seed:.2f} | {speed[0]:.1f} "
            f"| {speed[1]:.1f} |"
        )
    return lines


def markdown(record: dict, command: str) -> str:
    rates = record["matmul_tflops"]
    lines = [
        "# bf16 autocast on the CPU against float32",
        "",
        f"`{command}`",
        "",
        f"- processor: {record['processor']}; torch CPU capability "
        f"{record['torch_cpu_capability']}; native bf16 flags: "
        f"{', '.join(record['native_bf16_flags']) or 'none'}; {record['threads']} threads",
        f"- measured matrix-multiply rate: float32 {rates['float32'] * 1e3:.1f} GFLOP/s, "
        f"bf16 {rates['bfloat16'] * 1e3:.1f} GFLOP/s "
        f"({rates['bfloat16'] / rates['float32']:.2f}x)",
        "- `mlcl bench` training step on synthetic tensors, the preset's model, batch and size",
        *(
            f"- amended {amendment['date']} (commit {amendment['git_commit']}): "
            f"{amendment['change']}"
            for amendment in record.get("amendments", [])
        ),
        "",
        "| preset | fp32 images/s | bf16 images/s | bf16 speed-up | fp32 peak MB | bf16 peak MB "
        "| fp32 MFU | bf16 MFU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for preset, runs in record["presets"].items():
        fp32, bf16 = runs["off"], runs["bf16"]
        speedup = bf16["train_images_per_s"] / fp32["train_images_per_s"]
        lines.append(
            f"| {preset} | {fp32['train_images_per_s']:.1f} | {bf16['train_images_per_s']:.1f} "
            f"| {speedup:.2f}x | {fp32['peak_memory_mb']:.0f} | {bf16['peak_memory_mb']:.0f} "
            f"| {fp32['mfu']:.1%} | {bf16['mfu']:.1%} |"
        )
    if record.get("training"):
        lines += training_lines(record["training"])
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per precision")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--train-seeds", type=int, nargs="*", default=[], help="also train each preset at these"
    )
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("runs/cpu_bf16"),
        help="the --train-seeds runs; finished ones are read back",
    )
    parser.add_argument("--out", type=Path, help="write the Markdown here (and .json beside it)")
    args = parser.parse_args()
    record = run(args.presets, args.steps, args.warmup, args.train_seeds, args.runs_dir)
    text = markdown(record, "python " + " ".join(sys.argv))
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
