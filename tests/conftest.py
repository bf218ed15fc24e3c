"""Shared pytest fixtures.

- ``synthetic_root``: a tiny built-in data set (64 training and 32 validation images of 64 px,
  seed 0) generated once per test session in a temporary folder; pass it as ``root`` to
  ``build_dataset("synthetic", root, split)``. Treat it as read-only: other tests share it.
"""

from __future__ import annotations

from pathlib import Path

import pytest


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
