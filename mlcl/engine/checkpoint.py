"""Checkpoints: written atomically, read with ``weights_only=True``, checked before use.

A checkpoint holds only tensors and plain Python values (so ``torch.load(..., weights_only=True)``
reads it): the method's ``state_dict`` (its buffers are the method's state: prototypes, memory
banks, co-occurrence counts), the EMA copy, one optimiser and one scheduler per phase, the gradient
scaler, the counters of the run, the random number generators' states, the configuration and the
label set.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlcl.config import from_dict
from mlcl.engine.kill_points import kill_point
from mlcl.errors import CheckpointError
from mlcl.methods import Method, build_method, for_restoring

FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: into a temporary file beside it, then renamed over
    it, so a crash while writing leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        kill_point("checkpoint")
        os.chmod(temporary, 0o644)  # mkstemp makes it private
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (not a zip archive: truncated, or another kind "
            "of file)"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # PyTorch's explanation runs to many lines; the cause is always the same.
        raise CheckpointError(
            f"{path}: holds objects other than tensors and plain containers; not loaded, for "
            "safety (torch.load weights_only)"
        ) from None
    except Exception as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not an mlcl checkpoint (format {FORMAT_VERSION})")
    return checkpoint


def check_compatible(
    checkpoint: dict[str, Any], path: str | Path, method_name: str, class_names: list[str]
) -> None:
    """Refuse a checkpoint made for another method or another label set."""
    if checkpoint["method"] != method_name:
        raise CheckpointError(
            f"{path}: made for method {checkpoint['method']!r}, "
            f"but the configuration trains {method_name!r}"
        )
    if checkpoint["num_classes"] != len(class_names):
        raise CheckpointError(
            f"{path}: made for {checkpoint['num_classes']} classes, "
            f"but the data set has {len(class_names)}"
        )
    if list(checkpoint["class_names"]) != list(class_names):
        raise CheckpointError(f"{path}: made for other class names than the data set's")


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's random number generators (CPU and CUDA)."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))
    return {
        "python": random.getstate(),
        "numpy": numpy_state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = dict(numpy_state["state"])
    numpy_state["state"]["key"] = numpy_state["state"]["key"].numpy().astype(np.uint32)
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def copy_checkpoint(source: str | Path, target: str | Path) -> None:
    """Copy a checkpoint file atomically (``checkpoint_last.pt`` → ``checkpoint_best.pt``)."""
    target = Path(target)
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    os.close(handle)
    try:
        shutil.copyfile(source, temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_method(
    path: str | Path, *, ema: bool = False, device: str | torch.device = "cpu"
) -> tuple[Method, dict[str, Any]]:
    """The trained method of a checkpoint (its EMA weights with ``ema=True``), in eval mode,
    and the checkpoint itself (its ``config``, ``class_names``, ``state``...)."""
    checkpoint = load_checkpoint(path)
    config = for_restoring(from_dict(checkpoint["config"]))
    method = build_method(
        config,
        num_classes=checkpoint["num_classes"],
        num_train_images=checkpoint["num_train_images"],
    )
    weights = checkpoint["ema"] if ema else checkpoint["model"]
    if weights is None:
        raise CheckpointError(f"{path}: holds no EMA weights (the run had run.ema = 0)")
    method.load_state_dict(weights)
    return method.to(device).eval(), checkpoint
