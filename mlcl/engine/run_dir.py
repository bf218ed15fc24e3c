"""The run directory: what a run leaves behind, written by the main process only.

```
run.out_dir/
  config.yaml          the configuration, as load_config reads it back
  metrics.jsonl        one JSON line per epoch: losses, learning rate, metrics, EMA metrics, speed
  summary.json         best mAP and its epoch, time, images/s, peak memory, versions, config hash
  checkpoint_last.pt   the latest state (resume from it)
  checkpoint_best.pt   the state of the best epoch
  run.lock             while a run writes here: its pid and host (see RunLock)
```
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import platform
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from tqdm.auto import tqdm

import mlcl
from mlcl.config import Config
from mlcl.errors import MlclError


class RunDir:
    """Paths and writers of one run directory; a no-op on processes other than the main one."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.mkdir(parents=True, exist_ok=True)

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "checkpoint_last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.path / "checkpoint_best.pt"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def remove_partial_writes(self) -> None:
        """Delete the temporary files of checkpoint writes a killed run left behind (the
        checkpoints themselves are renamed into place whole, so they are intact)."""
        if self.enabled:
            for temporary in self.path.glob(".checkpoint_*.tmp"):
                temporary.unlink(missing_ok=True)

    def write_config(self, config: Config) -> None:
        if self.enabled:
            config.save(self.path / "config.yaml")

    def start_metrics(self, epochs_done: int) -> None:
        """Keep the lines of the epochs already done (a resumed run), drop any later ones."""
        if not self.enabled:
            return
        kept = [record for record in read_metrics(self.path) if record["epoch"] < epochs_done]
        self.metrics_file.write_text("".join(json.dumps(record) + "\n" for record in kept))

    def append_metrics(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.metrics_file.open("a") as file:
                file.write(json.dumps(_finite_or_none(record)) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.enabled:
            text = json.dumps(_finite_or_none(summary), indent=2)
            (self.path / "summary.json").write_text(text + "\n")


@contextlib.contextmanager
def run_lock(run_dir: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold ``run_dir/run.lock`` for the ``with`` block: a second run into the same directory
    refuses with one line instead of interleaving its checkpoints and metrics with ours.

    The lock is an ``flock`` on the file, which the kernel drops when the process dies, however
    it dies: a lock file left by a killed run on this host is simply taken over. The file names
    its holder (pid, host) for the message. A lock written from another host cannot be checked
    from here (``flock`` need not reach across a network file system) and is refused. The file is
    removed when the block ends, on errors too. ``enabled=False`` (processes other than the main
    one) does nothing.
    """
    if not enabled:
        yield
        return
    path = Path(run_dir) / "run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = _acquire(path)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before unlocking: a waiting run then sees a new file
        os.close(descriptor)


def _acquire(path: Path) -> int:
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise MlclError(
                f"{path.parent}: another run is writing into this directory ({_holder(path)}); "
                "wait for it to end or set another run.out_dir"
            ) from None
        # The holder may have removed the file between our open and our lock: then we hold a
        # lock on a file nobody else sees, and try again on the path's current file.
        if os.path.exists(path) and os.stat(path).st_ino == os.fstat(descriptor).st_ino:
            break
        os.close(descriptor)
    holder = _read_holder(descriptor)
    if holder and holder.get("host") != socket.gethostname():
        os.close(descriptor)
        raise MlclError(
            f"{path.parent}: a run on host {holder.get('host')} (pid {holder.get('pid')}) holds "
            f"{path}; if that run has ended, delete the file"
        )
    os.ftruncate(descriptor, 0)
    os.write(descriptor, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
    return descriptor


def _read_holder(descriptor: int) -> dict[str, Any] | None:
    os.lseek(descriptor, 0, os.SEEK_SET)
    try:
        holder = json.loads(os.read(descriptor, 4096) or b"null")
    except ValueError:  # a half-written lock of a killed run
        return None
    return holder if isinstance(holder, dict) else None


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        return f"pid {holder['pid']} on host {holder['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"see {path}"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (empty if there is none yet)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def log(message: str, enabled: bool = True) -> None:
    """Print a line without breaking a progress bar."""
    if enabled:
        tqdm.write(message, file=sys.stdout)


def environment_info() -> dict[str, Any]:
    """Versions of the libraries a result depends on, and the git commit of the code."""
    return {
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "timm": timm.__version__,
            "mlcl": mlcl.__version__,
        },
        "git_commit": git_commit(),
    }


def peak_memory_mb(device: torch.device) -> dict[str, Any]:
    """Peak memory of this process: CUDA's max allocated on a GPU, the resident set on a CPU."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        return {"peak_memory_mb": peak, "peak_memory_kind": "cuda_max_allocated"}
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    return {"peak_memory_mb": kilobytes / 1024, "peak_memory_kind": "cpu_max_rss"}


def processor_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The commit of the mlcl checkout in use; None outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(mlcl.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN: write null for NaN and infinities (e.g. mAP before the first epoch)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(item) for item in value]
    return value
