"""``mlcl prototypes``: SADCL's prototype file from a q2l checkpoint, in the format sadcl reads."""

from __future__ import annotations

import torch

from mlcl.cli import main
from mlcl.engine import load_method
from mlcl.methods.sadcl import load_prototypes


def test_prototypes_file_is_what_method_prototypes_file_reads(tiny_checkpoint, tmp_path, capsys):
    checkpoint = tiny_checkpoint("q2l-quick")
    out = tmp_path / "prototypes.pt"
    args = ["prototypes", "--checkpoint", str(checkpoint), "--out", str(out)]
    assert main([*args, "--threshold", "0.0001"]) == 0
    assert "24 prototypes of" in capsys.readouterr().out
    method, _ = load_method(checkpoint)
    dim = method.model.decoder.dim
    prototypes = load_prototypes(str(out), 24, dim)
    assert torch.isfinite(prototypes).all()
    assert not torch.allclose(prototypes[0], prototypes[1])  # one mean per class
    assert main([*args[:-2], "--out", str(tmp_path / "p.npy")]) == 0
    torch.testing.assert_close(load_prototypes(str(tmp_path / "p.npy"), 24, dim), prototypes)

    baseline = str(tiny_checkpoint("baseline-quick"))
    assert main(["prototypes", "--checkpoint", baseline, "--out", str(out)]) == 1
    assert "has no semantic decoder" in capsys.readouterr().err
