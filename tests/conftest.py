"""Shared pytest fixtures.

- ``synthetic_root``: a tiny built-in data set (64 training and 32 validation images of 64 px,
  seed 0) generated once per test session in a temporary folder; pass it as ``root`` to
  ``build_dataset("synthetic", root, split)``. Treat it as read-only: other tests share it.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_report_header(config: pytest.Config) -> str:
    """What sets the suite's pace on this machine, at the top of the log (CI's included)."""
    import torch

    from mlcl.engine.optim import cpu_bf16_is_faster, cpu_bf16_speedup, cpu_has_native_bf16
    from mlcl.engine.run_dir import processor_name

    native = cpu_has_native_bf16()
    measured = f", bf16 probe {cpu_bf16_speedup():.2f}x float32" if native else ""
    auto = "bf16" if cpu_bf16_is_faster() else "float32"
    return (
        f"mlcl: {processor_name()}, {torch.get_num_threads()} torch threads, native bf16: "
        f"{'yes' if native else 'no'}{measured}; run.amp=auto trains in {auto} on this CPU"
    )


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlcl.data import generate

    return generate(
        tmp_path_factory.mktemp("data") / "synthetic",
        num_train=64,
        num_val=32,
        image_size=64,
        seed=0,
        workers=1,
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """``tiny_checkpoint(preset, **overrides)``: the last checkpoint of a one-step run of a
    preset on 16 built-in images of 32 px with timm's tiny test ResNet, trained once per test
    session and preset (treat it as read-only unless the overrides make it yours)."""
    from mlcl.config import load_config
    from mlcl.data import ensure_synthetic
    from mlcl.engine import fit

    root = ensure_synthetic(tmp_path_factory.mktemp("data") / "tiny", 16, 8, 32, 0)
    made: dict[tuple, Path] = {}

    def make(preset: str, **overrides) -> Path:
        key = (preset, *sorted(overrides.items()))
        if key not in made:
            out = tmp_path_factory.mktemp(preset)
            settings = {
                "data.root": str(root),
                "data.synthetic_train": 16,
                "data.synthetic_val": 8,
                "data.synthetic_image_size": 32,
                "data.image_size": 32,
                "data.batch_size": 4,
                "data.workers": 0,
                "model.backbone": "test_resnet",
                "run.out_dir": str(out),
                "run.epochs": 1,
                "run.max_steps": 1,
                "run.progress": False,
            } | overrides
            fit(load_config(preset, settings))
            made[key] = out / "checkpoint_last.pt"
        return made[key]

    return make
