"""NUS-WIDE (81 concepts) from its label files.

The layout of the official distribution (NUS-WIDE's "Groundtruth" and "ImageList" archives plus
the images, gathered under one root)::

    root/Concepts81.txt                                   81 concept names, one per line
                                                          (or root/ConceptsList/Concepts81.txt)
    root/ImageList/TrainImagelist.txt, TestImagelist.txt  image paths, Windows-style
                                                          (``actor\\0001_2124494179.jpg``)
    root/Groundtruth/TrainTestLabels/Labels_<concept>_Train.txt, ..._Test.txt
                                                          one 0/1 per line, aligned with the list
    root/Flickr/<folder>/<file>.jpg                       the images

``train`` is the official training list (161,789 images), ``val`` the test list (107,859). Images
without any of the 81 concepts are kept as all-negative examples (``keep_empty=True``) or dropped;
many papers drop them. Some images of the original URL list are no longer on Flickr: run
``mlcl data check nuswide --root DIR`` to list every missing file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mlcl.data.dataset import MultiLabelDataset, Transform
from mlcl.data.paths import resolve_inside
from mlcl.errors import DataError

SPLIT_FILES = {"train": "Train", "val": "Test"}


def nuswide_files(root: str | Path, split: str) -> tuple[Path, Path, Path]:
    """(concept list, image list, label folder) of ``split`` ("train" | "val")."""
    root = Path(root)
    part = SPLIT_FILES[split]
    concepts = root / "Concepts81.txt"
    if not concepts.exists() and (root / "ConceptsList" / "Concepts81.txt").exists():
        concepts = root / "ConceptsList" / "Concepts81.txt"  # as the ConceptsList archive unpacks
    return (
        concepts,
        root / "ImageList" / f"{part}Imagelist.txt",
        root / "Groundtruth" / "TrainTestLabels",
    )


def read_lines(path: Path) -> list[str]:
    """Non-empty, stripped lines of a text file; ``DataError`` if it is missing."""
    return [line for _, line in _numbered_lines(path)]


def _numbered_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, stripped line)`` of every non-empty line of a text file."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    lines = enumerate(text.splitlines(), 1)
    return [(number, line.strip()) for number, line in lines if line.strip()]


def read_label_file(path: Path, num_images: int) -> torch.Tensor:
    """``[num_images]`` bool from a ``Labels_<concept>_<Split>.txt`` file of 0/1 lines."""
    lines = read_lines(path)
    if len(lines) != num_images:
        raise DataError(f"{path}: {len(lines)} labels for {num_images} images in the image list")
    bad = next((n for n, line in enumerate(lines, 1) if line not in ("0", "1")), None)
    if bad is not None:
        raise DataError(f"{path}: line {bad} is {lines[bad - 1]!r}, expected 0 or 1")
    return torch.tensor([line == "1" for line in lines], dtype=torch.bool)


def load_nuswide(
    root: str | Path,
    split: str,
    transform: Transform | None = None,
    *,
    keep_empty: bool = True,
    name: str = "",
) -> MultiLabelDataset:
    """A :class:`MultiLabelDataset` of NUS-WIDE ``split`` ("train" | "val")."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data root does not exist")
    concept_file, list_file, label_dir = nuswide_files(root, split)
    concepts = read_lines(concept_file)
    if not concepts:
        raise DataError(f"{concept_file}: no concepts")
    listed = [(number, line.replace("\\", "/")) for number, line in _numbered_lines(list_file)]
    if not listed:
        raise DataError(f"{list_file}: empty split (no images)")
    relative_paths = [path for _, path in listed]
    part = SPLIT_FILES[split]
    labels = torch.stack(
        [
            read_label_file(label_dir / f"Labels_{concept}_{part}.txt", len(relative_paths))
            for concept in concepts
        ],
        dim=1,
    )  # [N, C]
    keep = torch.ones(len(relative_paths), dtype=torch.bool) if keep_empty else labels.any(1)
    if not keep.any():
        raise DataError(f"{list_file}: empty split (no image has a concept)")
    kept = keep.nonzero()[:, 0].tolist()
    image_paths = [
        resolve_inside(root / "Flickr", path, list_file, f"line {number}")
        for number, path in (listed[i] for i in kept)
    ]
    return MultiLabelDataset(
        image_paths,
        labels[keep],
        concepts,
        transform,
        [{"id": relative_paths[i]} for i in kept],
        name=name or f"nuswide/{split}",
    )
