"""Does ``run.amp: auto``'s bf16 probe tell a fast CPU bf16 from an emulated one?

``mlcl.engine.optim.cpu_bf16_is_faster`` trains in bf16 on the CPU only where the processor has
native bf16 *and* a small product and convolution run faster in bf16 autocast than in float32
(``cpu_bf16_speedup``). The flags are not enough because oneDNN picks its instructions itself:
``ONEDNN_MAX_CPU_ISA`` caps what it uses, as a virtual machine that hides the bf16 instructions
would. This script runs, in a fresh process under each cap, the probe and ``mlcl bench`` of a
preset's training step in float32 and in bf16, so the probe's verdict can be read against the
step it predicts.

    .venv/bin/python benchmarks/bf16_probe.py --out benchmarks/results/precision/bf16_probe.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from cpu_bf16 import bench_in_own_process

from mlcl.engine.run_dir import git_commit, processor_name

# What oneDNN may use: unset (all the CPU has), no bf16 instructions, no AVX-512 at all.
CAPS = (None, "AVX512_CORE", "AVX2")
PROBE = (
    "import json, time, torch; from mlcl.engine import optim; start = time.perf_counter(); "
    "speedup = optim.cpu_bf16_speedup(); seconds = time.perf_counter() - start; "
    "print(json.dumps({'native': optim.cpu_has_native_bf16(), 'speedup': speedup, "
    "'probe_s': seconds, 'auto_bf16': optim.cpu_bf16_is_faster(), "
    "'threads': torch.get_num_threads()}))"
)


def environment(cap: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "ONEDNN_MAX_CPU_ISA"}
    return env if cap is None else env | {"ONEDNN_MAX_CPU_ISA": cap}


def measure(cap: str | None, preset: str, steps: int) -> dict:
    env = environment(cap)
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, check=True, capture_output=True, text=True
    )
    row = {"cap": cap or "(none)", **json.loads(probe.stdout)}
    for amp in ("off", "bf16"):
        result = bench_in_own_process(preset, amp, steps=steps, warmup=1, env=env)
        row[f"step_ms_{amp}"] = result["train_step_ms"]
    row["step_speedup"] = row["step_ms_off"] / row["step_ms_bf16"]
    return row


def markdown(rows: list[dict], preset: str, command: str) -> str:
    lines = [
        "# The bf16 probe of run.amp: auto against the training step it predicts",
        "",
        f"- processor: {processor_name()}; {rows[0]['threads']} torch threads",
        f"- commit: {git_commit()}",
        f"- command: `{command}`",
        f"- step: `mlcl bench --config {preset}` on the CPU, float32 (`run.amp=off`) and bf16",
        "",
        "| ONEDNN_MAX_CPU_ISA | native flags | probe: bf16 speed-up | probe time | auto trains in "
        "| step float32 (ms) | step bf16 (ms) | step: bf16 speed-up |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['cap']} | {'yes' if row['native'] else 'no'} | {row['speedup']:.2f}x "
            f"| {row['probe_s']:.2f} s | {'bf16' if row['auto_bf16'] else 'float32'} "
            f"| {row['step_ms_off']:.0f} | {row['step_ms_bf16']:.0f} | {row['step_speedup']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="baseline-quick")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per precision")
    parser.add_argument("--out", type=Path, help="write the Markdown here (and .json beside it)")
    args = parser.parse_args()
    rows = [measure(cap, args.preset, args.steps) for cap in CAPS]
    text = markdown(rows, args.preset, "python " + " ".join(sys.argv))
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
