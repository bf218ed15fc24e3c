"""The run directory: what a run leaves behind, written by the main process only.

```
run.out_dir/
  config.yaml          the configuration, as load_config reads it back
  metrics.jsonl        one JSON line per epoch: losses, learning rate, metrics, EMA metrics, speed
  summary.json         best mAP and its epoch, time, images/s, peak memory, versions, config hash
  checkpoint_last.pt   the latest state (resume from it)
  checkpoint_best.pt   the state of the best epoch
```
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from tqdm.auto import tqdm

import mlcl
from mlcl.config import Config


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
        "git_commit": _git_commit(),
    }


def peak_memory_mb(device: torch.device) -> dict[str, Any]:
    """Peak memory of this process: CUDA's max allocated on a GPU, the resident set on a CPU."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        return {"peak_memory_mb": peak, "peak_memory_kind": "cuda_max_allocated"}
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    return {"peak_memory_mb": kilobytes / 1024, "peak_memory_kind": "cpu_max_rss"}


def _git_commit() -> str | None:
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
