"""mlcl.export: ONNX (through onnxruntime) and TorchScript files compute PyTorch's logits."""

from __future__ import annotations

import pytest
import torch

from mlcl.cli import main
from mlcl.errors import UsageError
from mlcl.export import check_export, export_model, run_export

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.mark.parametrize("preset", ["baseline-quick", "q2l-quick"])
@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_exported_logits_equal_pytorch(tiny_checkpoint, tmp_path, preset, format):
    checkpoint = tiny_checkpoint(preset)
    path = export_model(checkpoint, format, tmp_path / f"model.{format}")
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert check_export(path, checkpoint, images) < 1e-4  # a batch of 3: not the example's 2
    assert run_export(path, images).shape == (3, 24)


def test_cli_exports_a_static_batch_and_refuses_unknown_formats(tiny_checkpoint, tmp_path, capsys):
    checkpoint = str(tiny_checkpoint("baseline-quick"))
    out = tmp_path / "fixed.onnx"
    args = ["export", "--checkpoint", checkpoint, "--out", str(out)]
    assert main([*args, "--format", "onnx", "--static-batch", "4"]) == 0
    assert check_export(out, checkpoint, torch.zeros(4, 3, 32, 32)) < 1e-4
    with pytest.raises(Exception, match="images"):  # a fixed batch of 4 refuses 3 images
        run_export(out, torch.zeros(3, 3, 32, 32))
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        main([*args, "--format", "tflite"])
    with pytest.raises(UsageError, match="unknown export format 'tflite'"):
        export_model(checkpoint, "tflite", tmp_path / "x")
    capsys.readouterr()
