"""Validate a data set on disk before training on it (``mlcl data check DATASET --root DIR``).

Every split's annotation files must parse, every image they name must exist and decode, and the
ids must be consistent (no unknown category, no duplicate image id, no empty split). Unlike the
loaders, which stop at the first problem, the check collects *every* problem, each naming its
file. It only reads: nothing is ever written into a data root.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mlcl.data.build import DATASETS, SPLITS
from mlcl.data.coco import coco_files, coco_problems, load_coco, read_coco_json
from mlcl.data.csv_folder import csv_split_problems, load_csv_folder, read_classes
from mlcl.data.dataset import MultiLabelDataset, load_rgb
from mlcl.data.nuswide import (
    SPLIT_FILES,
    load_nuswide,
    nuswide_files,
    read_label_file,
    read_lines,
)
from mlcl.data.stats import label_frequency
from mlcl.data.voc import load_voc, parse_voc_xml, read_image_ids, voc_dir, voc_image_set
from mlcl.errors import DataError


@dataclass
class SplitSummary:
    """Label statistics of one split that loaded."""

    split: str
    num_images: int
    class_names: list[str]
    frequency: torch.Tensor  # [C] images per class
    labels_per_image: float
    empty_images: int
    scene_counts: dict[str, int] | None = None

    def format(self) -> str:
        order = self.frequency.argsort(descending=True).tolist()
        common = ", ".join(f"{self.class_names[i]} {int(self.frequency[i])}" for i in order[:5])
        rare = ", ".join(f"{self.class_names[i]} {int(self.frequency[i])}" for i in order[-5:])
        rarest = float(self.frequency[order[-1]])
        ratio = f"{float(self.frequency[order[0]]) / rarest:.1f}" if rarest else "inf"
        lines = [
            f"{self.split}: {self.num_images} images, {len(self.class_names)} classes, "
            f"{self.labels_per_image:.2f} labels per image, {self.empty_images} without labels",
            f"  most frequent: {common}",
            f"  rarest: {rare} (most / rarest: {ratio})",
        ]
        if self.scene_counts:
            lines.append("  scenes: " + ", ".join(f"{k} {v}" for k, v in self.scene_counts.items()))
        return "\n".join(lines)


@dataclass
class CheckReport:
    """What ``check_dataset`` found: the problems (empty when sound) and per-split statistics."""

    name: str
    root: Path
    problems: list[str] = field(default_factory=list)
    splits: list[SplitSummary] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"{self.name} at {self.root}"]
        lines += [summary.format() for summary in self.splits]
        if self.ok:
            lines.append("OK: no problems found")
        else:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  {problem}" for problem in self.problems]
        return "\n".join(lines)


def check_dataset(
    name: str, root: str | Path, *, workers: int = 4, progress: bool = False
) -> CheckReport:
    """Check both splits of data set ``name`` under ``root``; never raises for a bad data set."""
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r} (known: {', '.join(DATASETS)})")
    root = Path(root)
    report = CheckReport(name, root)
    if not root.is_dir():
        report.problems.append(f"{root}: data root does not exist")
        return report
    for split in SPLITS:
        problems: list[str] = []
        image_paths, dataset = _SPLIT_CHECKS[_family(name)](name, root, split, problems)
        problems += _image_problems(image_paths, workers, progress, f"{name}/{split}")
        report.problems += problems
        if dataset is not None:
            report.splits.append(_summary(split, dataset))
    return report


def _family(name: str) -> str:
    if name.startswith("voc"):
        return "voc"
    return name if name in ("nuswide", "csv") else "coco"


SplitCheck = Callable[[str, Path, str, list[str]], tuple[list[Path], MultiLabelDataset | None]]


def _check_coco_split(name: str, root: Path, split: str, problems: list[str]):
    annotation_file, image_dir = coco_files(name, root, split)
    try:
        data = read_coco_json(annotation_file)
    except DataError as err:
        problems.append(str(err))
        return [], None
    found = coco_problems(data, annotation_file)
    problems += found
    image_paths = [
        image_dir / record["file_name"]
        for record in data["images"]
        if isinstance(record, dict) and isinstance(record.get("file_name"), str)
    ]
    if found:
        return image_paths, None
    return image_paths, _load_or_record(lambda: load_coco(annotation_file, image_dir), problems)


def _check_voc_split(name: str, root: Path, split: str, problems: list[str]):
    year = name[-4:]
    try:
        folder = voc_dir(root, year)
        image_ids = read_image_ids(
            folder / "ImageSets" / "Main" / f"{voc_image_set(year, split)}.txt"
        )
    except DataError as err:
        problems.append(str(err))
        return [], None
    found = []
    for image_id in image_ids:
        try:
            parse_voc_xml(folder / "Annotations" / f"{image_id}.xml")
        except DataError as err:
            found.append(str(err))
    problems += found
    image_paths = [folder / "JPEGImages" / f"{image_id}.jpg" for image_id in image_ids]
    if found:
        return image_paths, None
    return image_paths, _load_or_record(lambda: load_voc(root, year, split), problems)


def _check_nuswide_split(name: str, root: Path, split: str, problems: list[str]):
    concept_file, list_file, label_dir = nuswide_files(root, split)
    try:
        concepts = read_lines(concept_file)
        relative_paths = [line.replace("\\", "/") for line in read_lines(list_file)]
    except DataError as err:
        problems.append(str(err))
        return [], None
    found = [] if relative_paths else [f"{list_file}: empty split (no images)"]
    part = SPLIT_FILES[split]
    for concept in concepts:
        try:
            read_label_file(label_dir / f"Labels_{concept}_{part}.txt", len(relative_paths))
        except DataError as err:
            found.append(str(err))
    problems += found
    image_paths = [root / "Flickr" / path for path in relative_paths]
    if found:
        return image_paths, None
    return image_paths, _load_or_record(lambda: load_nuswide(root, split), problems)


def _check_csv_split(name: str, root: Path, split: str, problems: list[str]):
    class_problems: list[str] = []
    class_names = read_classes(root, class_problems)
    if split == "train":  # classes.txt serves both splits: report its problems once
        problems += class_problems
    _, image_paths, found = csv_split_problems(root, split, class_names)
    problems += found
    if found or class_problems:
        return image_paths, None
    # Missing images are reported by the image check that follows, one line each.
    if not all(path.is_file() for path in image_paths):
        return image_paths, None
    return image_paths, _load_or_record(lambda: load_csv_folder(root, split), problems)


_SPLIT_CHECKS: dict[str, SplitCheck] = {
    "coco": _check_coco_split,
    "voc": _check_voc_split,
    "nuswide": _check_nuswide_split,
    "csv": _check_csv_split,
}


def _load_or_record(load: Callable[[], MultiLabelDataset], problems: list[str]):
    try:
        return load()
    except DataError as err:
        problems.append(str(err))
        return None


def _image_problem(path: Path) -> str | None:
    try:
        load_rgb(path, draft_size=64)
    except DataError as err:
        return str(err)
    return None


def _image_problems(paths: list[Path], workers: int, progress: bool, title: str) -> list[str]:
    """One message per image that is missing or does not decode (decoding runs in threads:
    PIL releases the GIL while it decodes)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(_image_problem, paths, chunksize=64)
        results = tqdm(results, total=len(paths), desc=f"{title} images", disable=not progress)
        return [problem for problem in results if problem]


def _summary(split: str, dataset: MultiLabelDataset) -> SplitSummary:
    labels = dataset.full_labels
    scene_counts = None
    if dataset.scene_ids is not None:
        counts = torch.bincount(dataset.scene_ids)
        names = dataset.scene_names or [str(k) for k in range(len(counts))]
        scene_counts = {names[k]: int(count) for k, count in enumerate(counts)}
    return SplitSummary(
        split=split,
        num_images=len(dataset),
        class_names=dataset.class_names,
        frequency=label_frequency(labels),
        labels_per_image=float(labels.sum(1).float().mean()),
        empty_images=int((~labels.any(1)).sum()),
        scene_counts=scene_counts,
    )
