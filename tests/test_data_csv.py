"""The CSV data set (your own images): labels, class order, every bad row named by file and line,
``mlcl data check csv``, and training on it through the configuration."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from mlcl.data import build_dataset
from mlcl.data.check import check_dataset
from mlcl.data.cli import add_data_commands
from mlcl.errors import DataError

TRAIN = {"a/1.jpg": "cat|dog", "a/2.jpg": "dog", "b/3.png": "bird | cat"}
VAL = {"b/4.jpg": "bird"}


def write_csv_data(root: Path, train=TRAIN, val=VAL, images=None) -> Path:
    for name, rows in (("train.csv", train), ("val.csv", val)):
        lines = ["file_name,labels", *(f"{file},{labels}" for file, labels in rows.items())]
        root.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("\n".join(lines) + "\n")
    for file in images if images is not None else [*train, *val]:
        path = root / "images" / file
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), "red").save(path)
    return root


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_data_commands(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_labels_and_classes_from_the_sorted_union(tmp_path):
    root = write_csv_data(tmp_path)
    train = build_dataset("csv", root, "train")
    assert train.class_names == ["bird", "cat", "dog"]  # the union of both files, sorted
    expected = torch.tensor([[0, 1, 1], [0, 0, 1], [1, 1, 0]], dtype=torch.bool)
    torch.testing.assert_close(train.full_labels, expected)
    assert train.image_paths[2] == root / "images" / "b" / "3.png"
    assert train[0]["image"].shape == (3, 6, 8)
    val = build_dataset("csv", root, "val")
    assert val.class_names == train.class_names and val.full_labels.tolist() == [[1, 0, 0]]


def test_classes_file_sets_the_order(tmp_path):
    root = write_csv_data(tmp_path)
    (root / "classes.txt").write_text("dog\ncat\nbird\nfish\n")
    train = build_dataset("csv", root, "train")
    assert train.class_names == ["dog", "cat", "bird", "fish"]
    assert train.full_labels[0].tolist() == [True, True, False, False]


@pytest.mark.parametrize(
    ("train", "classes", "message"),
    [
        ({"a/1.jpg": "cat|horse"}, "cat\n", "train.csv: line 2: a/1.jpg: unknown class 'horse'"),
        ({"a/1.jpg": "cat", "a/2.jpg": " | "}, None, "train.csv: line 3: a/2.jpg: no labels"),
        (
            {"a/1.jpg": "cat", "a/2.jpg": "dog", "a/1.jpg ": "dog"},
            None,
            "train.csv: line 4: a/1.jpg is listed again (first on line 2)",
        ),
        (
            {"../../etc/x.jpg": "cat"},
            None,
            "train.csv: line 2: image path '../../etc/x.jpg' leads outside the data root",
        ),
        ({"a/1.jpg": "cat,dog"}, None, "train.csv: line 2: expected 2 fields"),
        ({}, None, "train.csv: empty split (no images)"),
    ],
)
def test_a_bad_row_is_named_by_file_and_line(tmp_path, train, classes, message):
    root = write_csv_data(tmp_path, train=train, images=[])
    if classes is not None:
        (root / "classes.txt").write_text(classes + "bird\n")
    with pytest.raises(DataError, match=re.escape(message)):
        build_dataset("csv", root, "train")


def test_missing_image_and_bad_header(tmp_path):
    root = write_csv_data(tmp_path, images=["a/1.jpg"])
    with pytest.raises(DataError, match=r"train.csv: line 3: image .*a/2.jpg not found"):
        build_dataset("csv", root, "train")
    (root / "val.csv").write_text("path;tags\nb/4.jpg;bird\n")
    with pytest.raises(
        DataError, match=re.escape("val.csv: line 1: expected the header 'file_name,labels'")
    ):
        build_dataset("csv", root, "val")
    (root / "val.csv").unlink()
    with pytest.raises(DataError, match=re.escape("val.csv: label file not found")):
        build_dataset("csv", root, "val")


def test_check_lists_every_problem(tmp_path, capsys):
    root = write_csv_data(tmp_path)
    assert check_dataset("csv", root).ok
    assert run("data", "check", "csv", "--root", str(root)) == 0
    assert "train: 3 images, 3 classes" in capsys.readouterr().out

    rows = {**TRAIN, "a/5.jpg": "", "a/6.jpg": "dog"}  # an empty row and a missing image
    write_csv_data(root, train=rows, images=[*TRAIN, *VAL])
    (root / "images" / "a" / "2.jpg").write_bytes(b"not an image")
    report = check_dataset("csv", root)
    assert not report.ok
    text = "\n".join(report.problems)
    assert "train.csv: line 5: a/5.jpg: no labels" in text
    assert "6.jpg" in text and "2.jpg" in text  # missing, and does not decode
    assert run("data", "check", "csv", "--root", str(root)) == 1


def test_trains_through_the_configuration(synthetic_root, tmp_path):
    """A CSV data set made from the built-in images trains like any other data set."""
    from mlcl.config import load_config
    from mlcl.engine import fit

    rows = {}
    for split in ("train", "val"):
        dataset = build_dataset("synthetic", synthetic_root, split)
        rows[split] = {
            str(path.relative_to(synthetic_root / "images")): "|".join(
                dataset.class_names[k] for k in labels.nonzero()[:, 0].tolist()
            )
            for path, labels in zip(dataset.image_paths, dataset.full_labels)
            if labels.any()
        }
    root = tmp_path / "mine"
    write_csv_data(root, train=rows["train"], val=rows["val"], images=[])
    (root / "images").symlink_to(synthetic_root / "images")
    config = load_config(
        "baseline-quick",
        {
            "data.dataset": "csv",
            "data.root": str(root),
            "data.image_size": 32,
            "data.batch_size": 16,
            "data.workers": 0,
            "model.backbone": "test_resnet",
            "run.epochs": 1,
            "run.out_dir": str(tmp_path / "run"),
            "run.progress": False,
        },
    )
    summary = fit(config)
    assert summary["best_map"] is not None and 0 < summary["best_map"] <= 100
