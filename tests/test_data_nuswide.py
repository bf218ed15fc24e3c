"""The NUS-WIDE loader on label files written here, in the official layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from mlcl.data import build_dataset
from mlcl.errors import DataError

CONCEPTS = ["animal", "sky", "water"]
TRAIN = {  # image path (Windows-style, as in the lists) -> concepts
    "actor\\0001_1.jpg": {"sky"},
    "beach\\0002_2.jpg": {"sky", "water"},
    "beach\\0003_3.jpg": set(),
    "zoo\\0004_4.jpg": {"animal"},
}
TEST = {"zoo\\0005_5.jpg": {"animal", "water"}}


def write_nuswide(root: Path, concepts_in_subfolder: bool = False) -> None:
    concept_file = root / (
        "ConceptsList/Concepts81.txt" if concepts_in_subfolder else "Concepts81.txt"
    )
    concept_file.parent.mkdir(parents=True, exist_ok=True)
    concept_file.write_text("\n".join(CONCEPTS) + "\n")
    labels = root / "Groundtruth" / "TrainTestLabels"
    labels.mkdir(parents=True)
    (root / "ImageList").mkdir()
    for part, images in (("Train", TRAIN), ("Test", TEST)):
        (root / "ImageList" / f"{part}Imagelist.txt").write_text("\r\n".join(images) + "\r\n")
        for concept in CONCEPTS:
            lines = [str(int(concept in present)) for present in images.values()]
            (labels / f"Labels_{concept}_{part}.txt").write_text("\n".join(lines) + "\n")
        for name in images:
            path = root / "Flickr" / name.replace("\\", "/")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (6, 4)).save(path)


@pytest.mark.parametrize("concepts_in_subfolder", [False, True])
def test_labels_and_paths(tmp_path, concepts_in_subfolder):
    write_nuswide(tmp_path, concepts_in_subfolder)
    dataset = build_dataset("nuswide", tmp_path, "train")
    assert dataset.class_names == CONCEPTS
    expected = torch.tensor([[0, 1, 0], [0, 1, 1], [0, 0, 0], [1, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(dataset.full_labels, expected)
    assert dataset.image_paths[1] == tmp_path / "Flickr" / "beach" / "0002_2.jpg"
    assert dataset[3]["image"].shape == (3, 4, 6)
    val = build_dataset("nuswide", tmp_path, "val")
    assert val.full_labels.tolist() == [[True, False, True]]


def test_keep_empty_false_drops_unlabelled_images(tmp_path):
    write_nuswide(tmp_path)
    dataset = build_dataset("nuswide", tmp_path, "train", keep_empty=False)
    assert [info["id"] for info in dataset.image_info] == [
        "actor/0001_1.jpg",
        "beach/0002_2.jpg",
        "zoo/0004_4.jpg",
    ]


def test_label_file_problems(tmp_path):
    write_nuswide(tmp_path)
    label_file = tmp_path / "Groundtruth" / "TrainTestLabels" / "Labels_sky_Train.txt"
    label_file.write_text("1\n1\n0\n")
    with pytest.raises(DataError, match=r"Labels_sky_Train\.txt: 3 labels for 4 images"):
        build_dataset("nuswide", tmp_path, "train")
    label_file.write_text("1\n1\n2\n0\n")
    with pytest.raises(DataError, match=r"Labels_sky_Train\.txt: line 3 is '2'"):
        build_dataset("nuswide", tmp_path, "train")
    label_file.unlink()
    with pytest.raises(DataError, match=r"Labels_sky_Train\.txt: file not found"):
        build_dataset("nuswide", tmp_path, "train")


def test_empty_split_and_missing_root(tmp_path):
    write_nuswide(tmp_path)
    (tmp_path / "ImageList" / "TestImagelist.txt").write_text("")
    with pytest.raises(DataError, match=r"TestImagelist\.txt: empty split"):
        build_dataset("nuswide", tmp_path, "val")
    with pytest.raises(DataError, match="data root does not exist"):
        build_dataset("nuswide", tmp_path / "missing", "val")


def test_an_image_path_outside_the_root_is_refused(tmp_path):
    write_nuswide(tmp_path)
    image_list = tmp_path / "ImageList" / "TrainImagelist.txt"
    lines = image_list.read_text().splitlines()
    lines[2] = "..\\..\\elsewhere\\x.jpg"  # Windows-style, as the lists write paths
    image_list.write_text("\r\n".join(lines) + "\r\n")
    with pytest.raises(DataError) as caught:
        build_dataset("nuswide", tmp_path, "train")
    assert str(caught.value).startswith(
        f"{image_list}: line 3: image path '../../elsewhere/x.jpg' leads outside the data root"
    )
