"""mlcl.predict and ``mlcl predict``: labels of image files, thresholds, bad files, explanations."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from mlcl.cli import main
from mlcl.engine import load_checkpoint, save_checkpoint
from mlcl.errors import CheckpointError, UsageError
from mlcl.predict import predict


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three images in a folder tree (one nested), and a broken file beside them."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "more").mkdir()
    for name, colour in (("a.jpg", "red"), ("b.png", "green"), ("more/c.webp", "blue")):
        Image.new("RGB", (40, 30), colour).save(folder / name)
    (folder / "notes.txt").write_text("not an image, and not looked at")
    broken = tmp_path_factory.mktemp("broken") / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    return folder, broken


def test_predict_reads_folders_recursively_with_top_k(tiny_checkpoint, photos):
    folder, _ = photos
    predictions = predict(tiny_checkpoint("baseline-quick"), [folder], top_k=2, progress=False)
    assert [p.file.rsplit("/", 1)[-1] for p in predictions] == ["a.jpg", "b.png", "c.webp"]
    for item in predictions:
        assert len(item.labels) == 2 and len(item.scores) == 24
        best = sorted(item.scores, key=item.scores.get, reverse=True)[:2]
        assert item.labels == best and item.explanation is None


def test_thresholds_given_calibrated_or_default(tiny_checkpoint, photos, tmp_path):
    folder, _ = photos
    path = tiny_checkpoint("baseline-quick")
    everything = predict(path, [folder], threshold=1e-6, progress=False)
    assert all(len(item.labels) == 24 for item in everything)
    state = load_checkpoint(path)
    scores = everything[0].scores
    # Calibrated thresholds just under / over each class's score on the first image.
    values = torch.tensor([scores[name] for name in state["class_names"]])
    values[::2] += 1e-4
    values[1::2] -= 1e-4
    state["thresholds"] = {"model": {"values": values, "split": "holdout", "num_images": 4}}
    calibrated = tmp_path / "calibrated.pt"
    save_checkpoint(state, calibrated)
    first = predict(calibrated, [folder / "a.jpg"], progress=False)[0]
    assert sorted(first.labels) == sorted(state["class_names"][1::2])
    with pytest.raises(UsageError, match="not both"):
        predict(path, [folder], threshold=0.5, top_k=1)


def test_cli_reports_an_unreadable_file_and_predicts_the_others(
    tiny_checkpoint, photos, tmp_path, capsys
):
    folder, broken = photos
    out = tmp_path / "predictions.jsonl"
    checkpoint = str(tiny_checkpoint("baseline-quick"))
    args = ["predict", "--checkpoint", checkpoint, str(folder), str(broken), "--top-k", "1"]
    assert main([*args, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{broken}: cannot decode image" in err or f"{broken}: not an image file" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(len(row["labels"]) == 1 for row in rows)

    assert main([*args[:4], "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith(f"{folder / 'a.jpg'}: ")
    assert lines[0].count("(") == 2

    assert main(["predict", "--checkpoint", str(tmp_path / "none.pt"), str(folder)]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        predict(tmp_path / "none.pt", [folder])


@pytest.mark.parametrize(
    "preset", ["baseline-quick", "q2l-quick", "salgl-quick", "scob-quick"]
)  # CAM, attention, scenes, Grad-CAM
def test_explanations_are_drawn_for_each_family(tiny_checkpoint, photos, tmp_path, preset):
    folder, _ = photos
    overrides = {"method.num_scenes": 3} if preset == "salgl-quick" else {}
    predictions = predict(
        tiny_checkpoint(preset, **overrides),
        [folder],
        top_k=2,
        explain_dir=tmp_path / "explain",
        progress=False,
    )
    files = sorted(path.name for path in (tmp_path / "explain").iterdir())
    assert files == ["a.png", "b.png", "c.png"]
    for item in predictions:
        with Image.open(item.explanation) as figure:
            assert figure.width > figure.height  # the image and at least one more panel
