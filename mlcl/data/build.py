"""One entry for every data set: ``build_dataset(name, root, split, ...)``."""

from __future__ import annotations

from pathlib import Path

from mlcl.data.coco import coco_files, load_coco
from mlcl.data.csv_folder import load_csv_folder
from mlcl.data.dataset import MultiLabelDataset, Transform
from mlcl.data.nuswide import load_nuswide
from mlcl.data.single_positive import make_single_positive
from mlcl.data.synthetic import ensure_synthetic
from mlcl.data.voc import load_voc
from mlcl.errors import DataError

DATASETS = ("synthetic", "coco2014", "coco2017", "voc2007", "voc2012", "nuswide", "csv")
SPLITS = ("train", "val")
LABEL_MODES = ("full", "single_positive")


def build_dataset(
    name: str,
    root: str | Path,
    split: str,
    transform: Transform | None = None,
    *,
    keep_empty: bool = True,
    use_difficult: bool = False,
    include_crowd: bool = True,
    labels: str = "full",
    single_positive_seed: int = 0,
    limit: int = 0,
) -> MultiLabelDataset:
    """The ``split`` ("train" | "val") of data set ``name`` stored under ``root``.

    Args:
        name: one of ``DATASETS``. ``synthetic`` with ``root=""`` is the default built-in set
            (generated on first use, see ``ensure_synthetic``); other sizes: pass the root that
            ``ensure_synthetic(...)`` returns.
        keep_empty: COCO / NUS-WIDE: keep images without any label (all-negative).
        use_difficult: VOC: count objects marked difficult as positives.
        include_crowd: COCO: count crowd annotations as positives.
        labels: ``"full"``, or ``"single_positive"``: one observed positive per image, drawn with
            ``single_positive_seed`` (``full_labels`` keeps the truth for evaluation).
        limit: keep only the first ``limit`` images (0: all), before the single-positive draw.
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r} (known: {', '.join(DATASETS)})")
    if split not in SPLITS:
        raise DataError(f"{name}: unknown split {split!r} (known: {', '.join(SPLITS)})")
    if labels not in LABEL_MODES:
        raise DataError(f"unknown label mode {labels!r} (known: {', '.join(LABEL_MODES)})")
    if name == "synthetic" and not root:
        root = ensure_synthetic()
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data root does not exist")
    title = f"{name}/{split}"

    if name in ("synthetic", "coco2014", "coco2017"):
        annotation_file, image_dir = coco_files(name, root, split)
        dataset = load_coco(
            annotation_file,
            image_dir,
            transform,
            keep_empty=keep_empty,
            include_crowd=include_crowd,
            name=title,
        )
    elif name in ("voc2007", "voc2012"):
        dataset = load_voc(
            root, name[-4:], split, transform, use_difficult=use_difficult, name=title
        )
    elif name == "nuswide":
        dataset = load_nuswide(root, split, transform, keep_empty=keep_empty, name=title)
    else:
        dataset = load_csv_folder(root, split, transform, name=title)

    dataset = dataset.subset(limit)
    if labels == "single_positive":
        make_single_positive(dataset, single_positive_seed)
    return dataset
