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
_HOME_WEIGHT = 1.0
MIN_SIZE, MAX_SIZE = 0.07, 0.6  # object diameter as a fraction of the image side
MIN_VISIBLE = 0.3  # an object less visible than this is not annotated
MAX_OBJECTS = 6


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


# --------------------------------------------------------------------------- settings
#
# A setting turns the properties above up or down without changing the scenes, the categories'
# shapes, the long tail or the object counts. ``classic`` is the book's first data set, byte for
# byte. ``mechanisms`` gives each method of the book something to find (chapter 01 lists which
# property serves which method); the method-effects benchmark trains on it.


@dataclass(frozen=True)
class Setting:
    name: str
    min_size: float = MIN_SIZE  # object diameter as a fraction of the image side
    max_size: float = MAX_SIZE
    distractors: tuple[int, int] = (0, 3)  # unlabelled shapes per image: integers in [low, high)
    away_weight: float = 0.08  # how often a scene draws a category that is not at home there
    pair_boost: float = 1.0  # multiplies every pair's probability (capped at 0.95)
    # (scene, a, b, p) pairs added to the scenes' own: the same a brings another b elsewhere
    extra_pairs: tuple[tuple[str, str, str, float], ...] = ()
    # category name -> new colour name: look-alike twins of another category, at home elsewhere
    recolour: tuple[tuple[str, str], ...] = ()
    colour_jitter: float = 10.0  # per-channel standard deviation of an object's colour
    stretch: tuple[float, float] = (0.85, 1.18)  # anisotropic scale of a shape
    shading: float = 0.15  # strength of the light gradient across an object


# The look-alike colours: each within about 30 of the colour of the category it imitates.
TWIN_COLOURS = {
    "scarlet": (222, 62, 40),  # beside red (205, 40, 40)
    "amber": (240, 188, 42),  # beside yellow (235, 210, 45)
    "crimson": (196, 38, 66),  # beside red
    "navy": (42, 70, 182),  # beside blue (40, 80, 210)
}

SETTINGS = {
    "classic": Setting("classic"),
    "mechanisms": Setting(
        "mechanisms",
        # Small objects among clutter: 5-40 % of the side (still 8x), three to six distractors.
        min_size=0.05,
        max_size=0.4,
        distractors=(3, 7),
        # Scene-dependent co-occurrence, stronger and different from scene to scene.
        away_weight=0.02,
        pair_boost=1.4,
        extra_pairs=(
            ("city", "blue square", "checkered red square", 0.6),
            ("beach", "yellow star", "teal diamond", 0.6),
            ("indoor", "white star", "striped blue circle", 0.6),
            ("meadow", "red circle", "green diamond", 0.5),
            ("night", "yellow star", "checkered white hexagon", 0.5),
        ),
        # Twins told apart by context: each imitates a category that lives in other scenes
        # (orange circle: beach, red circle: meadow, city, indoor; and so on).
        recolour=(
            ("orange circle", "scarlet"),
            ("orange triangle", "amber"),
            ("pink cross", "crimson"),
            ("green square", "navy"),
        ),
        # Appearance within a class: colour, shape, light.
        colour_jitter=18.0,
        stretch=(0.7, 1.4),
        shading=0.35,
    ),
}


def setting_categories(setting: Setting) -> tuple[Category, ...]:
    """The categories as ``setting`` draws them: its twins take their new colour (and name)."""
    recolour = dict(setting.recolour)
    return tuple(
        Category(c.id, c.shape, recolour[c.name], c.texture) if c.name in recolour else c
        for c in CATEGORIES
    )


def colour_of(name: str) -> tuple[int, int, int]:
    return COLOURS.get(name) or TWIN_COLOURS[name]


def scene_category_weights(setting: Setting) -> np.ndarray:
    """``[K, C]`` probability of each category being drawn in each scene, under ``setting``."""
    weights = np.full((len(SCENES), len(CATEGORIES)), setting.away_weight)
    for k, scene in enumerate(SCENES):
        for name in scene.home:
            weights[k, CATEGORY_INDEX[name]] = _HOME_WEIGHT
    weights *= POPULARITY[None, :]
    return weights / weights.sum(1, keepdims=True)


def scene_pairs(setting: Setting, scene: int) -> tuple[tuple[int, int, float], ...]:
    """``(a, b, p)`` category-index pairs of one scene under ``setting``."""
    name = SCENES[scene].name
    pairs = list(SCENES[scene].pairs) + [p[1:] for p in setting.extra_pairs if p[0] == name]
    return tuple(
        (CATEGORY_INDEX[a], CATEGORY_INDEX[b], min(0.95, p * setting.pair_boost))
        for a, b, p in pairs
    )


SCENE_CATEGORY_WEIGHTS = scene_category_weights(SETTINGS["classic"])  # [K, C]
