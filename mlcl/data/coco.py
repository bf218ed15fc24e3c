"""MS-COCO (2014, 2017) and the built-in synthetic data: both are read from COCO-format JSON.

An image's label vector says which categories have at least one annotated instance in it.
Category ids (COCO's run 1..90 with gaps) are mapped to contiguous indices 0..C-1 in sorted-id
order, and the class names come from the categories.

Crowd annotations (``iscrowd: 1``, a region of many instances such as a crowd of people) count as
the category being present by default (``include_crowd=True``): the instances are really there.
This is the usual practice of multi-label work on COCO (Query2Label's loader reads every
annotation of an image). Images without any annotation are kept as all-negative examples
(``keep_empty=True``: all 82,783 / 40,504 images of COCO 2014 train / val) or dropped
(``keep_empty=False``: 82,081 / 40,137, the image counts that ML-GCN, Query2Label and most
multi-label papers report, since their loaders only list images with annotations).

Layouts (``coco_files`` gives the paths):

- COCO 2014: ``root/{train2014,val2014}/*.jpg`` and ``root/annotations/instances_{train,val}2014.json``
  (COCO 2017 likewise with ``2017``);
- built-in data: ``root/images/{train,val}/*.jpg`` and ``root/annotations/instances_{train,val}.json``;
  its image records carry an extra key ``scene`` (the scene id), and the file a top-level
  ``scenes`` list of ``{"id", "name"}``.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import torch
from pycocotools.coco import COCO

from mlcl.data.dataset import MultiLabelDataset, Transform
from mlcl.data.paths import resolve_inside
from mlcl.errors import DataError

# Keys of a COCO image record that are not extra per-image information.
_STANDARD_IMAGE_KEYS = {"file_name", "width", "height", "license", "coco_url", "flickr_url"}
_STANDARD_IMAGE_KEYS |= {"date_captured"}
_REQUIRED_KEYS = {
    "images": ("id", "file_name"),
    "annotations": ("id", "image_id", "category_id"),
    "categories": ("id", "name"),
}


def coco_files(name: str, root: str | Path, split: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of ``split`` ("train" | "val") of a COCO-format data set.

    ``name`` is ``coco2014``, ``coco2017`` or ``synthetic``.
    """
    root = Path(root)
    if name in ("coco2014", "coco2017"):
        year = name[-4:]
        return (root / "annotations" / f"instances_{split}{year}.json", root / f"{split}{year}")
    if name == "synthetic":
        return root / "annotations" / f"instances_{split}.json", root / "images" / split
    raise ValueError(f"not a COCO-format data set: {name!r}")


def read_coco_json(path: str | Path) -> dict[str, Any]:
    """Read an ``instances_*.json`` file; ``DataError`` if it is missing, not JSON, or lacks the
    ``images`` / ``annotations`` / ``categories`` lists."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a JSON file ({err})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with images, annotations, categories")
    for key in _REQUIRED_KEYS:
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: missing the list {key!r}")
    return data


def coco_problems(data: dict[str, Any], path: str | Path) -> list[str]:
    """Every inconsistency of a parsed COCO file, one message each (empty when it is sound):
    records lacking required keys, duplicate ids, annotations of unknown images or categories."""
    problems = []
    for key, fields in _REQUIRED_KEYS.items():
        for position, record in enumerate(data[key]):
            missing = [f for f in fields if not isinstance(record, dict) or f not in record]
            if missing:
                problems.append(f"{path}: {key}[{position}] lacks {', '.join(map(repr, missing))}")
    if problems:  # the checks below need the keys
        return problems
    for key, fields in _REQUIRED_KEYS.items():
        for position, record in enumerate(data[key]):
            bad = [f for f in fields if f.endswith("id") and not isinstance(record[f], int)]
            if bad:
                problems.append(f"{path}: {key}[{position}]: {', '.join(bad)} must be integers")
            if key == "images" and not isinstance(record["file_name"], str):
                problems.append(f"{path}: images[{position}]: file_name must be a string")
    if problems:
        return problems
    for key, record_name in (
        ("images", "image"),
        ("annotations", "annotation"),
        ("categories", "category"),
    ):
        for duplicate in sorted(_duplicates([record["id"] for record in data[key]])):
            problems.append(f"{path}: duplicate {record_name} id {duplicate}")
    image_ids = {image["id"] for image in data["images"]}
    category_ids = {category["id"] for category in data["categories"]}
    for annotation in data["annotations"]:
        if annotation["category_id"] not in category_ids:
            problems.append(
                f"{path}: annotation {annotation['id']} has unknown category id "
                f"{annotation['category_id']}"
            )
        if annotation["image_id"] not in image_ids:
            problems.append(
                f"{path}: annotation {annotation['id']} refers to unknown image id "
                f"{annotation['image_id']}"
            )
    if not data["images"]:
        problems.append(f"{path}: empty split (no images)")
    if not data["categories"]:
        problems.append(f"{path}: no categories")
    return problems


def load_coco(
    annotation_file: str | Path,
    image_dir: str | Path,
    transform: Transform | None = None,
    *,
    keep_empty: bool = True,
    include_crowd: bool = True,
    name: str = "",
) -> MultiLabelDataset:
    """A :class:`MultiLabelDataset` from a COCO-format annotation file and its image folder.

    Images are in ascending image-id order. ``image_info[i]`` holds the image's COCO ``id`` and
    any extra keys of its record (the built-in data's ``scene``).
    """
    annotation_file = Path(annotation_file)
    data = read_coco_json(annotation_file)
    problems = coco_problems(data, annotation_file)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise DataError(problems[0] + more)

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()

    category_ids = sorted(coco.getCatIds())
    class_index = {category_id: index for index, category_id in enumerate(category_ids)}
    class_names = [category["name"] for category in coco.loadCats(category_ids)]

    image_paths, rows, image_info = [], [], []
    for image_id in sorted(coco.getImgIds()):
        present = torch.zeros(len(category_ids), dtype=torch.bool)
        for annotation in coco.imgToAnns.get(image_id, []):
            if annotation.get("iscrowd", 0) and not include_crowd:
                continue
            present[class_index[annotation["category_id"]]] = True
        if not keep_empty and not present.any():
            continue
        record = coco.imgs[image_id]
        entry = f"image id {image_id}"
        image_paths.append(resolve_inside(image_dir, record["file_name"], annotation_file, entry))
        rows.append(present)
        extra = {k: v for k, v in record.items() if k not in _STANDARD_IMAGE_KEYS}
        image_info.append(extra)
    if not rows:
        raise DataError(f"{annotation_file}: empty split (no image has an annotation)")

    scenes = sorted(data.get("scenes", []), key=lambda scene: scene["id"])
    return MultiLabelDataset(
        image_paths,
        torch.stack(rows),
        class_names,
        transform,
        image_info=image_info,
        scene_names=[scene["name"] for scene in scenes] or None,
        name=name or annotation_file.stem,
    )


def _duplicates(values: list[Any]) -> set[Any]:
    seen, duplicates = set(), set()
    for value in values:
        (duplicates if value in seen else seen).add(value)
    return duplicates
