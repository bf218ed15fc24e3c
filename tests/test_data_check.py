"""``check_dataset`` and the ``mlcl data`` commands: a sound set passes, a broken one lists every
problem with its file, nothing is written into a data root; download instructions; argument errors
of ``build_dataset``."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest

from mlcl.data import DATASETS, build_dataset
from mlcl.data.check import check_dataset
from mlcl.data.cli import add_data_commands
from mlcl.data.download import ARCHIVES, instructions
from mlcl.errors import DataError


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_data_commands(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


def snapshot(root):
    return {path: path.stat().st_mtime_ns for path in root.rglob("*")}


def test_sound_data_set_passes(synthetic_root, capsys):
    before = snapshot(synthetic_root)
    report = check_dataset("synthetic", synthetic_root)
    assert report.ok and [s.split for s in report.splits] == ["train", "val"]
    assert report.splits[0].num_images == 64 and len(report.splits[0].class_names) >= 20
    assert run("data", "check", "synthetic", "--root", str(synthetic_root)) == 0
    out = capsys.readouterr().out
    assert "train: 64 images" in out and "scenes: " in out and "OK: no problems" in out
    assert snapshot(synthetic_root) == before  # nothing written into the data root


def test_every_problem_is_listed_with_its_file(synthetic_root, tmp_path, capsys):
    root = tmp_path / "broken"
    shutil.copytree(synthetic_root, root)
    train_file = root / "annotations" / "instances_train.json"
    data = json.loads(train_file.read_text())
    data["annotations"][0]["category_id"] = 999
    data["images"].append(dict(data["images"][2]))  # a second record with the same id
    train_file.write_text(json.dumps(data))
    missing = root / "images" / "train" / data["images"][3]["file_name"]
    missing.unlink()
    truncated = root / "images" / "train" / data["images"][4]["file_name"]
    truncated.write_bytes(truncated.read_bytes()[:200])
    (root / "annotations" / "instances_val.json").write_text("[1, 2")

    report = check_dataset("synthetic", root, workers=2)
    assert not report.ok
    text = "\n".join(report.problems)
    assert "unknown category id 999" in text
    assert f"duplicate image id {data['images'][2]['id']}" in text
    assert f"{missing}: image file not found" in text
    assert f"{truncated}: cannot decode image" in text
    assert "instances_val.json: not a JSON file" in text
    assert len(report.problems) == 5
    assert run("data", "check", "synthetic", "--root", str(root)) == 1
    out = capsys.readouterr().out
    assert "5 problem(s):" in out and str(missing) in out


def test_missing_root_is_a_problem(tmp_path):
    report = check_dataset("voc2007", tmp_path / "absent")
    assert report.problems == [f"{tmp_path / 'absent'}: data root does not exist"]


def test_voc_and_nuswide_problems(tmp_path):
    folder = tmp_path / "voc" / "VOC2007"
    (folder / "ImageSets" / "Main").mkdir(parents=True)
    (folder / "Annotations").mkdir()
    (folder / "ImageSets" / "Main" / "trainval.txt").write_text("a\nb\n")
    (folder / "Annotations" / "a.xml").write_text(
        "<annotation><object><name>cat</name></object></annotation>"
    )
    report = check_dataset("voc2007", tmp_path / "voc")
    text = "\n".join(report.problems)
    assert "b.xml: annotation file not found" in text
    assert "a.jpg: image file not found" in text and "b.jpg: image file not found" in text
    assert "test.txt: image set file not found" in text

    (tmp_path / "nus").mkdir()
    report = check_dataset("nuswide", tmp_path / "nus")
    assert any("Concepts81.txt: file not found" in problem for problem in report.problems)


def test_synth_command_writes_a_data_set(tmp_path, capsys):
    out = tmp_path / "made"
    code = run("data", "synth", "--out", str(out), "--num-train", "3", "--num-val", "2",
               "--image-size", "32", "--seed", "5")  # fmt: skip
    assert code == 0 and "wrote 5 images" in capsys.readouterr().out
    assert len(build_dataset("synthetic", out, "train")) == 3
    assert run("data", "synth", "--out", str(tmp_path / "tiny"), "--image-size", "16") == 2
    assert "image_size >= 32" in capsys.readouterr().out
    assert not (tmp_path / "tiny").exists()


def test_download_instructions(capsys):
    for name in DATASETS:
        text = instructions(name)
        assert len(text) > 100
    for name, archives in ARCHIVES.items():
        assert all(archive.url in instructions(name) for archive in archives)
    assert "train2014.zip" in instructions("coco2014")
    assert "VOCtest_06-Nov-2007.tar" in instructions("voc2007")
    assert "Concepts81.txt" in instructions("nuswide") and "research" in instructions("nuswide")
    assert run("data", "download", "coco2017", "--print-only") == 0
    assert "val2017.zip" in capsys.readouterr().out
    assert run("data", "download", "nuswide", "--root", "unused") == 1  # nothing to download
    with pytest.raises(DataError, match="unknown data set"):
        instructions("imagenet")


def test_build_dataset_argument_errors(synthetic_root):
    with pytest.raises(DataError, match="unknown data set 'coco'"):
        build_dataset("coco", synthetic_root, "train")
    with pytest.raises(DataError, match="unknown split 'test'"):
        build_dataset("synthetic", synthetic_root, "test")
    with pytest.raises(DataError, match="unknown label mode"):
        build_dataset("synthetic", synthetic_root, "train", labels="partial")
    with pytest.raises(DataError, match="data root does not exist"):
        build_dataset("synthetic", synthetic_root / "nope", "train")
