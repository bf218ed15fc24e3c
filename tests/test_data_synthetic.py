"""The built-in data set: deterministic, valid COCO, and what the book needs of it (scenes with
their own look and co-occurrence, 1–6 objects, small and large objects, occlusion, a long tail)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

import mlcl.data.synthetic as synthetic
from mlcl.data import build_dataset, conditional_probability, ensure_synthetic, generate
from mlcl.errors import DataError


def files_of(root):
    return {
        path.relative_to(root): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_same_seed_gives_byte_identical_files_whatever_the_workers(tmp_path):
    one = generate(tmp_path / "one", num_train=70, num_val=6, image_size=40, seed=3, workers=1)
    two = generate(tmp_path / "two", num_train=70, num_val=6, image_size=40, seed=3, workers=2)
    assert files_of(one) == files_of(two)
    other = generate(tmp_path / "other", num_train=70, num_val=6, image_size=40, seed=4, workers=1)
    other_files = files_of(other)
    assert other_files.keys() == files_of(one).keys()
    assert other_files != files_of(one)


def test_valid_coco_that_pycocotools_reads(synthetic_root):
    for split, count in (("train", 64), ("val", 32)):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(synthetic_root / "annotations" / f"instances_{split}.json"))
        assert len(coco.getImgIds()) == count
        for annotation in coco.loadAnns(coco.getAnnIds()):
            x, y, width, height = annotation["bbox"]
            assert min(x, y) >= 0 and x + width <= 64 and y + height <= 64
            assert 0 < annotation["area"] <= width * height
        for image in coco.loadImgs(coco.getImgIds()):
            assert (synthetic_root / "images" / split / image["file_name"]).is_file()


def test_categories_have_coco_like_ids_and_readable_names(synthetic_root):
    data = json.loads((synthetic_root / "annotations" / "instances_train.json").read_text())
    ids = [category["id"] for category in data["categories"]]
    names = [category["name"] for category in data["categories"]]
    assert len(ids) >= 20 and len(set(names)) == len(names)
    assert ids != list(range(1, len(ids) + 1))  # gaps, as COCO's
    shapes = {"circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon"}
    assert all(name.split()[-1] in shapes for name in names)
    dataset = build_dataset("synthetic", synthetic_root, "train")
    assert dataset.class_names == [names[i] for i in np.argsort(ids)]


def test_one_to_six_objects_and_occlusion(synthetic_root):
    for split in ("train", "val"):
        data = json.loads((synthetic_root / "annotations" / f"instances_{split}.json").read_text())
        per_image = np.bincount(
            [a["image_id"] for a in data["annotations"]],
            minlength=max(i["id"] for i in data["images"]) + 1,
        )[[image["id"] for image in data["images"]]]
        assert per_image.min() >= 1 and per_image.max() <= 6
        assert any(annotation["occluded"] > 0.1 for annotation in data["annotations"])


def test_object_sizes_span_more_than_eight_times(synthetic_root):
    sides = []
    for split in ("train", "val"):
        data = json.loads((synthetic_root / "annotations" / f"instances_{split}.json").read_text())
        sides += [max(a["bbox"][2:]) for a in data["annotations"] if a["occluded"] < 0.05]
    assert max(sides) / min(sides) >= 8
    assert synthetic.MAX_SIZE / synthetic.MIN_SIZE >= 8


def sample_label_sets(
    num_images: int, seed: int = 0, setting: str = "classic"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and scenes drawn from the generator's distribution, without drawing pixels."""
    rng = np.random.default_rng(seed)
    labels = torch.zeros(num_images, len(synthetic.CATEGORIES), dtype=torch.bool)
    scenes = torch.zeros(num_images, dtype=torch.long)
    for n in range(num_images):
        scenes[n] = int(rng.choice(len(synthetic.SCENES), p=synthetic.SCENE_FREQUENCIES))
        drawn = synthetic._sample_categories(rng, int(scenes[n]), synthetic.SETTINGS[setting])
        labels[n, drawn] = True
    return labels, scenes


def test_long_tail_and_scene_specific_cooccurrence():
    labels, scenes = sample_label_sets(12000)
    frequency = labels.sum(0).float()
    assert frequency.max() / frequency.min() >= 10
    conditionals = [
        conditional_probability(labels[scenes == k]) for k in range(len(synthetic.SCENES))
    ]
    assert len(conditionals) >= 4
    for k in range(len(conditionals)):
        for other in range(k):
            # Some P(j | i) differs strongly between any two scenes.
            assert (conditionals[k] - conditionals[other]).abs().max() > 0.3


def test_each_scene_has_its_own_background():
    """A nearest-centroid classifier on mean colour and texture strength tells scenes apart."""

    def features(scene: int, seed: int) -> np.ndarray:
        canvas = synthetic._background(np.random.default_rng(seed), scene, 64)
        return np.concatenate([canvas.mean((0, 1)), canvas.std((0, 1))])

    num_scenes = len(synthetic.SCENES)
    centroids = np.stack(
        [np.mean([features(k, s) for s in range(20)], 0) for k in range(num_scenes)]
    )
    correct = 0
    for k in range(num_scenes):
        for seed in range(100, 120):
            distances = ((centroids - features(k, seed)) ** 2).sum(1)
            correct += int(np.argmin(distances) == k)
    assert correct / (20 * num_scenes) >= 0.95


def test_scenes_recorded_per_image(synthetic_root):
    dataset = build_dataset("synthetic", synthetic_root, "train")
    assert dataset.scene_names == [scene.name for scene in synthetic.SCENES]
    assert dataset.scene_ids.shape == (64,) and len(set(dataset.scene_ids.tolist())) >= 4


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    write_split = synthetic._write_split

    def fail_on_val(root, split, *args):
        if split == "val":
            raise KeyboardInterrupt
        write_split(root, split, *args)

    monkeypatch.setattr(synthetic, "_write_split", fail_on_val)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "set", num_train=4, num_val=2, image_size=32)
    assert list(tmp_path.iterdir()) == []


def test_ensure_synthetic_generates_once_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCL_DATA_DIR", str(tmp_path))
    root = ensure_synthetic(num_train=5, num_val=3, image_size=32, seed=1)
    assert root == tmp_path / f"synthetic-v{synthetic.GENERATOR_VERSION}-5-3-32px-seed1"
    marker = root / synthetic.MARKER_FILE
    stamp = marker.stat().st_mtime_ns
    assert ensure_synthetic(num_train=5, num_val=3, image_size=32, seed=1) == root
    assert marker.stat().st_mtime_ns == stamp  # not generated again
    assert len(build_dataset("synthetic", root, "val")) == 3
    # An explicit root holding a data set is used as it is.
    assert ensure_synthetic(root, num_train=99) == root


def test_generate_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists and is not empty"):
        generate(tmp_path / "taken", num_train=2, num_val=2, image_size=32)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------- settings


def test_classic_setting_draws_what_generator_version_2_drew():
    """The scenes and annotations (every random draw and every mask's pixel count) of 40 images,
    recorded before settings existed: ``classic`` must keep the book's first data set."""
    digest = hashlib.sha256()
    for index in range(40):
        _, scene, annotations = synthetic.draw_image(np.random.default_rng([5, 0, index]), 48)
        digest.update(repr((scene, annotations)).encode())
    assert digest.hexdigest() == "472e150b1889746ff8f87ce4530803d3118b416fa4b7f1b781ee5f155b24411f"


def test_mechanisms_setting_turns_up_each_property():
    classic, mechanisms = synthetic.SETTINGS["classic"], synthetic.SETTINGS["mechanisms"]
    # Small objects (still an 8x range of sizes) among more clutter.
    assert mechanisms.max_size < classic.max_size
    assert mechanisms.max_size / mechanisms.min_size >= 8
    assert min(mechanisms.distractors) > max(classic.distractors) - 1
    # More variation within a class.
    assert mechanisms.colour_jitter > classic.colour_jitter
    assert np.ptp(mechanisms.stretch) > np.ptp(classic.stretch)

    labels_c, scenes_c = sample_label_sets(12000, setting="classic")
    labels_m, scenes_m = sample_label_sets(12000, setting="mechanisms")
    index = synthetic.CATEGORY_INDEX

    def away_share(labels, scenes):
        home = torch.zeros(len(synthetic.SCENES), len(synthetic.CATEGORIES), dtype=torch.bool)
        for k, scene in enumerate(synthetic.SCENES):
            home[k, [index[name] for name in scene.home]] = True
        return (labels & ~home[scenes]).sum() / labels.sum()

    # Categories keep to their scenes more strictly.
    assert away_share(labels_m, scenes_m) < 0.5 * away_share(labels_c, scenes_c)
    # The same anchor brings another partner in another scene.
    city = synthetic.SCENES.index(next(s for s in synthetic.SCENES if s.name == "city"))
    in_city = labels_m[scenes_m == city]
    anchor, partner = index["blue square"], index["checkered red square"]
    p_partner = in_city[in_city[:, anchor], partner].float().mean()
    assert p_partner > 0.6
    classic_city = labels_c[scenes_c == city]
    assert p_partner > classic_city[classic_city[:, anchor], partner].float().mean() + 0.3
    # The long tail stays.
    frequency = labels_m.sum(0).float()
    assert frequency.max() / frequency.min() >= 10


def test_mechanisms_twins_look_alike_and_live_in_other_scenes():
    categories = synthetic.setting_categories(synthetic.SETTINGS["mechanisms"])
    names = [c.name for c in categories]
    assert len(set(names)) == len(names) == len(synthetic.CATEGORIES)
    for twin, colour in synthetic.SETTINGS["mechanisms"].recolour:
        imitated = next(
            c
            for c in synthetic.CATEGORIES
            if c.shape == twin.split()[-1]
            and c.name != twin
            and np.linalg.norm(
                np.subtract(synthetic.colour_of(c.colour), synthetic.colour_of(colour))
            )
            < 45
        )
        homes = {s.name for s in synthetic.SCENES if twin in s.home}
        imitated_homes = {s.name for s in synthetic.SCENES if imitated.name in s.home}
        assert homes and imitated_homes and not homes & imitated_homes, (twin, imitated.name)


def test_a_setting_is_written_into_the_files_and_the_cache_name(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCL_DATA_DIR", str(tmp_path))
    root = ensure_synthetic(num_train=4, num_val=2, image_size=32, seed=0, setting="mechanisms")
    version = synthetic.GENERATOR_VERSION
    assert root == tmp_path / f"synthetic-v{version}-mechanisms-4-2-32px-seed0"
    assert json.loads((root / synthetic.MARKER_FILE).read_text())["setting"] == "mechanisms"
    names = {
        c["name"]
        for c in COCO(str(root / "annotations" / "instances_val.json")).dataset["categories"]
    }
    assert "scarlet circle" in names and "orange circle" not in names
    with pytest.raises(ValueError, match=r"unknown synthetic setting 'hard'.*mechanisms"):
        generate(tmp_path / "bad", num_train=4, num_val=2, image_size=32, setting="hard")
