"""A trained checkpoint as a file that runs without mlcl: ONNX or TorchScript, images to logits.

The exported graph takes a normalised image batch ``[B, 3, S, S]`` (S = the checkpoint's
``data.image_size``, normalised with its ``data.mean`` / ``data.std``) and returns logits
``[B, C]`` in the checkpoint's class order (``sigmoid`` gives probabilities). ONNX goes through
``torch.onnx.export(..., dynamo=True)`` (the exporter built on ``torch.export``; the TorchScript
based one is deprecated), which needs ``onnx`` and ``onnxscript`` (``pip install mlcl[export]``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlcl.config import from_dict
from mlcl.engine.checkpoint import load_checkpoint, load_method
from mlcl.errors import UsageError
from mlcl.methods import Method

FORMATS = ("onnx", "torchscript")


class Logits(nn.Module):
    """The method's ``predict``, a module of its own: image batch → logits."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.method.predict(images)


def _load(checkpoint: str | Path, ema: bool | None) -> tuple[Logits, int]:
    """The eval-mode wrapper (EMA weights when ``ema`` is None and the checkpoint has them)
    and the image size."""
    if ema is None:
        ema = load_checkpoint(checkpoint).get("ema") is not None
    method, state = load_method(checkpoint, ema=ema)
    return Logits(method).eval(), from_dict(state["config"]).data.image_size


def export_model(
    checkpoint: str | Path,
    format: str,
    out: str | Path,
    *,
    ema: bool | None = None,
    dynamic_batch: bool = True,
    batch_size: int = 2,
) -> Path:
    """Write the checkpoint's model to ``out`` as ``format`` ("onnx" | "torchscript").

    ``dynamic_batch``: any batch size at run time (ONNX); otherwise the graph is fixed to
    ``batch_size`` images. Returns ``out``.
    """
    if format not in FORMATS:
        raise UsageError(f"unknown export format {format!r} (known: {', '.join(FORMATS)})")
    model, size = _load(checkpoint, ema)
    # A dynamic batch dimension needs an example of more than one image: torch.export
    # specialises a size of 1.
    example = torch.zeros(max(batch_size, 2) if dynamic_batch else batch_size, 3, size, size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if format == "torchscript":
            # The trace is checked against PyTorch's logits by check_export; trace's own check
            # re-traces, and the decoder's cached position encoding makes that graph differ.
            torch.jit.trace(model, example, check_trace=False).save(str(out))
        else:
            shapes = {"images": {0: torch.export.Dim("batch")}} if dynamic_batch else None
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=shapes,
            )
            program.save(str(out))
    return out


def run_export(path: str | Path, images: torch.Tensor) -> torch.Tensor:
    """Logits of an exported file (``.onnx`` through onnxruntime, else TorchScript)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (logits,) = session.run(None, {"images": images.numpy().astype(np.float32)})
        return torch.from_numpy(logits)
    with torch.no_grad():
        return torch.jit.load(str(path)).eval()(images)


def check_export(
    path: str | Path, checkpoint: str | Path, images: torch.Tensor, *, ema: bool | None = None
) -> float:
    """The largest absolute difference between the exported file's logits and PyTorch's on
    ``images`` ``[B, 3, S, S]``."""
    model, _ = _load(checkpoint, ema)
    with torch.no_grad():
        expected = model(images)
    return (run_export(path, images) - expected).abs().max().item()
