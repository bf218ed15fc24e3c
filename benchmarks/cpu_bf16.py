"""bf16 autocast on the CPU against float32: is it faster on this processor?

A benchmark, not a test: run it by hand and keep its Markdown (``--out``). Reduced precision only
pays on a CPU whose cores multiply bf16 natively (AVX512-BF16 or AMX); elsewhere oneDNN converts
and the matrix products run slower than in float32. The script records what the processor
offers, the measured matrix-multiply rate in both precisions, and ``mlcl bench``'s training step
(images/s, peak memory, MFU against the rate of the training's own precision) for each preset in
float32 (``run.amp=off``) and bf16 (``run.amp=bf16``), the two interleaved preset by preset.

    .venv/bin/python benchmarks/cpu_bf16.py --out benchmarks/results/precision/cpu_bf16.md

Its results live in a folder of their own: chapter 09 reads every JSON file directly in
``benchmarks/results/`` as an ``mlcl bench`` result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mlcl.config import load_config
from mlcl.engine.run_dir import environment_info, processor_name
from mlcl.tools.bench import benchmark, measure_matmul_tflops

PRESETS = ("baseline-quick",)  # bf16 without native support is slow: one preset by default


def bf16_cpu_flags() -> list[str]:
    """The processor's native bf16 features, from /proc/cpuinfo (Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return []
    flags = next(
        (line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), ""
    )
    return sorted({flag for flag in flags.split() if "bf16" in flag or flag.startswith("amx")})


def run(presets: list[str], steps: int, warmup: int) -> dict:
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
        "environment": environment_info(),
    }
    for preset in presets:
        for amp in ("off", "bf16"):
            overrides = {"run.device": "cpu", "run.amp": amp, "run.progress": False}
            result = benchmark(
                load_config(preset, overrides), steps=steps, warmup=warmup, repeats=1
            )
            record["presets"].setdefault(preset, {})[amp] = {
                key: result[key]
                for key in ("train_images_per_s", "peak_memory_mb", "mfu", "precision")
            }
            print(preset, amp, f"{result['train_images_per_s']:.1f} images/s", file=sys.stderr)
    return record


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
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per precision")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the Markdown here (and .json beside it)")
    args = parser.parse_args()
    record = run(args.presets, args.steps, args.warmup)
    text = markdown(record, "python " + " ".join(sys.argv))
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
