"""SADCL's training step side by side: the public code (the "seed") against mlcl's, on a CPU.

    python benchmarks/seed_side_by_side.py --seed-lib /path/to/SADCL/code/lib_sadcl

The seed's code is never copied here: it is imported at run time from the folder given on the
command line (``code/lib_sadcl`` of a checkout of the public SADCL repository, or the checkout
itself). It does not import as published, so the driver works around two faults without
touching the seed's files:

- its ``models`` package imports every backbone it knows (TResNet, Swin, CvT, ...) and its
  ``models.loss`` package imports a ``SimMinLoss`` that no module defines. Both packages are put
  in ``sys.modules`` as empty packages over the seed's folders, so that only the modules the
  SADCL model needs (``models.sadcl``, ``models.backbone``, ``models.transformer``, the three
  loss modules) are imported, from the seed's files;
- ``models.backbone`` imports the CvT and ViT/Swin builders and ``utils.misc`` imports a config
  reader that needs ``addict`` and ``yapf``: those modules are stubbed (unused by a ResNet).

Configuration (both sides): ResNet-50 without pretrained weights at 224 px, batch 8, 80 classes,
hidden size 2048 (no input projection), feed-forward 8192, 1 encoder + 2 decoder layers, 4
heads, dropout 0.1, no self-attention among queries, ASL (γ+ 0, γ− 4, clip 0) + 100·SSCL +
50·PSCL with the memory bank, AdamW lr 5e-5, weight decay 5e-3, one-cycle schedule, no EMA.
Each side keeps its own recipe where the two differ (see ``RECIPE_DIFFERENCES``).

Precision: float32 on both sides by default. mlcl follows its ``run.amp`` (``--mlcl-set
run.amp=bf16`` trains in bf16 autocast, as ``run.amp: auto`` does on a CPU with native bf16);
the seed code has no CPU autocast (its ``--amp`` is CUDA's), so as published it trains in
float32 on a CPU. ``--seed-amp bf16`` wraps its forward and losses in the CPU's bf16 autocast,
the same regions its engine autocasts on a GPU, for a comparison of the two in one precision.

Each side runs in its own worker process, so that its peak resident memory (``ru_maxrss``,
``VmHWM``) is its own; the parent alternates the timed steps (one seed step, one mlcl step,
...), so that both sides see the same load on a shared machine, and the idle side waits on a
pipe. Reported per side: median images/s over the timed steps, peak memory, the resident memory
after imports (before the model is built), parameters (all / trainable), buffers, optimiser
state, and the bytes of the tensors autograd saves for backward in one step (each storage once,
parameters left out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

BATCH, IMAGE, CLASSES, DIM, FF = 8, 224, 80, 2048, 8192
MLCL_OVERRIDES = [
    "run.device=cpu",
    "model.backbone=resnet50",
    "model.pretrained=false",
    f"data.image_size={IMAGE}",
    f"data.batch_size={BATCH}",
    "run.amp=off",
    "run.ema=0",
    "run.progress=false",
]


def mlcl_overrides(extra: list[str]) -> list[str]:
    """MLCL_OVERRIDES with ``extra`` applied: a key given again replaces its value in place."""
    malformed = [item for item in extra if "=" not in item]
    if malformed:
        raise SystemExit(f"--mlcl-set {malformed[0]!r}: expected KEY=VALUE")
    merged = dict(item.split("=", 1) for item in MLCL_OVERRIDES)
    merged.update(item.split("=", 1) for item in extra)
    return [f"{key}={value}" for key, value in merged.items()]


RECIPE_DIFFERENCES = [
    "seed: torchvision ResNet-50; mlcl: timm ResNet-50 (the same layers). Both keep the stem, "
    "layer1 and every BatchNorm fixed (the seed's Backbone; mlcl's q2l-coco and sadcl-coco: "
    "model.frozen_stages=2, model.frozen_batchnorm=true)",
    "seed: no gradient clipping (commented out in its engine); mlcl: gradient norm clipped at 10",
    "seed: weight decay on every parameter (its script's --pattern_parameters single_lr); "
    "mlcl: no weight decay on biases and norms",
    "seed: SSCL on the dense (2·B·C)² similarity matrix; mlcl: on the present labels only",
]


# --------------------------------------------------------------------------- memory figures


def _status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _mb(kilobytes: float) -> float:
    return kilobytes / 1024


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def optimizer_state_bytes(optimizer) -> int:
    import torch

    return sum(
        tensor_bytes(v for v in state.values() if isinstance(v, torch.Tensor))
        for state in optimizer.state.values()
    )


class SavedBytes:
    """Bytes of the tensors autograd saves for backward while active: each storage once, at the
    largest size saved from it; storages of ``exclude`` (the parameters) left out."""

    def __init__(self, exclude) -> None:
        import torch

        self._excluded = {p.untyped_storage().data_ptr() for p in exclude}
        self._saved: dict[int, tuple[Any, int]] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self.bytes = 0

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self._excluded:
            size = tensor.numel() * tensor.element_size()
            self._saved[key] = (storage, max(size, self._saved.get(key, (None, 0))[1]))
        return tensor

    def __enter__(self) -> SavedBytes:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self.bytes = sum(size for _, size in self._saved.values())
        self._saved.clear()


def random_batch():
    """Random images and labels, about three positives per image (as ``mlcl bench``)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, IMAGE, IMAGE, generator=generator)
    labels = (torch.rand(BATCH, CLASSES, generator=generator) < 3 / CLASSES).float()
    labels[torch.arange(BATCH), torch.randint(CLASSES, (BATCH,), generator=generator)] = 1
    return images, labels


# --------------------------------------------------------------------------- the seed's side


def _package(name: str, folder: Path) -> types.ModuleType:
    """An empty package over ``folder``: its submodules import, its __init__ does not run."""
    module = types.ModuleType(name)
    module.__path__ = [str(folder)]
    sys.modules[name] = module
    return module


def _stub(name: str, **attributes: Any) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module


def _unavailable(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("stubbed by seed_side_by_side.py: not needed for a ResNet backbone")


def seed_library(path: Path) -> Path:
    """``code/lib_sadcl`` of a SADCL checkout, given the checkout or that folder."""
    for candidate in (path, path / "code" / "lib_sadcl"):
        if (candidate / "models" / "sadcl.py").is_file():
            return candidate.resolve()
    raise SystemExit(f"--seed-lib {path}: no models/sadcl.py there nor under code/lib_sadcl")


def import_seed(lib: Path) -> None:
    """Import the seed's model and loss modules from ``lib`` (see the module docstring)."""
    sys.path.insert(0, str(lib))
    os.environ.setdefault("WORLD_SIZE", "1")  # the model divides the batch size by it
    _package("models", lib / "models")
    _package("models.loss", lib / "models" / "loss")  # its __init__ imports a missing SimMinLoss
    _stub("models.cls_cvt", build_CvT=_unavailable)
    _package("models.vision_transformer", lib / "models" / "vision_transformer")
    _stub("models.vision_transformer.swin_transformer", build_swin_transformer=_unavailable)
    _stub("models.vision_transformer.vision_transformer", build_vision_transformer=_unavailable)
    _stub("utils.slconfig", SLConfig=object)  # needs addict and yapf; unused here
    import models.loss.aslloss
    import models.loss.multisupconloss
    import models.loss.sem2pro
    import models.sadcl  # noqa: F401


def build_seed(prototype_dir: Path, amp: str):
    """The seed's SADCL model, its three losses, its optimiser at the configuration above, its
    training step and the step's precision (``amp``: ``off`` or ``bf16``)."""
    import numpy as np
    import torch
    from models.loss.aslloss import AsymmetricLossOptimized
    from models.loss.multisupconloss import MultiSupConLoss
    from models.loss.sem2pro import Semantic2PrototypeConLoss
    from models.sadcl import build_sadcl

    # The prototype file the model reads at construction (random: the values do not matter).
    np.save(
        prototype_dir / "vis_prototype_embed_file_select_resnet101_448_coco_085.npy",
        np.random.default_rng(0).standard_normal((CLASSES, DIM)).astype(np.float32),
    )
    args = argparse.Namespace(
        backbone="resnet50",
        pretrained=False,
        frozen_backbone=False,
        hidden_dim=DIM,
        dim_feedforward=FF,
        enc_layers=1,
        dec_layers=2,
        nheads=4,
        dropout=0.1,
        pre_norm=False,
        position_embedding="v2",
        img_size=IMAGE,
        keep_other_self_attn_dec=False,
        keep_first_self_attn_dec=False,
        keep_input_proj=False,
        prototype=str(prototype_dir),
        dataname="coco14",
        num_class=CLASSES,
        batch_size=BATCH,
    )
    torch.manual_seed(0)
    model = build_sadcl(args)
    model.train()
    losses = {
        "asl": AsymmetricLossOptimized(
            gamma_neg=4, gamma_pos=0, clip=0, disable_torch_grad_focal_loss=True, eps=1e-5
        ),
        "sscl": MultiSupConLoss(),
        "pscl": Semantic2PrototypeConLoss(),
    }
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters, lr=5e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=5e-3
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=5e-5, total_steps=10_000, pct_start=0.2
    )
    images, labels = random_batch()
    bf16 = amp == "bf16"

    def step() -> None:
        # The order of the seed's engine.train (without EMA and logging); its engine autocasts
        # the forward and the losses.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            output, embedding, current, memory, prototype = model(images)
            views = torch.cat([current.unsqueeze(1), memory.unsqueeze(1)], dim=1)
            loss = (
                losses["asl"](output, labels)
                + 100 * losses["sscl"](views, labels)
                + 50 * losses["pscl"](current, prototype, labels)
            )
        model.memorybank_update(embedding, labels, output)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()

    return model, optimizer, step, "bfloat16" if bf16 else "float32"


# --------------------------------------------------------------------------- mlcl's side


def import_mlcl() -> None:
    """The modules ``mlcl bench`` imports to build and run a training step."""
    import mlcl.engine.train
    import mlcl.methods
    import mlcl.tools.bench  # noqa: F401


def build_mlcl(preset: str, extra: list[str]):
    """mlcl's SADCL method, optimiser, training step (built as ``mlcl bench`` builds them) and
    the step's precision."""
    import torch

    from mlcl.config import load_config, with_overrides
    from mlcl.engine.optim import autocast_dtype
    from mlcl.engine.process_group import setup_distributed
    from mlcl.engine.train import build_training, training_step
    from mlcl.tools.bench import _Shape

    config = load_config(preset, mlcl_overrides(extra))
    config = with_overrides(config, {"run.epochs": 1, "run.max_steps": 0})
    context = setup_distributed(config.run.device)
    shape = _Shape(CLASSES, num_images=BATCH * 16)
    method, model, ema, optimization = build_training(
        config, context, shape, shape, steps_per_epoch=10_000
    )
    amp_dtype = autocast_dtype(config.run.amp, context.device)
    images, labels = random_batch()
    if config.run.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    batch = {
        "image": images,
        "labels": labels,
        "observed": torch.ones(BATCH, CLASSES, dtype=torch.bool),
        "index": torch.arange(BATCH),
    }
    model.train()
    (optimizer,) = optimization.optimizers.values()

    def step() -> None:
        training_step(model, batch, optimization, amp_dtype=amp_dtype, ema=ema)

    return method, optimizer, step, str(amp_dtype or torch.float32).removeprefix("torch.")


# --------------------------------------------------------------------------- worker


MARK = "@@side-by-side "  # starts the worker's messages to the parent


def _say(message: dict[str, Any]) -> None:
    print(MARK + json.dumps(message), flush=True)


def worker(args: argparse.Namespace) -> None:
    """One side: build, warm up, then one timed step per "step" line read from stdin; a final
    "done" line makes it print its figures and exit."""
    import torch

    torch.set_num_threads(args.threads)
    if args.worker == "seed":
        import_seed(seed_library(args.seed_lib))
    else:
        import_mlcl()
    rss_imports_kb = _status_kb("VmRSS")  # the side's modules imported, nothing built
    with tempfile.TemporaryDirectory() as prototypes:
        if args.worker == "seed":
            model, optimizer, step, precision = build_seed(Path(prototypes), args.seed_amp)
        else:
            model, optimizer, step, precision = build_mlcl(args.mlcl_preset, args.mlcl_set)
    rss_built_kb = _status_kb("VmRSS")
    for _ in range(args.warmup):
        step()
    _say({"ready": True})
    seconds = []
    for line in sys.stdin:
        if line.strip() != "step":
            break
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
        _say({"seconds": seconds[-1]})
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm_kb = _status_kb("VmHWM")
    parameters = list(model.parameters())
    trainable = [p for p in parameters if p.requires_grad]
    with SavedBytes(parameters) as saved:  # one more step, after the peak was read
        step()
    median = statistics.median(seconds)
    result = {
        "side": args.worker,
        "threads": torch.get_num_threads(),
        "precision": precision,
        "step_seconds": seconds,
        "step_seconds_median": median,
        "images_per_s": BATCH / median,
        "peak_rss_mb": _mb(peak_kb),
        "vm_hwm_mb": _mb(hwm_kb),
        "rss_after_imports_mb": _mb(rss_imports_kb),
        "rss_after_build_mb": _mb(rss_built_kb),
        "parameters": sum(p.numel() for p in parameters),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "parameter_mb": tensor_bytes(parameters) / 2**20,
        "gradient_mb": tensor_bytes(trainable) / 2**20,
        "buffer_mb": tensor_bytes(model.buffers()) / 2**20,
        "optimizer_state_mb": optimizer_state_bytes(optimizer) / 2**20,
        "saved_for_backward_mb": saved.bytes / 2**20,
    }
    _say(result)


# --------------------------------------------------------------------------- parent


def _start(side: str, args: argparse.Namespace) -> subprocess.Popen:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        side,
        "--seed-lib",
        str(args.seed_lib),
        "--threads",
        str(args.threads),
        "--warmup",
        str(args.warmup),
        "--mlcl-preset",
        args.mlcl_preset,
        "--seed-amp",
        args.seed_amp,
        "--mlcl-set",
        *args.mlcl_set,
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    return subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment
    )


def _read(process: subprocess.Popen) -> dict[str, Any]:
    """The worker's next message; whatever else it prints (the seed prints) goes to stderr."""
    while True:
        line = process.stdout.readline()
        if not line:
            raise SystemExit(f"a worker exited early (code {process.wait()})")
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
        print(line, end="", file=sys.stderr)


def _seed_commit(lib: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=lib, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from mlcl.engine.run_dir import processor_name  # here: the seed's worker never imports mlcl

    lib = seed_library(args.seed_lib)
    # Built one after the other (construction is the heaviest moment of neither), then both
    # wait for the alternating timed steps.
    workers = {}
    for side in ("seed", "mlcl"):
        workers[side] = _start(side, args)
        _read(workers[side])  # ready: built and warmed up
    for _ in range(args.steps):
        for process in workers.values():
            process.stdin.write("step\n")
            process.stdin.flush()
            _read(process)
    results = {}
    for side, process in workers.items():
        process.stdin.write("done\n")
        process.stdin.flush()
        results[side] = _read(process)
        process.wait()
    seed, ours = results["seed"], results["mlcl"]
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seed_repository": "github.com/yu-gi-oh-leilei/SADCL",
        "seed_commit": args.seed_commit or _seed_commit(lib),
        "seed_lib": str(lib),
        "mlcl_preset": args.mlcl_preset,
        "mlcl_overrides": mlcl_overrides(args.mlcl_set),
        "configuration": {
            "backbone": "resnet50 (random init)",
            "image_size": IMAGE,
            "batch_size": BATCH,
            "classes": CLASSES,
            "hidden_dim": DIM,
            "ff_dim": FF,
            "encoder_layers": 1,
            "decoder_layers": 2,
            "precision": {"seed": seed["precision"], "mlcl": ours["precision"]},
            "ema": False,
        },
        "recipe_differences": RECIPE_DIFFERENCES,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "threads": args.threads,
        "machine": {
            "platform": platform.platform(),
            "processor": processor_name(),
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
        },
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seed": seed,
        "mlcl": ours,
        "speed_ratio_mlcl_over_seed": ours["images_per_s"] / seed["images_per_s"],
        "peak_memory_ratio_mlcl_over_seed": ours["peak_rss_mb"] / seed["peak_rss_mb"],
    }


ROWS = [
    ("images/s (median)", "images_per_s", "{:.3f}"),
    ("step, s (median)", "step_seconds_median", "{:.2f}"),
    ("peak RSS, MB (ru_maxrss)", "peak_rss_mb", "{:.0f}"),
    ("RSS after imports, MB", "rss_after_imports_mb", "{:.0f}"),
    ("RSS after building, MB", "rss_after_build_mb", "{:.0f}"),
    ("parameters", "parameters", "{:,}"),
    ("trainable parameters", "trainable_parameters", "{:,}"),
    ("parameters, MB", "parameter_mb", "{:.0f}"),
    ("gradients, MB", "gradient_mb", "{:.0f}"),
    ("buffers, MB", "buffer_mb", "{:.0f}"),
    ("AdamW state, MB", "optimizer_state_mb", "{:.0f}"),
    ("saved for backward, MB", "saved_for_backward_mb", "{:.0f}"),
]


def markdown(result: dict[str, Any]) -> str:
    seed, ours = result["seed"], result["mlcl"]
    lines = [
        "# SADCL's training step: the public code against mlcl (CPU, "
        f"seed {seed['precision']}, mlcl {ours['precision']})",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Seed: {result['seed_repository']} at `{result['seed_commit']}`; mlcl: "
        f"`mlcl bench --config {result['mlcl_preset']}` with "
        f"`{' '.join(result['mlcl_overrides'])}`.",
        f"Machine: {result['machine']['processor']}, {result['machine']['cpus']} CPUs, "
        f"{result['threads']} threads per side; torch {result['torch']}; "
        f"{result['steps']} timed steps per side, alternating, after {result['warmup_steps']} "
        f"warm-up steps; load average at the end {result['machine']['load_average_at_end']}.",
        "",
        "| | seed | mlcl | mlcl / seed |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, key, form in ROWS:
        ratio = ours[key] / seed[key] if seed[key] else float("nan")
        lines.append(
            f"| {label} | {form.format(seed[key])} | {form.format(ours[key])} | {ratio:.2f} |"
        )
    lines += ["", "Where the two recipes differ:", ""]
    lines += [f"- {difference}" for difference in result["recipe_differences"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seed-lib",
        type=Path,
        required=True,
        help="code/lib_sadcl of a checkout of the public SADCL code (or the checkout)",
    )
    parser.add_argument("--steps", type=int, default=6, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per side")
    parser.add_argument("--mlcl-preset", default="sadcl-coco")
    parser.add_argument(
        "--seed-amp",
        choices=("off", "bf16"),
        default="off",
        help="bf16: the seed's forward and losses under the CPU's bf16 autocast",
    )
    parser.add_argument(
        "--mlcl-set", nargs="*", default=[], metavar="KEY=VALUE", help="more mlcl overrides"
    )
    parser.add_argument(
        "--seed-commit", default="", help="the seed's commit, when --seed-lib is no git checkout"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/results/seed_side_by_side"),
        help="a folder: writes OUT/side_by_side.json and OUT/side_by_side.md",
    )
    parser.add_argument("--worker", choices=("seed", "mlcl"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "side_by_side.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (args.out / "side_by_side.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
