"""The built-in data set: procedurally drawn scenes of coloured shapes, in COCO format.

No data set ships with PyTorch and no machine is assumed to reach the internet, so mlcl draws its
own. Each image is one of six *scenes* (meadow, beach, city, night, desert, indoor), recognisable
by its background (palette, gradient, texture), holding 1–6 *objects* drawn from 24 categories.
A category is a shape with a colour or texture: the same shape in two colours is two classes
(``red circle`` vs ``orange circle``), so classes are learnable but confusable. What makes it a
multi-label problem worth the book's methods:

- **label co-occurrence that depends on the scene**: each scene favours its own categories and its
  own pairs (a ``blue square`` brings an ``orange circle`` on the beach; in the city a ``blue
  ring`` brings a ``checkered red square``), so scene-aware methods (SALGL) have scenes to find;
- **objects of many sizes**: diameters from 7 % to 60 % of the image side (log-uniform), so small
  objects are hard;
- **partial occlusion**: objects overlap, bars cross them, the image border cuts them; an object
  less than 30 % visible is not annotated (its label would be noise);
- **a long-tailed label distribution**: the most frequent category occurs in more than 10× as many
  images as the rarest;
- **noise**: colour jitter, shading, unlabelled distractor shapes, pixel noise, JPEG compression.

The files follow the COCO layout that :mod:`mlcl.data.coco` reads::

    out/images/{train,val}/<split>_<index>.jpg
    out/annotations/instances_{train,val}.json   (images carry an extra key "scene")
    out/mlcl_synthetic.json                      the generation parameters

Generation is deterministic: every image draws from its own random generator seeded by
``(seed, split, index)``, so the files are byte-identical for a given seed whatever the number of
worker processes.

This module draws and writes; the tables it draws from (colours, categories, scenes, their
favoured categories and pairs, object sizes) are in :mod:`mlcl.data.synthetic_scenes`.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

# The design tables, importable from here too: notebooks and tests name them as this module's.
from mlcl.data.synthetic_scenes import (
    CATEGORIES,
    MAX_OBJECTS,
    MAX_TURN,
    MIN_VISIBLE,
    SCENE_FREQUENCIES,
    SCENES,
    SETTINGS,
    Category,
    Setting,
    colour_of,
    scene_category_weights,
    scene_pairs,
    setting_categories,
)
from mlcl.data.synthetic_scenes import CATEGORY_INDEX as CATEGORY_INDEX
from mlcl.data.synthetic_scenes import COLOURS as COLOURS
from mlcl.data.synthetic_scenes import MAX_SIZE as MAX_SIZE
from mlcl.data.synthetic_scenes import MIN_SIZE as MIN_SIZE
from mlcl.data.synthetic_scenes import POPULARITY as POPULARITY
from mlcl.data.synthetic_scenes import SCENE_CATEGORY_WEIGHTS as SCENE_CATEGORY_WEIGHTS
from mlcl.data.synthetic_scenes import Scene as Scene
from mlcl.errors import DataError

GENERATOR_VERSION = 2  # bump when the drawing changes: cached sets of other versions are not reused
MARKER_FILE = "mlcl_synthetic.json"
SPLITS = ("train", "val")

# --------------------------------------------------------------------------- public API


def default_root() -> Path:
    """Where generated data sets live: ``$MLCL_DATA_DIR`` or ``~/.cache/mlcl``."""
    return Path(os.environ.get("MLCL_DATA_DIR") or Path.home() / ".cache" / "mlcl")


def generate(
    out: str | Path,
    num_train: int = 2000,
    num_val: int = 500,
    image_size: int = 128,
    seed: int = 0,
    workers: int = 2,
    setting: str = "classic",
) -> Path:
    """Write the built-in data set to ``out`` (which must not exist or be empty) and return it.

    Written into a temporary sibling folder first and renamed at the end, so an interrupted run
    never leaves a half data set behind. ``workers`` processes draw the images; the result does
    not depend on their number. ``setting`` names one of ``SETTINGS`` (``classic``: the book's
    first data set; ``mechanisms``: each method's premise turned up).
    """
    out = Path(out)
    if num_train < 1 or num_val < 1 or image_size < 32:
        raise ValueError("need num_train >= 1, num_val >= 1 and image_size >= 32")
    if setting not in SETTINGS:
        raise ValueError(f"unknown synthetic setting {setting!r} (known: {', '.join(SETTINGS)})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: already exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        parameters = {
            "num_train": num_train,
            "num_val": num_val,
            "image_size": image_size,
            "seed": seed,
            "setting": setting,
        }
        for split, count in zip(SPLITS, (num_train, num_val)):
            _write_split(partial, split, count, image_size, seed, workers, parameters)
        marker = {"generator_version": GENERATOR_VERSION, **parameters}
        (partial / MARKER_FILE).write_text(json.dumps(marker, indent=1) + "\n")
        try:
            os.rename(partial, out)  # atomic; fails if another process finished first
        except OSError:
            if not is_complete(out):
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def ensure_synthetic(
    root: str | Path = "",
    num_train: int = 2000,
    num_val: int = 500,
    image_size: int = 128,
    seed: int = 0,
    setting: str = "classic",
) -> Path:
    """The root of the built-in data set, generated with these parameters first if absent.

    ``root=""`` means a folder of ``default_root()`` named by the generator version and the
    parameters (``synthetic-v2-2000-500-128px-seed0``; another setting than ``classic`` adds
    its name: ``synthetic-v2-mechanisms-2000-500-64px-seed0``). An explicit ``root`` that already holds
    a data set (both annotation files) is used as it is, whatever parameters made it (``mlcl
    data synth`` writes one).
    """
    if root:
        path = Path(root)
    else:
        named = "" if setting == "classic" else f"{setting}-"
        name = (
            f"synthetic-v{GENERATOR_VERSION}-{named}{num_train}-{num_val}-{image_size}px-seed{seed}"
        )
        path = default_root() / name
    if not is_complete(path):
        try:
            generate(path, num_train, num_val, image_size, seed, setting=setting)
        except DataError:
            if not is_complete(path):  # unless another process has just written it
                raise
    return path


def is_complete(root: str | Path) -> bool:
    """Whether ``root`` holds both annotation files of a COCO-format built-in data set."""
    root = Path(root)
    return all((root / "annotations" / f"instances_{split}.json").is_file() for split in SPLITS)


# --------------------------------------------------------------------------- writing a split


def _write_split(
    root: Path,
    split: str,
    count: int,
    image_size: int,
    seed: int,
    workers: int,
    parameters: dict[str, Any],
) -> None:
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    split_code = SPLITS.index(split)
    setting = parameters["setting"]
    tasks = [
        (seed, split_code, index, image_size, str(image_dir), setting) for index in range(count)
    ]
    if workers > 1 and count >= 64:
        with multiprocessing.get_context().Pool(workers) as pool:
            results = list(pool.imap(_draw_and_save, tasks, chunksize=32))
    else:
        results = [_draw_and_save(task) for task in tasks]

    # Image ids are unique across splits, as in COCO.
    first_id = 1 if split == "train" else parameters["num_train"] + 1
    images, annotations = [], []
    for index, (file_name, scene, objects) in enumerate(results):
        image_id = first_id + index
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": image_size,
                "height": image_size,
                "scene": scene,
            }
        )
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **obj})
    data = {
        "info": {
            "description": "mlcl built-in synthetic scenes",
            "split": split,
            "generator_version": GENERATOR_VERSION,
            **parameters,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": c.id, "name": c.name, "supercategory": c.shape}
            for c in setting_categories(SETTINGS[setting])
        ],
        "scenes": [{"id": k, "name": scene.name} for k, scene in enumerate(SCENES)],
    }
    with open(root / "annotations" / f"instances_{split}.json", "w") as file:
        json.dump(data, file, separators=(",", ":"))


def _draw_and_save(
    task: tuple[int, int, int, int, str, str],
) -> tuple[str, int, list[dict[str, Any]]]:
    seed, split_code, index, image_size, image_dir, setting = task
    rng = np.random.default_rng([seed, split_code, index])
    pixels, scene, objects = draw_image(rng, image_size, SETTINGS[setting])
    file_name = f"{SPLITS[split_code]}_{index:06d}.jpg"
    Image.fromarray(pixels).save(Path(image_dir) / file_name, quality=90)
    return file_name, scene, objects


# --------------------------------------------------------------------------- drawing


def draw_image(
    rng: np.random.Generator, size: int, setting: Setting = SETTINGS["classic"]
) -> tuple[np.ndarray, int, list[dict]]:
    """One image of ``setting``: ``(pixels [size, size, 3] uint8, scene id, annotations)``.

    Annotations are COCO-style dicts (``category_id``, ``bbox`` of the visible pixels, ``area`` =
    visible pixels, ``iscrowd``) plus ``occluded``, the hidden fraction of the object.
    """
    scene = int(rng.choice(len(SCENES), p=SCENE_FREQUENCIES))
    canvas = _background(rng, scene, size)  # [S, S, 3] float
    owner = np.full((size, size), -1, dtype=np.int16)  # which object each pixel shows

    for _ in range(rng.integers(*setting.distractors)):  # unlabelled, behind the objects
        _paint_distractor(rng, canvas, size)

    categories = _sample_categories(rng, scene, setting)
    looks = setting_categories(setting)
    masks = []
    for number, category in enumerate(categories):
        mask = _paint_object(rng, canvas, looks[category], size, setting)
        owner[mask] = number
        masks.append(mask)
    if rng.random() < 0.25:  # a bar across the picture occludes what it crosses
        bar = _paint_distractor(rng, canvas, size, bar=True)
        owner[bar] = -1

    annotations = []
    visible_fractions = []
    for number, (category, mask) in enumerate(zip(categories, masks)):
        visible = owner == number
        full_area, visible_area = int(mask.sum()), int(visible.sum())
        visible_fractions.append(visible_area / max(full_area, 1))
        if visible_area == 0 or visible_fractions[-1] < MIN_VISIBLE:
            continue
        annotations.append(_annotation(category, visible, visible_fractions[-1]))
    if not annotations:  # every image keeps at least one object: the most visible one
        number = int(np.argmax(visible_fractions))
        visible = owner == number
        if visible.any():
            annotations.append(_annotation(categories[number], visible, visible_fractions[number]))

    canvas *= rng.uniform(0.85, 1.15)  # exposure
    canvas += rng.normal(0.0, rng.uniform(3.0, 10.0), canvas.shape)  # sensor noise
    return np.clip(canvas, 0, 255).astype(np.uint8), scene, annotations


def _annotation(category: int, visible: np.ndarray, visible_fraction: float) -> dict[str, Any]:
    rows, columns = np.nonzero(visible)
    x, y = int(columns.min()), int(rows.min())
    width, height = int(columns.max()) - x + 1, int(rows.max()) - y + 1
    return {
        "category_id": CATEGORIES[category].id,
        "bbox": [x, y, width, height],
        "area": int(visible.sum()),
        "iscrowd": 0,
        "occluded": round(1.0 - visible_fraction, 3),
    }


def _sample_categories(rng: np.random.Generator, scene: int, setting: Setting) -> list[int]:
    """1–6 category indices: scene-dependent draws, then each draw's scene partners."""
    count = 1 + int(rng.binomial(MAX_OBJECTS - 1, SCENES[scene].crowding))
    weights = _scene_tables(setting.name)[0][scene]
    drawn = rng.choice(len(CATEGORIES), size=count, p=weights).tolist()
    categories = []
    for category in drawn:
        if len(categories) == MAX_OBJECTS:
            break
        categories.append(category)
        for a, b, probability in _scene_tables(setting.name)[1][scene]:
            if category == a and len(categories) < MAX_OBJECTS and rng.random() < probability:
                categories.append(b)
    order = rng.permutation(len(categories))  # partners are not always drawn on top
    return [categories[i] for i in order]


@cache
def _scene_tables(
    setting: str,
) -> tuple[np.ndarray, tuple[tuple[tuple[int, int, float], ...], ...]]:
    """A setting's ``[K, C]`` draw weights and each scene's ``(a, b, p)`` pairs, computed once."""
    spec = SETTINGS[setting]
    return scene_category_weights(spec), tuple(scene_pairs(spec, k) for k in range(len(SCENES)))


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``(y, x)``, each ``[S, S]`` float32."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return y, x


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: float) -> np.ndarray:
    return np.asarray(colour, dtype=np.float32) + rng.normal(0.0, amount, 3).astype(np.float32)


def _gradient(rng: np.random.Generator, size: int, start, end, angle: float) -> np.ndarray:
    """``[S, S, 3]`` linear blend from colour ``start`` to ``end`` along direction ``angle``."""
    y, x = _grid(size)
    t = x * math.cos(angle) + y * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return _jitter(rng, start, 12) * (1 - t[..., None]) + _jitter(rng, end, 12) * t[..., None]


def _background(rng: np.random.Generator, scene: int, size: int) -> np.ndarray:
    """The scene's look: each has its own palette, gradient and texture."""
    y, x = _grid(size)
    name = SCENES[scene].name
    tilt = rng.uniform(-0.3, 0.3)
    if name == "meadow":  # green, lighter at the top, vertical grass streaks
        canvas = _gradient(rng, size, (120, 175, 80), (40, 105, 40), math.pi / 2 + tilt)
        streaks = np.repeat(rng.normal(0, 14, size)[None, :], size, 0).astype(np.float32)
        canvas[..., 1] += streaks
        canvas[..., 0] += 0.5 * streaks
    elif name == "beach":  # sky above a horizon, sand below
        horizon = int(size * rng.uniform(0.35, 0.6))
        canvas = _gradient(rng, size, (205, 185, 130), (235, 210, 150), math.pi / 2 + tilt)
        sky = _gradient(rng, size, (110, 170, 235), (185, 220, 245), math.pi / 2)
        canvas[:horizon] = sky[:horizon]
        canvas[horizon:] += rng.normal(0, 10, (size - horizon, size, 1)).astype(np.float32)
    elif name == "city":  # grey facade with a grid of windows, a few lit
        canvas = _gradient(rng, size, (150, 150, 155), (95, 100, 110), math.pi / 2 + tilt)
        spacing = max(4, int(size * rng.uniform(0.08, 0.14)))
        cells_y, cells_x = (y // spacing).astype(int), (x // spacing).astype(int)
        lit = rng.random((size // spacing + 2, size // spacing + 2)) < 0.25
        window = ((x % spacing) < 0.55 * spacing) & ((y % spacing) < 0.65 * spacing)
        canvas[window] = (65, 70, 85)
        canvas[window & lit[cells_y, cells_x]] = (215, 200, 120)
    elif name == "night":  # dark blue sky with stars
        canvas = _gradient(rng, size, (10, 15, 45), (45, 45, 95), math.pi / 2 + tilt)
        stars = rng.random((size, size)) < 0.004
        canvas[stars] = (235, 235, 205)
    elif name == "desert":  # warm gradient with diagonal dunes
        canvas = _gradient(rng, size, (240, 160, 85), (200, 95, 90), math.pi / 2 + tilt)
        period = size * rng.uniform(0.15, 0.3)
        dunes = np.sin((0.6 * x + y) * 2 * math.pi / period + rng.uniform(0, 2 * math.pi))
        canvas *= (1 + 0.08 * dunes)[..., None]
    else:  # indoor: a tiled floor with dark grout
        canvas = np.empty((size, size, 3), dtype=np.float32)
        tile = max(4, int(size * rng.uniform(0.1, 0.2)))
        checker = ((y // tile + x // tile) % 2).astype(bool)
        canvas[:] = _jitter(rng, (205, 190, 160), 10)
        canvas[checker] = _jitter(rng, (165, 145, 115), 10)
        canvas[((x % tile) < 1) | ((y % tile) < 1)] = (90, 80, 70)
    return canvas.astype(np.float32)


def _shape_mask(
    shape: str, size: int, center, diameter: float, angle: float, stretch: float
) -> np.ndarray:
    """``[S, S]`` bool mask of one shape."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    radius = diameter / 2
    if shape in ("circle", "ring"):
        points = _polygon(48, 1.0)
    elif shape == "square":
        points = [(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)]
    elif shape == "triangle":
        points = _polygon(3, 1.0, start=-math.pi / 2)
    elif shape == "star":
        outer = _polygon(5, 1.0, start=-math.pi / 2)
        inner = _polygon(5, 0.42, start=-math.pi / 2 + math.pi / 5)
        points = [p for pair in zip(outer, inner) for p in pair]
    elif shape == "cross":
        a, b = 0.3, 0.95
        points = [
            (-a, -b),
            (a, -b),
            (a, -a),
            (b, -a),
            (b, a),
            (a, a),
            (a, b),
            (-a, b),
            (-a, a),
            (-b, a),
            (-b, -a),
            (-a, -a),
        ]
    elif shape == "diamond":
        points = [(0, -1.0), (0.6, 0), (0, 1.0), (-0.6, 0)]
    elif shape == "hexagon":
        points = _polygon(6, 1.0)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    draw.polygon(_place(points, center, radius, angle, stretch), fill=255)
    if shape == "ring":
        draw.polygon(_place(_polygon(48, 0.55), center, radius, angle, stretch), fill=0)
    return np.asarray(canvas) > 127


def _polygon(corners: int, radius: float, start: float = 0.0) -> list[tuple[float, float]]:
    return [
        (
            radius * math.cos(start + 2 * math.pi * i / corners),
            radius * math.sin(start + 2 * math.pi * i / corners),
        )
        for i in range(corners)
    ]


def _place(
    points, center, radius: float, angle: float, stretch: float
) -> list[tuple[float, float]]:
    """Scale (anisotropically by ``stretch``), rotate and translate unit-size points."""
    cos, sin = math.cos(angle), math.sin(angle)
    placed = []
    for px, py in points:
        px, py = px * radius * stretch, py * radius / stretch
        placed.append((center[0] + px * cos - py * sin, center[1] + px * sin + py * cos))
    return placed


def _paint_object(
    rng: np.random.Generator, canvas: np.ndarray, category: Category, size: int, setting: Setting
) -> np.ndarray:
    """Paint one object onto ``canvas`` (in place); return its ``[S, S]`` mask."""
    diameter = size * math.exp(rng.uniform(math.log(setting.min_size), math.log(setting.max_size)))
    margin = diameter / 4  # the centre may sit near the border: the border cuts the shape
    center = rng.uniform(margin, size - margin, 2)
    angle = rng.uniform(-MAX_TURN[category.shape], MAX_TURN[category.shape])
    stretch = rng.uniform(*setting.stretch)
    mask = _shape_mask(category.shape, size, center, diameter, angle, stretch)
    colour = _jitter(rng, colour_of(category.colour), setting.colour_jitter)
    fill = np.broadcast_to(colour, canvas.shape).copy()
    if category.texture != "solid":
        fill[_texture(rng, category.texture, size, diameter)] = _second_colour(category.colour)
    # Shading: a soft light from one side.
    y, x = _grid(size)
    light = rng.uniform(-1, 1, 2)
    shade = (
        1 + setting.shading * (light[0] * (x - center[0]) + light[1] * (y - center[1])) / diameter
    )
    fill *= shade[..., None]
    canvas[mask] = fill[mask]
    return mask


def _second_colour(colour: str) -> np.ndarray:
    """The pattern colour of a textured object: white on dark colours, black on light ones."""
    light = sum(colour_of(colour)) / 3 > 150
    return np.array((25, 25, 25) if light else (240, 240, 240), dtype=np.float32)


def _texture(rng: np.random.Generator, texture: str, size: int, diameter: float) -> np.ndarray:
    """``[S, S]`` bool pattern with a period that scales with the object."""
    y, x = _grid(size)
    period = max(3.0, diameter / rng.uniform(3.0, 4.5))
    if texture == "striped":
        angle = rng.uniform(0, math.pi)
        along = x * math.cos(angle) + y * math.sin(angle)
        return (along % period) < period / 2
    if texture == "checkered":
        return ((x // (period / 1.4) + y // (period / 1.4)) % 2).astype(bool)
    if texture == "dotted":
        dx, dy = (x % period) - period / 2, (y % period) - period / 2
        return dx**2 + dy**2 < (0.3 * period) ** 2
    raise ValueError(f"unknown texture {texture!r}")


def _paint_distractor(
    rng: np.random.Generator, canvas: np.ndarray, size: int, bar: bool = False
) -> np.ndarray:
    """An unlabelled shape: a long ellipse or a thick line (``bar``); returns its mask."""
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    if bar or rng.random() < 0.5:
        start, end = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
        width = max(2, int(size * rng.uniform(0.02, 0.06)))
        draw.line([tuple(start), tuple(end)], fill=255, width=width)
    else:
        center = rng.uniform(0, size, 2)
        length, thickness = size * rng.uniform(0.1, 0.35), size * rng.uniform(0.025, 0.08)
        # An ellipse: the unit circle stretched to half-axes length × thickness, then turned.
        radius, stretch = math.sqrt(length * thickness), math.sqrt(length / thickness)
        points = _place(_polygon(32, 1.0), center, radius, rng.uniform(0, math.pi), stretch)
        draw.polygon(points, fill=255)
    mask = np.asarray(layer) > 127
    grey = rng.uniform(40, 220)
    canvas[mask] = np.array([grey, grey, grey], dtype=np.float32) + rng.normal(0, 25, 3)
    return mask
