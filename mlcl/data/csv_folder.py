"""Your own images: a folder of images and one CSV file of labels per split.

The layout (``data.dataset: csv``, ``data.root: DIR``)::

    DIR/train.csv       file_name,labels    one row per image; labels separated by "|"
    DIR/val.csv         the same for the split that is evaluated
    DIR/classes.txt     optional: one class name per line, in label-index order
    DIR/images/...      the images, in any sub-folders; file_name is relative to DIR/images

For example ``street/0001.jpg,car|person|traffic light``. Without ``classes.txt`` the classes are
the sorted union of the labels of both CSV files, so the two splits always agree on the label
indices. A label missing from ``classes.txt``, an image that does not exist, a row without
labels, an image listed twice, a row with the wrong number of fields or a path that leaves
``DIR/images`` is an error naming the file and line (``mlcl data check csv --root DIR`` lists
every one of them at once).

A row must name at least one label: an empty field is far more often a mistake in the file than
an intended all-negative example, and multi-label training has no use for an image that only
teaches "none of these".
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

from mlcl.data.dataset import MultiLabelDataset, Transform
from mlcl.data.paths import resolve_inside
from mlcl.errors import DataError

HEADER = ("file_name", "labels")
LABEL_SEPARATOR = "|"
SPLIT_FILES = {"train": "train.csv", "val": "val.csv"}


@dataclass(frozen=True)
class CsvRow:
    line: int  # 1-based line in the CSV file, for messages
    file_name: str
    labels: tuple[str, ...]


def csv_files(root: str | Path, split: str) -> tuple[Path, Path]:
    """(label file, image folder) of ``split`` ("train" | "val")."""
    root = Path(root)
    return root / SPLIT_FILES[split], root / "images"


def read_csv_rows(csv_file: Path, problems: list[str]) -> list[CsvRow]:
    """The rows of one split's CSV file. Each problem found (bad header, wrong number of fields,
    empty labels, duplicate image) is appended to ``problems`` as one line naming the file and
    line, and its row is left out."""
    try:
        with open(csv_file, encoding="utf-8", newline="") as file:
            lines = list(csv.reader(file))
    except FileNotFoundError:
        problems.append(f"{csv_file}: label file not found")
        return []
    except UnicodeDecodeError as err:
        problems.append(f"{csv_file}: not a UTF-8 text file ({err.reason})")
        return []
    except csv.Error as err:
        problems.append(f"{csv_file}: not a CSV file ({err})")
        return []
    if not lines or tuple(field.strip() for field in lines[0]) != HEADER:
        found = ",".join(lines[0]) if lines else "an empty file"
        problems.append(
            f"{csv_file}: line 1: expected the header 'file_name,labels', got {found!r}"
        )
        return []
    rows: list[CsvRow] = []
    first_line_of: dict[str, int] = {}
    for line, fields in enumerate(lines[1:], start=2):
        if not fields:
            continue  # a blank line
        where = f"{csv_file}: line {line}"
        if len(fields) != len(HEADER):
            problems.append(f"{where}: expected 2 fields (file_name,labels), got {len(fields)}")
            continue
        file_name = fields[0].strip()
        labels = tuple(
            dict.fromkeys(  # keeps the order, drops a label written twice
                label.strip() for label in fields[1].split(LABEL_SEPARATOR) if label.strip()
            )
        )
        if not file_name:
            problems.append(f"{where}: empty file_name")
        elif not labels:
            problems.append(f"{where}: {file_name}: no labels")
        elif file_name in first_line_of:
            problems.append(
                f"{where}: {file_name} is listed again (first on line {first_line_of[file_name]})"
            )
        else:
            first_line_of[file_name] = line
            rows.append(CsvRow(line, file_name, labels))
    if not rows and not problems:
        problems.append(f"{csv_file}: empty split (no images)")
    return rows


def read_classes(root: str | Path, problems: list[str]) -> list[str]:
    """The class names: ``classes.txt`` when it exists, else the sorted union of the labels of
    ``train.csv`` and ``val.csv`` (problems of those files are not repeated here)."""
    root = Path(root)
    classes_file = root / "classes.txt"
    if classes_file.exists():
        names = [line.strip() for line in classes_file.read_text(encoding="utf-8").splitlines()]
        names = [name for name in names if name]
        if not names:
            problems.append(f"{classes_file}: no classes")
        seen: set[str] = set()
        for name in names:
            if name in seen:
                problems.append(f"{classes_file}: class {name!r} is listed twice")
            seen.add(name)
        return list(dict.fromkeys(names))
    union: set[str] = set()
    for split in SPLIT_FILES:
        for row in read_csv_rows(csv_files(root, split)[0], problems=[]):
            union.update(row.labels)
    return sorted(union)


def csv_split_problems(
    root: str | Path, split: str, class_names: list[str]
) -> tuple[list[CsvRow], list[Path], list[str]]:
    """(valid rows, their image paths, every problem) of one split, for the loader and for
    ``mlcl data check``. Image files are not opened here; only their names are checked."""
    csv_file, image_dir = csv_files(root, split)
    problems: list[str] = []
    known = set(class_names)
    rows, paths = [], []
    for row in read_csv_rows(csv_file, problems):
        where = f"line {row.line}"
        unknown = [label for label in row.labels if label not in known]
        if unknown:
            problems.append(
                f"{csv_file}: {where}: {row.file_name}: unknown class {unknown[0]!r} "
                f"(not in {Path(root) / 'classes.txt'})"
            )
            continue
        try:
            path = resolve_inside(image_dir, row.file_name, csv_file, where)
        except DataError as err:
            problems.append(str(err))
            continue
        rows.append(row)
        paths.append(path)
    return rows, paths, problems


def load_csv_folder(
    root: str | Path, split: str, transform: Transform | None = None, *, name: str = ""
) -> MultiLabelDataset:
    """A :class:`MultiLabelDataset` of ``split`` ("train" | "val") of a CSV data set.

    Raises:
        DataError: at the first problem of the label files (naming file and line), or when an
            image the CSV file lists does not exist.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data root does not exist")
    problems: list[str] = []
    class_names = read_classes(root, problems)
    rows, paths, split_problems = csv_split_problems(root, split, class_names)
    problems += split_problems
    if problems:
        more = f" (and {len(problems) - 1} more: mlcl data check csv --root {root})"
        raise DataError(problems[0] + (more if len(problems) > 1 else ""))
    csv_file = csv_files(root, split)[0]
    for row, path in zip(rows, paths):
        if not path.is_file():
            raise DataError(f"{csv_file}: line {row.line}: image {path} not found")
    index = {class_name: k for k, class_name in enumerate(class_names)}
    labels = torch.zeros(len(rows), len(class_names), dtype=torch.bool)
    for i, row in enumerate(rows):
        labels[i, [index[label] for label in row.labels]] = True
    return MultiLabelDataset(
        paths,
        labels,
        class_names,
        transform,
        [{"id": row.file_name} for row in rows],
        name=name or f"csv/{split}",
    )
