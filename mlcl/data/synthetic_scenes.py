"""The design of the built-in data set (:mod:`mlcl.data.synthetic`): its colours, categories,
scenes, how often each scene draws each category and which pairs it favours, the sizes of objects.

Fixed by the code, not by the seed: a seed draws a different sample of the same distribution.
Changing a value here changes the images: bump ``GENERATOR_VERSION`` in :mod:`mlcl.data.synthetic`.
This module only holds tables (and the arrays derived from them); the renderer draws from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

COLOURS = {
    "red": (205, 40, 40),
    "orange": (240, 130, 30),
    "yellow": (235, 210, 45),
    "green": (45, 150, 55),
    "teal": (30, 165, 150),
    "blue": (40, 80, 210),
    "purple": (135, 60, 180),
    "pink": (240, 125, 175),
    "white": (235, 235, 235),
    "black": (30, 30, 35),
    "brown": (125, 75, 35),
}


@dataclass(frozen=True)
class Category:
    id: int  # COCO-like: non-contiguous
    shape: str
    colour: str
    texture: str = "solid"  # solid | striped | dotted | checkered

    @property
    def name(self) -> str:
        texture = "" if self.texture == "solid" else f"{self.texture} "
        return f"{texture}{self.colour} {self.shape}"


CATEGORIES = (
    Category(1, "circle", "red"),
    Category(2, "circle", "orange"),
    Category(3, "circle", "blue", "striped"),
    Category(5, "square", "blue"),
    Category(6, "square", "green"),
    Category(7, "square", "red", "checkered"),
    Category(8, "triangle", "yellow"),
    Category(9, "triangle", "orange"),
    Category(11, "triangle", "purple", "striped"),
    Category(13, "star", "yellow"),
    Category(14, "star", "white"),
    Category(15, "star", "red", "dotted"),
    Category(17, "cross", "red"),
    Category(18, "cross", "pink"),
    Category(19, "cross", "green", "striped"),
    Category(21, "ring", "purple"),
    Category(22, "ring", "blue"),
    Category(24, "ring", "orange", "dotted"),
    Category(25, "diamond", "teal"),
    Category(27, "diamond", "green"),
    Category(28, "diamond", "yellow", "dotted"),
    Category(31, "hexagon", "black"),
    Category(32, "hexagon", "brown"),
    Category(34, "hexagon", "white", "checkered"),
)
CATEGORY_INDEX = {category.name: index for index, category in enumerate(CATEGORIES)}

# Global popularity: Zipf-like weights over a fixed ranking of the categories (the long tail).
_POPULARITY_ORDER = (
    "red circle", "blue square", "yellow star", "white star", "black hexagon", "green square",
    "orange circle", "yellow triangle", "red cross", "blue ring", "teal diamond", "purple ring",
    "orange triangle", "pink cross", "brown hexagon", "green diamond", "checkered red square",
    "striped blue circle", "dotted red star", "striped green cross", "striped purple triangle",
    "dotted orange ring", "dotted yellow diamond", "checkered white hexagon",
)  # fmt: skip
POPULARITY = np.array(
    [1.0 / (1 + _POPULARITY_ORDER.index(c.name)) ** 0.7 for c in CATEGORIES]
)  # [C]


@dataclass(frozen=True)
class Scene:
    name: str
    frequency: float  # share of the images
    home: tuple[str, ...]  # categories this scene favours
    pairs: tuple[tuple[str, str, float], ...]  # (a, b, p): an a brings a b with probability p
    crowding: float  # objects per image: 1 + Binomial(5, crowding)


SCENES = (
    Scene("meadow", 0.22, ("red circle", "yellow triangle", "purple ring", "white star",
                           "green diamond", "striped green cross"),
          (("red circle", "yellow triangle", 0.6), ("purple ring", "white star", 0.5)), 0.25),
    Scene("beach", 0.20, ("orange circle", "blue square", "teal diamond", "pink cross",
                          "yellow star", "dotted yellow diamond"),
          (("blue square", "orange circle", 0.6), ("teal diamond", "pink cross", 0.5)), 0.3),
    Scene("city", 0.18, ("black hexagon", "blue ring", "red cross", "checkered red square",
                         "red circle", "blue square"),
          (("black hexagon", "red cross", 0.6), ("blue ring", "checkered red square", 0.5),
           ("red circle", "blue ring", 0.4)), 0.4),
    Scene("night", 0.15, ("white star", "yellow star", "purple ring", "checkered white hexagon",
                          "blue ring", "dotted red star"),
          (("white star", "yellow star", 0.5), ("purple ring", "blue ring", 0.4)), 0.2),
    Scene("desert", 0.13, ("brown hexagon", "orange triangle", "green diamond", "yellow star",
                           "dotted orange ring", "red cross"),
          (("brown hexagon", "orange triangle", 0.6), ("yellow star", "green diamond", 0.4)), 0.25),
    Scene("indoor", 0.12, ("striped blue circle", "green square", "striped purple triangle",
                           "white star", "red circle", "dotted orange ring"),
          (("green square", "striped blue circle", 0.5), ("red circle", "white star", 0.5)), 0.35),
)  # fmt: skip
_HOME_WEIGHT, _AWAY_WEIGHT = 1.0, 0.08
MIN_SIZE, MAX_SIZE = 0.07, 0.6  # object diameter as a fraction of the image side
MIN_VISIBLE = 0.3  # an object less visible than this is not annotated
MAX_OBJECTS = 6


def _scene_category_weights() -> np.ndarray:
    """``[K, C]`` probability of each category being drawn in each scene."""
    weights = np.full((len(SCENES), len(CATEGORIES)), _AWAY_WEIGHT)
    for k, scene in enumerate(SCENES):
        for name in scene.home:
            weights[k, CATEGORY_INDEX[name]] = _HOME_WEIGHT
    weights *= POPULARITY[None, :]
    return weights / weights.sum(1, keepdims=True)


SCENE_CATEGORY_WEIGHTS = _scene_category_weights()
SCENE_FREQUENCIES = np.array([scene.frequency for scene in SCENES]) / sum(
    scene.frequency for scene in SCENES
)

# How far each shape may turn: a square turned 45° would be a diamond, a cross an X.
MAX_TURN = {
    "circle": math.pi,
    "ring": math.pi,
    "square": 0.35,
    "triangle": 0.5,
    "star": math.pi,
    "cross": 0.35,
    "diamond": 0.35,
    "hexagon": math.pi,
}
