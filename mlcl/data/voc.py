"""PASCAL VOC 2007 / 2012 as a multi-label data set (20 classes, in the standard order).

Read from the devkit layout: ``Annotations/<id>.xml`` (one ``<object>`` per instance, with its
``<name>`` and ``<difficult>`` flag), ``ImageSets/Main/<split>.txt`` (the image ids of a split) and
``JPEGImages/<id>.jpg``. ``root`` may be that ``VOC2007`` folder itself, or a folder holding
``VOC2007/`` or ``VOCdevkit/VOC2007/`` (what the official tars extract to).

Splits follow the multi-label literature. VOC 2007: ``train`` is ``trainval`` (5,011 images),
``val`` is ``test`` (4,952). VOC 2012's test labels are not public, so ``val`` is its ``val``
(5,823) and ``train`` its ``train`` (5,717), not ``trainval``, which contains ``val`` (the
single-positive protocol of Cole et al. trains on VOC 2012 ``train`` and tests on ``val`` too).

Objects marked difficult are left out by default: a class whose only instances in an image are
difficult is not a positive of that image (``use_difficult=True`` counts them). Such classes are
listed per image in ``image_info[i]["difficult"]`` (label indices), for evaluations that ignore them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from mlcl.data.dataset import MultiLabelDataset, Transform
from mlcl.data.paths import resolve_inside
from mlcl.errors import DataError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip


def voc_dir(root: str | Path, year: str) -> Path:
    """The ``VOC<year>`` folder under ``root`` (``root`` itself, ``root/VOC<year>`` or
    ``root/VOCdevkit/VOC<year>``); ``DataError`` if none has an ``Annotations`` folder."""
    root = Path(root)
    candidates = [root, root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"]
    for candidate in candidates:
        if (candidate / "Annotations").is_dir():
            return candidate
    if not root.exists():
        raise DataError(f"{root}: data root does not exist")
    searched = ", ".join(str(candidate) for candidate in candidates)
    raise DataError(f"{root}: no VOC{year} folder (no Annotations/ in {searched})")


def voc_image_set(year: str, split: str) -> str:
    """The devkit image set behind a split: 2007: train → trainval, val → test; 2012: train →
    train, val → val (training on trainval would train on the evaluation images)."""
    if split == "train":
        return "trainval" if year == "2007" else "train"
    if split == "val":
        return "test" if year == "2007" else "val"
    raise ValueError(f"split must be 'train' or 'val', got {split!r}")


def read_image_ids(path: Path) -> list[str]:
    """Image ids listed one per line in an ``ImageSets/Main/*.txt`` file."""
    return [image_id for _, image_id in _numbered_image_ids(path)]


def _numbered_image_ids(path: Path) -> list[tuple[int, str]]:
    """``(line number, image id)`` of every non-blank line of an image set file."""
    try:
        lines = path.read_text().split("\n")
    except FileNotFoundError:
        raise DataError(f"{path}: image set file not found") from None
    ids = [(number, line.split()[0]) for number, line in enumerate(lines, 1) if line.strip()]
    if not ids:
        raise DataError(f"{path}: empty split (no image ids)")
    return ids


def parse_voc_xml(path: Path) -> list[tuple[str, bool]]:
    """``(class name, difficult)`` of every object in a VOC annotation file."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except ET.ParseError as err:
        raise DataError(f"{path}: not a valid XML file ({err})") from None
    objects = []
    for element in root.iter("object"):
        name = element.findtext("name")
        if name is None or not name.strip():
            raise DataError(f"{path}: an <object> lacks its <name>")
        name = name.strip()
        if name not in VOC_CLASSES:
            raise DataError(f"{path}: unknown class {name!r}")
        difficult = (element.findtext("difficult") or "0").strip() == "1"
        objects.append((name, difficult))
    return objects


def load_voc(
    root: str | Path,
    year: str,
    split: str,
    transform: Transform | None = None,
    *,
    use_difficult: bool = False,
    name: str = "",
) -> MultiLabelDataset:
    """A :class:`MultiLabelDataset` of VOC ``year`` ("2007" | "2012"), ``split`` ("train" | "val")."""
    folder = voc_dir(root, year)
    image_set = folder / "ImageSets" / "Main" / f"{voc_image_set(year, split)}.txt"
    numbered_ids = _numbered_image_ids(image_set)
    class_index = {class_name: index for index, class_name in enumerate(VOC_CLASSES)}
    labels = torch.zeros(len(numbered_ids), len(VOC_CLASSES), dtype=torch.bool)
    image_info, image_paths = [], []
    for row, (line, image_id) in enumerate(numbered_ids):
        # An id names both its annotation and its image: neither may leave the VOC folder.
        where = f"line {line}"
        annotation = resolve_inside(folder / "Annotations", f"{image_id}.xml", image_set, where)
        image_paths.append(
            resolve_inside(folder / "JPEGImages", f"{image_id}.jpg", image_set, where)
        )
        difficult_only = torch.zeros(len(VOC_CLASSES), dtype=torch.bool)
        for class_name, difficult in parse_voc_xml(annotation):
            if difficult and not use_difficult:
                difficult_only[class_index[class_name]] = True
            else:
                labels[row, class_index[class_name]] = True
        difficult_only &= ~labels[row]
        image_info.append({"id": image_id, "difficult": difficult_only.nonzero()[:, 0].tolist()})
    return MultiLabelDataset(
        image_paths, labels, VOC_CLASSES, transform, image_info, name=name or f"voc{year}/{split}"
    )
