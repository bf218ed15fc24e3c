"""Training step time of q2l, mulcon and sadcl against the baseline, and the losses' share of it.

A benchmark, not a test: run it by hand and keep the printed table (``--out`` writes it as
Markdown). Every method gets the same backbone, image size and batch (the ``*-quick`` presets'
models: ResNet-18 at stride 16, 96 px, batch 32, 24 classes); one step is forward, backward,
AdamW step and ``after_step``, on a fixed random batch with about three positives per image.
The methods are timed in interleaved rounds, so a change in the machine's load hits all alike;
the median over rounds is reported, as wall-clock time and as the process's CPU time.

The losses' share is measured apart: forward and backward of everything after the network's
label-level features / logits (classification loss; MulCon's projector and contrastive loss;
SADCL's projector, memory projection, SSCL and PSCL), on detached copies of those tensors.

A last table compares SSCL computed on present labels only (``mlcl.losses.sscl_loss``) with the
same formula on the dense ``V·B·C`` square matrix (what the reference code builds) at SADCL's
COCO size (B = 32, C = 80, d = 1024).

    .venv/bin/python benchmarks/step_time.py --out benchmarks/step_time_cpu.md
    .venv/bin/python benchmarks/step_time.py --threads 1 --sscl-batches --no-header \
        --append --out benchmarks/step_time_cpu.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from mlcl.config import load_config
from mlcl.losses import multilabel_supcon_loss, sscl_loss
from mlcl.methods import build_method
from mlcl.methods.baseline import classification_loss

PRESETS = {
    "baseline": "baseline-quick",
    "q2l": "q2l-quick",
    "mulcon": "mulcon-quick",
    "sadcl": "sadcl-quick",
}


def random_batch(batch_size: int, image_size: int, num_classes: int) -> dict[str, torch.Tensor]:
    """Random images; labels with about three positives per image, at least one each."""
    generator = torch.Generator().manual_seed(0)
    labels = (torch.rand(batch_size, num_classes, generator=generator) < 3 / num_classes).float()
    labels[
        torch.arange(batch_size), torch.randint(num_classes, (batch_size,), generator=generator)
    ] = 1
    return {
        "image": torch.randn(batch_size, 3, image_size, image_size, generator=generator),
        "labels": labels,
        "observed": torch.ones(batch_size, num_classes, dtype=torch.bool),
        "index": torch.arange(batch_size),
    }


def build(name: str, args: argparse.Namespace, num_classes: int):
    overrides = {
        "model.backbone": args.backbone,
        "model.output_stride": args.output_stride,
        "data.batch_size": args.batch_size,
        "data.image_size": args.image_size,
    }
    config = load_config(PRESETS[name], overrides)
    torch.manual_seed(0)
    method = build_method(config, num_classes=num_classes, num_train_images=10 * args.batch_size)
    method.on_epoch_start(1)  # past the quick presets' stage 1: every loss term is on
    method.train()
    optimizer = torch.optim.AdamW(method.param_groups("main", 1e-4), lr=1e-4)
    return method, optimizer


def train_step(method, optimizer, batch) -> dict[str, torch.Tensor]:
    outputs = method(batch)
    optimizer.zero_grad(set_to_none=True)
    outputs["loss"].backward()
    optimizer.step()
    with torch.no_grad():
        method.after_step(batch, outputs)
    return outputs


def loss_step(method, batch, outputs) -> None:
    """Forward and backward of the method's losses alone, from detached network outputs."""
    options = method.options
    logits = outputs["logits"].detach().requires_grad_()
    loss = classification_loss(logits, batch["labels"], options)
    if method.name in ("mulcon", "sadcl"):
        features = outputs["label_features"].detach().requires_grad_()
        if method.name == "mulcon":
            projected = method.projector(features)
            loss = loss + multilabel_supcon_loss(projected, batch["labels"], options.temperature)
        else:
            sscl, pscl = method.contrastive_losses(features, batch["labels"])
            loss = loss + options.sscl_weight * sscl + options.pscl_weight * pscl
    loss.backward()


def network_outputs(method, batch) -> dict[str, torch.Tensor]:
    """Logits and (where the method has them) label-level features of one forward."""
    if method.name == "baseline":
        return {"logits": method.predict(batch["image"])}
    return method.model(batch["image"])


def time_methods(args: argparse.Namespace) -> list[dict]:
    num_classes = args.num_classes
    batch = random_batch(args.batch_size, args.image_size, num_classes)
    built = {name: build(name, args, num_classes) for name in args.methods}
    step_times = {name: [] for name in args.methods}
    cpu_times = {name: [] for name in args.methods}
    loss_times = {name: [] for name in args.methods}
    for method, optimizer in built.values():
        for _ in range(args.warmup):
            train_step(method, optimizer, batch)
    for _ in range(args.rounds):
        for name, (method, optimizer) in built.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                train_step(method, optimizer, batch)
            step_times[name].append((time.perf_counter() - start) / args.steps)
            cpu_times[name].append((time.process_time() - cpu_start) / args.steps)
            with torch.no_grad():
                outputs = network_outputs(method, batch)
            start = time.perf_counter()
            for _ in range(args.steps):
                loss_step(method, batch, outputs)
            loss_times[name].append((time.perf_counter() - start) / args.steps)
    rows = []
    for name in args.methods:
        step = statistics.median(step_times[name])
        loss = statistics.median(loss_times[name])
        rows.append(
            {
                "method": name,
                "step_ms": 1e3 * step,
                "cpu_ms": 1e3 * statistics.median(cpu_times[name]),
                "images_per_s": args.batch_size / step,
                "loss_ms": 1e3 * loss,
                "loss_share": loss / step,
            }
        )
    return rows


def dense_sscl(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """The SSCL formula on the dense ``(V·B·C)²`` similarity matrix, absent labels masked."""
    batch, views, classes, _ = features.shape
    z = F.normalize(features, dim=-1).reshape(batch * views * classes, -1)
    present = (labels > 0.5)[:, None, :].expand(batch, views, classes).reshape(-1)
    class_of = torch.arange(classes).repeat(batch * views)
    logits = z @ z.T / temperature
    not_self = ~torch.eye(len(z), dtype=torch.bool)
    contrast = present[None, :] & present[:, None] & not_self
    logits = logits.masked_fill(~contrast, float("-inf"))
    positives = contrast & (class_of[:, None] == class_of[None, :])
    log_prob = logits - logits.logsumexp(dim=1, keepdim=True)
    anchors = positives.any(dim=1)
    per_anchor = torch.where(positives, log_prob, 0.0).sum(1)[anchors] / positives.sum(1)[anchors]
    return -per_anchor.mean()


def time_sscl(batch_size: int, repeats: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    labels = (torch.rand(batch_size, 80, generator=generator) < 3 / 80).float()
    labels[torch.arange(batch_size), torch.randint(80, (batch_size,), generator=generator)] = 1
    features = torch.randn(batch_size, 2, 80, 1024, generator=generator, requires_grad=True)
    result = {"batch": batch_size}
    values = {}
    for name, loss_fn in (("present", sscl_loss), ("dense", dense_sscl)):
        times = []
        for _ in range(repeats + 1):
            features.grad = None
            start = time.perf_counter()
            loss = loss_fn(features, labels, 0.2)
            loss.backward()
            times.append(time.perf_counter() - start)
        values[name] = (loss.item(), features.grad.clone())
        result[f"{name}_ms"] = 1e3 * statistics.median(times[1:])  # first: warm-up
    torch.testing.assert_close(values["present"][1], values["dense"][1], rtol=1e-4, atol=1e-6)
    result["speed_up"] = result["dense_ms"] / result["present_ms"]
    return result


def markdown(rows: list[dict], sscl_rows: list[dict], args: argparse.Namespace) -> str:
    title = [""] if args.no_header else ["# Training step time on the CPU", ""]
    lines = [
        *title,
        f"## {torch.get_num_threads()} torch thread(s)",
        "",
        f"`{' '.join(args.command)}`",
        "",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"- load average when done (other jobs share this machine): "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}",
        f"- backbone {args.backbone} (output stride {args.output_stride}), {args.image_size} px, "
        f"batch {args.batch_size}, {args.num_classes} classes, float32; the *-quick presets' "
        f"heads; median of {args.rounds} interleaved rounds of {args.steps} steps",
        "- CPU time: the process's CPU seconds per step over all its threads; on a shared "
        "machine it depends less on waiting for a core than the wall-clock step does",
        "",
        "| method | step (ms) | images/s | vs baseline | CPU time (ms) | CPU vs baseline "
        "| losses (ms) | losses' share |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = next((row for row in rows if row["method"] == "baseline"), None)
    for row in rows:
        ratio = f"{row['step_ms'] / base['step_ms']:.2f}x" if base else "-"
        cpu_ratio = f"{row['cpu_ms'] / base['cpu_ms']:.2f}x" if base else "-"
        lines.append(
            f"| {row['method']} | {row['step_ms']:.0f} | {row['images_per_s']:.1f} | {ratio} | "
            f"{row['cpu_ms']:.0f} | {cpu_ratio} | {row['loss_ms']:.1f} | "
            f"{100 * row['loss_share']:.1f} % |"
        )
    if sscl_rows:
        lines += [
            "",
            "SSCL forward + backward, present labels only vs the dense (V·B·C)² matrix "
            "(C = 80, d = 1024, V = 2, about 3 labels per image; same gradient checked):",
            "",
            "| B | present only (ms) | dense (ms) | speed-up |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for row in sscl_rows:
            lines.append(
                f"| {row['batch']} | {row['present_ms']:.1f} | {row['dense_ms']:.0f} | "
                f"{row['speed_up']:.0f}x |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--output-stride", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=24)  # the built-in data set's
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sscl-batches", type=int, nargs="*", default=[16, 32])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--no-header", action="store_true", help="omit the title (appending)")
    parser.add_argument("--out", default="")
    parser.add_argument("--append", action="store_true", help="append to --out")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.command = ["python", "benchmarks/step_time.py", *sys.argv[1:]]
    rows = time_methods(args)
    sscl_rows = [time_sscl(batch, repeats=3) for batch in args.sscl_batches]
    text = markdown(rows, sscl_rows, args)
    print(text)
    if args.out:
        with open(args.out, "a" if args.append else "w") as file:
            file.write(text)


if __name__ == "__main__":
    main()
