"""The COCO-format loader on small annotation files written here: non-contiguous category ids,
crowd annotations, images without annotations, extra image keys; and every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mlcl.data import build_dataset
from mlcl.data.coco import load_coco
from mlcl.errors import DataError

# Category ids out of order and with gaps: indices must follow sorted ids (3 → 0, 7 → 1, 42 → 2).
CATEGORIES = [{"id": 42, "name": "zebra"}, {"id": 3, "name": "car"}, {"id": 7, "name": "person"}]


def coco_data() -> dict:
    return {
        "images": [
            {"id": 20, "file_name": "b.jpg", "width": 8, "height": 8, "scene": 1},
            {"id": 10, "file_name": "a.jpg", "width": 8, "height": 8, "scene": 0},
            {"id": 30, "file_name": "c.jpg", "width": 8, "height": 8, "scene": 2},  # no annotation
            {"id": 40, "file_name": "d.jpg", "width": 8, "height": 8, "scene": 1},  # crowd only
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "iscrowd": 0, "bbox": [0, 0, 2, 2]},
            {"id": 2, "image_id": 10, "category_id": 42, "iscrowd": 0, "bbox": [0, 0, 2, 2]},
            {"id": 3, "image_id": 20, "category_id": 7, "iscrowd": 0, "bbox": [0, 0, 2, 2]},
            {"id": 4, "image_id": 20, "category_id": 7, "iscrowd": 0, "bbox": [1, 1, 2, 2]},
            {"id": 5, "image_id": 40, "category_id": 3, "iscrowd": 1, "bbox": [0, 0, 8, 8]},
        ],
        "categories": CATEGORIES,
        "scenes": [{"id": 2, "name": "z"}, {"id": 0, "name": "x"}, {"id": 1, "name": "y"}],
    }


def write_coco(root: Path, data: dict, split: str = "train", images: bool = True) -> Path:
    """The built-in layout: root/images/<split>/, root/annotations/instances_<split>.json."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    if images:
        for record in data["images"]:
            Image.new("RGB", (8, 8), (record["id"], 0, 0)).save(image_dir / record["file_name"])
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(data))
    return path


def test_labels_follow_sorted_category_ids_and_image_ids(tmp_path):
    write_coco(tmp_path, coco_data())
    dataset = build_dataset("synthetic", tmp_path, "train")
    assert dataset.class_names == ["car", "person", "zebra"]
    assert [info["id"] for info in dataset.image_info] == [10, 20, 30, 40]
    expected = torch.tensor(
        [[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=torch.bool
    )  # a: car + zebra; b: person (twice); c: nothing; d: crowd of cars
    torch.testing.assert_close(dataset.full_labels, expected)
    torch.testing.assert_close(dataset.labels, expected.float())
    assert bool(dataset.observed.all())
    assert dataset.image_paths[0] == tmp_path / "images" / "train" / "a.jpg"


def test_scene_ids_and_names_come_from_extra_keys(tmp_path):
    write_coco(tmp_path, coco_data())
    dataset = build_dataset("synthetic", tmp_path, "train")
    torch.testing.assert_close(dataset.scene_ids, torch.tensor([0, 1, 2, 1]))
    assert dataset.scene_names == ["x", "y", "z"]
    assert "file_name" not in dataset.image_info[0] and dataset.image_info[0]["scene"] == 0


def test_keep_empty_and_include_crowd(tmp_path):
    annotation_file = write_coco(tmp_path, coco_data())
    image_dir = tmp_path / "images" / "train"
    dropped = load_coco(annotation_file, image_dir, keep_empty=False)
    assert [info["id"] for info in dropped.image_info] == [10, 20, 40]
    no_crowd = load_coco(annotation_file, image_dir, include_crowd=False)
    assert not no_crowd.full_labels[3].any()  # the crowd-only image becomes all-negative
    both = load_coco(annotation_file, image_dir, keep_empty=False, include_crowd=False)
    assert [info["id"] for info in both.image_info] == [10, 20]


def test_getitem_returns_the_batch_keys(tmp_path):
    write_coco(tmp_path, coco_data())
    dataset = build_dataset("synthetic", tmp_path, "train")
    item = dataset[1]
    assert set(item) == {"image", "labels", "observed", "index"}
    assert item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.float32
    assert abs(float(item["image"][0, 0, 0]) - 20 / 255) < 1e-6  # b.jpg (id 20) is red 20
    assert item["labels"].tolist() == [0.0, 1.0, 0.0] and int(item["index"]) == 1


def test_coco2014_layout(tmp_path):
    data = coco_data()
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2014.json").write_text(json.dumps(data))
    dataset = build_dataset("coco2014", tmp_path, "val")
    assert dataset.image_paths[0] == tmp_path / "val2014" / "a.jpg"
    assert len(dataset) == 4


# ------------------------------------------------------------------ bad input: DataError


def assert_data_error(tmp_path, data_or_text, *fragments: str) -> None:
    path = tmp_path / "annotations" / "instances_train.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = data_or_text if isinstance(data_or_text, str) else json.dumps(data_or_text)
    path.write_text(text)
    with pytest.raises(DataError) as error:
        build_dataset("synthetic", tmp_path, "train")
    message = str(error.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_not_json(tmp_path):
    assert_data_error(tmp_path, "{not json", "not a JSON file")


def test_missing_top_level_key(tmp_path):
    data = coco_data()
    del data["categories"]
    assert_data_error(tmp_path, data, "missing the list 'categories'")


def test_record_lacking_a_key(tmp_path):
    data = coco_data()
    del data["annotations"][2]["category_id"]
    assert_data_error(tmp_path, data, "annotations[2]", "'category_id'")


def test_unknown_category_id(tmp_path):
    data = coco_data()
    data["annotations"][0]["category_id"] = 99
    assert_data_error(tmp_path, data, "unknown category id 99")


def test_unknown_image_id(tmp_path):
    data = coco_data()
    data["annotations"][0]["image_id"] = 77
    assert_data_error(tmp_path, data, "unknown image id 77")


def test_duplicate_image_id(tmp_path):
    data = coco_data()
    data["images"][1]["id"] = 20
    assert_data_error(tmp_path, data, "duplicate image id 20")


def test_empty_split(tmp_path):
    data = coco_data()
    data["images"], data["annotations"] = [], []
    assert_data_error(tmp_path, data, "empty split")


def test_empty_split_after_dropping_unlabelled_images(tmp_path):
    data = coco_data()
    data["annotations"] = []
    path = write_coco(tmp_path, data)
    with pytest.raises(DataError, match="empty split"):
        load_coco(path, tmp_path / "images" / "train", keep_empty=False)


def test_missing_annotation_file_and_root(tmp_path):
    with pytest.raises(DataError, match="annotation file not found"):
        build_dataset("coco2017", tmp_path, "train")
    with pytest.raises(DataError, match="data root does not exist"):
        build_dataset("coco2014", tmp_path / "nowhere", "train")


def test_missing_truncated_and_non_image_files(tmp_path):
    write_coco(tmp_path, coco_data())
    dataset = build_dataset("synthetic", tmp_path, "train")
    image_dir = tmp_path / "images" / "train"
    (image_dir / "a.jpg").unlink()
    with pytest.raises(DataError, match=r"a\.jpg: image file not found"):
        dataset[0]
    (image_dir / "b.jpg").write_text("this is not an image")
    with pytest.raises(DataError, match=r"b\.jpg: not an image file"):
        dataset[1]
    Image.new("RGB", (64, 64), (1, 2, 3)).save(image_dir / "c.jpg")
    content = (image_dir / "c.jpg").read_bytes()
    (image_dir / "c.jpg").write_bytes(content[: len(content) // 2])
    with pytest.raises(DataError, match=r"c\.jpg: cannot decode image"):
        dataset[2]


@pytest.mark.parametrize("file_name", ["../../../elsewhere/x.jpg", "/etc/passwd", "a/../../x.jpg"])
def test_an_image_path_outside_the_root_is_refused(tmp_path, file_name):
    data = coco_data()
    data["images"][1]["file_name"] = file_name  # image id 10
    path = write_coco(tmp_path, data, images=False)
    with pytest.raises(DataError) as caught:
        load_coco(path, tmp_path / "images" / "train")
    message = str(caught.value)
    assert message.startswith(f"{path}: image id 10: image path {file_name!r}")
    assert "\n" not in message


def test_an_image_path_that_stays_inside_the_root_is_kept(tmp_path):
    data = coco_data()
    data["images"][1]["file_name"] = "sub/../a.jpg"
    path = write_coco(tmp_path, data, images=False)
    dataset = load_coco(path, tmp_path / "images" / "train")
    assert dataset.image_paths[0] == tmp_path / "images" / "train" / "a.jpg"


def test_a_file_name_that_is_not_a_string(tmp_path):
    data = coco_data()
    data["images"][0]["file_name"] = 7
    assert_data_error(tmp_path, data, "images[0]: file_name must be a string")
