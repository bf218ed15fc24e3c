"""The PASCAL VOC loader on a tiny devkit written here: difficult objects, split mapping,
folder layouts, and bad XML."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from mlcl.data import build_dataset
from mlcl.data.voc import VOC_CLASSES, voc_image_set
from mlcl.errors import DataError

# id -> objects (class name, difficult)
ANNOTATIONS = {
    "000001": [("dog", False), ("person", False), ("person", True)],
    "000002": [("car", True)],  # car only difficult
    "000003": [("car", True), ("car", False), ("tvmonitor", False)],
}


def xml_text(objects) -> str:
    body = "".join(
        f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
        f"<difficult>{int(difficult)}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        for name, difficult in objects
    )
    return f"<annotation><folder>VOC2007</folder><size><width>8</width></size>{body}</annotation>"


def write_voc(root: Path, year: str = "2007", annotations=ANNOTATIONS) -> Path:
    """root/VOCdevkit/VOC<year>/ with both splits listing every image."""
    folder = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for image_id, objects in annotations.items():
        (folder / "Annotations" / f"{image_id}.xml").write_text(xml_text(objects))
        Image.new("RGB", (8, 8)).save(folder / "JPEGImages" / f"{image_id}.jpg")
    for image_set in ("trainval", "train", "test", "val"):
        (folder / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(annotations))
    return folder


def labels_of(dataset, image: int) -> set[str]:
    return {VOC_CLASSES[c] for c in dataset.full_labels[image].nonzero()[:, 0].tolist()}


def test_difficult_objects_are_left_out_by_default(tmp_path):
    write_voc(tmp_path)
    dataset = build_dataset("voc2007", tmp_path, "train")
    assert dataset.class_names == list(VOC_CLASSES) and dataset.num_classes == 20
    assert labels_of(dataset, 0) == {"dog", "person"}  # a difficult person beside a plain one
    assert labels_of(dataset, 1) == set()  # its only car is difficult
    assert labels_of(dataset, 2) == {"car", "tvmonitor"}
    assert dataset.image_info[1]["difficult"] == [VOC_CLASSES.index("car")]
    assert dataset.image_info[0]["difficult"] == []  # person also has a plain instance


def test_use_difficult_counts_them(tmp_path):
    write_voc(tmp_path)
    dataset = build_dataset("voc2007", tmp_path, "train", use_difficult=True)
    assert labels_of(dataset, 1) == {"car"}
    assert all(info["difficult"] == [] for info in dataset.image_info)


def test_split_mapping():
    assert voc_image_set("2007", "train") == "trainval"
    assert voc_image_set("2007", "val") == "test"
    assert voc_image_set("2012", "val") == "val"  # VOC 2012 test labels are not public
    assert voc_image_set("2012", "train") == "train"  # trainval would contain val


@pytest.mark.parametrize("layout", ["devkit", "year", "itself"])
def test_root_layouts(tmp_path, layout):
    folder = write_voc(tmp_path / "data", year="2012")
    root = {"devkit": tmp_path / "data", "year": folder.parent, "itself": folder}[layout]
    # Only the val list of 2012 is read for split "val": make it differ from trainval.
    (folder / "ImageSets" / "Main" / "val.txt").write_text("000003\n")
    dataset = build_dataset("voc2012", root, "val")
    assert [info["id"] for info in dataset.image_info] == ["000003"]
    assert dataset.image_paths[0] == folder / "JPEGImages" / "000003.jpg"
    assert dataset[0]["image"].shape == (3, 8, 8)


def test_full_labels_tensor(tmp_path):
    write_voc(tmp_path)
    dataset = build_dataset("voc2007", tmp_path, "val")
    assert dataset.full_labels.dtype == torch.bool and dataset.full_labels.shape == (3, 20)


def test_bad_xml_unknown_class_and_missing_files(tmp_path):
    folder = write_voc(tmp_path)
    (folder / "Annotations" / "000002.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match=r"000002\.xml: not a valid XML file"):
        build_dataset("voc2007", tmp_path, "train")
    (folder / "Annotations" / "000002.xml").write_text(xml_text([("unicorn", False)]))
    with pytest.raises(DataError, match=r"000002\.xml: unknown class 'unicorn'"):
        build_dataset("voc2007", tmp_path, "train")
    (folder / "Annotations" / "000002.xml").unlink()
    with pytest.raises(DataError, match=r"000002\.xml: annotation file not found"):
        build_dataset("voc2007", tmp_path, "train")
    (folder / "ImageSets" / "Main" / "test.txt").write_text("\n")
    with pytest.raises(DataError, match=r"test\.txt: empty split"):
        build_dataset("voc2007", tmp_path, "val")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no VOC2007 folder"):
        build_dataset("voc2007", tmp_path / "empty", "train")


def test_an_image_id_that_leaves_the_voc_folder_is_refused(tmp_path):
    folder = write_voc(tmp_path)
    image_set = folder / "ImageSets" / "Main" / "trainval.txt"
    image_set.write_text("000001\n\n../../../elsewhere/x\n")
    with pytest.raises(DataError) as caught:
        build_dataset("voc2007", tmp_path, "train")
    assert str(caught.value).startswith(
        f"{image_set}: line 3: image path '../../../elsewhere/x.xml' leads outside"
    )
