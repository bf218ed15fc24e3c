"""Predictions of a trained checkpoint on your own image files.

    predictions = predict("runs/q2l-quick/checkpoint_best.pt", ["photos/"], top_k=3)
    predictions[0]  # Prediction(file='photos/a.jpg', labels=['dog', 'car'], scores={...}, ...)

Images are resized and normalised as the checkpoint's evaluation was (its ``data.image_size``,
``data.mean``, ``data.std``). A label is predicted when its probability reaches the threshold:
``threshold`` if given, else the checkpoint's calibrated per-class thresholds when it has them
(``mlcl evaluate --calibrate``), else 0.5; ``top_k`` predicts each image's K best labels instead.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mlcl.config import from_dict
from mlcl.data.dataset import load_rgb
from mlcl.data.transforms import build_transforms
from mlcl.engine.calibrate import stored_thresholds
from mlcl.engine.checkpoint import load_method
from mlcl.engine.process_group import resolve_device
from mlcl.errors import DataError, UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_THRESHOLD = 0.5


@dataclass
class Prediction:
    """One image's result: its predicted ``labels`` (best first), the probability of every
    class in ``scores`` (class order) and the explanation figure's path, if one was drawn."""

    file: str
    labels: list[str]
    scores: dict[str, float]
    explanation: str | None = None


class Predictions(list):
    """The :class:`Prediction` of every readable image, in input order; ``errors`` names each
    file that could not be read (one message per file)."""

    def __init__(self, predictions: Iterable[Prediction] = (), errors: Iterable[str] = ()):
        super().__init__(predictions)
        self.errors: list[str] = list(errors)


def find_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the image files under each directory (recursively, sorted). A
    named file is kept whatever its suffix, so that one that is not an image is reported."""
    found: list[Path] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            found += sorted(
                path
                for path in entry.rglob("*")
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            found.append(entry)
    return found


class ImageFiles(Dataset):
    """Decoded, transformed images; an unreadable file gives its error message instead."""

    def __init__(self, paths: list[Path], transform: Any) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, self.transform(load_rgb(self.paths[index])), None
        except DataError as err:
            return index, None, str(err)


def _keep_items(items: list[tuple[int, torch.Tensor | None, str | None]]) -> Any:
    """A batch of the readable images (indices, ``[B, 3, H, W]``) and the errors of the rest."""
    good = [(index, image) for index, image, _ in items if image is not None]
    errors = [error for _, image, error in items if image is None]
    images = torch.stack([image for _, image in good]) if good else None
    return [index for index, _ in good], images, errors


def predict(
    checkpoint: str | Path,
    images: Iterable[str | Path],
    *,
    threshold: float | None = None,
    top_k: int | None = None,
    ema: bool = False,
    device: str = "auto",
    batch_size: int = 32,
    explain_dir: str | Path | None = None,
    progress: bool = True,
    workers: int = 0,
) -> Predictions:
    """Labels of every image file (or image under a directory) in ``images``.

    An unreadable file is one line on stderr naming it, and is listed in the result's
    ``errors``; the other images are still predicted. ``explain_dir``: also draw, per image, the
    method's evidence for its labels there (:mod:`mlcl.explain`).
    """
    if threshold is not None and top_k is not None:
        raise UsageError("give a threshold or top_k, not both")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise UsageError(f"threshold must lie in (0, 1), got {threshold}")
    if top_k is not None and top_k < 1:
        raise UsageError(f"top_k must be at least 1, got {top_k}")
    paths = find_images(images)
    if not paths:
        raise DataError("no image files found (looked for " + ", ".join(IMAGE_SUFFIXES) + ")")
    torch_device = resolve_device(device)
    method, state = load_method(checkpoint, ema=ema, device=torch_device)
    class_names = list(state["class_names"])
    data = from_dict(state["config"]).data
    cut = _thresholds(state, threshold, ema, len(class_names))
    transform = build_transforms(False, data.image_size, data.mean, data.std)
    loader = DataLoader(
        ImageFiles(paths, transform),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_keep_items,
    )
    explainer = None
    if explain_dir is not None:
        from mlcl.explain import Explainer

        explainer = Explainer(method, class_names, explain_dir, data.mean, data.std)
    results: dict[int, Prediction] = {}
    errors: list[str] = []
    bar = tqdm(total=len(paths), desc="predict", unit="image", disable=not progress)
    for indices, batch, batch_errors in loader:
        for error in batch_errors:
            tqdm.write(error, file=sys.stderr)
        errors += batch_errors
        bar.update(len(indices) + len(batch_errors))
        if batch is None:
            continue
        batch = batch.to(torch_device)
        with torch.no_grad():
            probabilities = method.predict(batch).float().sigmoid().cpu()  # [B, C]
        chosen = _choose(probabilities, cut, top_k)  # [B, C] bool
        for row, index in enumerate(indices):
            order = probabilities[row].argsort(descending=True).tolist()
            labels = [class_names[c] for c in order if chosen[row, c]]
            scores = dict(zip(class_names, probabilities[row].tolist()))
            results[index] = Prediction(str(paths[index]), labels, scores)
        if explainer is not None:
            files = explainer(batch, chosen, probabilities, [paths[i] for i in indices])
            for index, file in zip(indices, files):
                results[index].explanation = str(file)
    bar.close()
    return Predictions((results[index] for index in sorted(results)), errors)


def _thresholds(
    state: dict[str, Any], threshold: float | None, ema: bool, num_classes: int
) -> torch.Tensor:
    """Per-class thresholds ``[C]``: the given one, the calibrated ones, or 0.5."""
    if threshold is not None:
        return torch.full((num_classes,), threshold)
    calibrated = stored_thresholds(state, ema)
    if calibrated is not None:
        return calibrated
    return torch.full((num_classes,), DEFAULT_THRESHOLD)


def _choose(probabilities: torch.Tensor, cut: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Which labels are predicted ``[B, C]``: the ``top_k`` best, or those at the threshold."""
    if top_k is None:
        return probabilities >= cut
    top = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1).indices
    return torch.zeros_like(probabilities, dtype=torch.bool).scatter_(1, top, True)


def write_predictions(predictions: Iterable[Prediction], path: str | Path) -> None:
    """Predictions as JSON lines (``.jsonl``: one object per image) or a CSV table (``.csv``:
    file, labels joined by ``;``, then one probability column per class)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    predictions = list(predictions)
    with path.open("w", newline="") as file:
        if path.suffix == ".csv":
            class_names = list(predictions[0].scores) if predictions else []
            writer = csv.writer(file)
            writer.writerow(["file", "labels", *class_names])
            for item in predictions:
                scores = [f"{item.scores[name]:.6f}" for name in class_names]
                writer.writerow([item.file, ";".join(item.labels), *scores])
        else:
            for item in predictions:
                file.write(json.dumps(dataclasses.asdict(item)) + "\n")
