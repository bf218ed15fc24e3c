"""The book's measured claims: each method against its baseline and its ablations, over seeds.

A claim such as "SADCL beats Query2Label" is a measurement: the same budget for every variant,
several seeds (each a different model initialisation and data order on the same data set), the
mean and the spread, and a verdict that says whether the gap exceeds the spread. This module
holds what the chapters and ``benchmarks/method_effects.py`` share:

- ``BUDGET``: the overrides every variant trains under (the ``mechanisms`` built-in data, timm's
  ``test_resnet`` at 64 px, the same epochs and batch);
- ``VARIANTS``: each method and each ablation as a preset plus overrides;
- ``COMPARISONS``: which variants a chapter compares and the claims (``a > b``) it tests;
- ``train_variant`` (one seed; a run already finished with the same configuration is read back,
  so a killed benchmark resumes where it stopped), ``Spread`` and ``verdict``.

The number compared is the validation mAP after the last epoch. Nothing is chosen on the
validation split: no best epoch, no early stopping, no seed left out.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlcl.config import Config, load_config

# The built-in data set of the book: every chapter's own runs and every variant train on it.
BOOK_DATA: dict[str, Any] = {
    "data.synthetic_setting": "mechanisms",
    "data.synthetic_train": 1200,
    "data.synthetic_val": 500,
    "data.synthetic_seed": 0,  # the data set is fixed; run.seed varies the rest
    "data.synthetic_image_size": 64,
}
BUDGET: dict[str, Any] = {
    "data.dataset": "synthetic",
    "data.root": "",
    **BOOK_DATA,
    "data.image_size": 64,
    "data.batch_size": 32,
    "data.workers": 0,  # on 2 cores the main process decodes 64-px images fastest alone
    "model.backbone": "test_resnet",
    "model.pretrained": False,
    "run.epochs": 6,
    "run.ema": 0.0,  # the final weights are evaluated, at the end of a decaying schedule
    "run.early_stop": 0,
    "run.device": "cpu",
    # float32 on every CPU, so that a record measured on one machine extends on another
    # (run.amp=auto trains in bf16 on a CPU where bf16 is native and measured faster)
    "run.amp": "off",
    "run.progress": False,
    "run.checkpoint": False,
}
METRIC = "final_map"  # of summary.json: the last epoch's validation mAP

# The mechanisms data set's mean number of positives per image (k̂ of EPR / ROLE / Scob).
EXPECTED_POSITIVES = 2.8
SINGLE_POSITIVE = {
    "method.expected_positives": EXPECTED_POSITIVES,
    # One schedule for every single-positive variant (a label estimator refuses one-cycle).
    "optim.schedule": "cosine",
    "optim.warmup_epochs": 0.5,
}


@dataclass(frozen=True)
class Variant:
    """A method or an ablation of one: a preset and what changes in it."""

    name: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class Comparison:
    """Variants a chapter compares at equal budget, and the claims ``(better, worse)`` tested."""

    name: str
    chapter: str
    variants: tuple[str, ...]
    claims: tuple[tuple[str, str], ...]


# The losing methods' own weights as benchmarks/holdout_tuning.py chose them on the holdout split
# (its record: benchmarks/results/holdout_tuning/holdout_tuning.json); validation took no part.
TUNED_ON_HOLDOUT: dict[str, dict[str, Any]] = {
    "mulcon": {"method.contrastive_weight": 0.1, "method.temperature": 0.3},
    "sadcl": {"method.sscl_weight": 0.0, "method.pscl_weight": 0.0},  # the terms off
}


def _variants(*variants: Variant) -> dict[str, Variant]:
    return {variant.name: variant for variant in variants}


VARIANTS = _variants(
    Variant("baseline", "baseline-quick", {}, "global average pooling, linear classifier, ASL"),
    Variant("baseline, BCE", "baseline-quick", {"method.loss": "bce"}, "the same, with BCE"),
    Variant(
        "baseline + decoder-sized head",
        "baseline-quick",
        {"method.hidden_dim": "match:q2l"},
        "global pooling, a hidden layer giving the head as many parameters as q2l's decoder",
    ),
    Variant("q2l", "q2l-quick", {}, "semantic decoder: one query per class attends the map"),
    Variant("mulcon", "mulcon-quick", {}, "label-level attention + supervised contrastive"),
    Variant(
        "mulcon, contrastive weight 0",
        "mulcon-quick",
        {"method.contrastive_weight": 0.0},
        "the same model and schedule without the contrastive term",
    ),
    Variant(
        "mulcon, tuned on holdout",
        "mulcon-quick",
        TUNED_ON_HOLDOUT["mulcon"],
        "contrastive weight 0.1 and τ 0.3, chosen on the holdout split",
    ),
    Variant("sadcl", "sadcl-quick", {}, "q2l + SSCL + PSCL"),
    Variant(
        "sadcl, tuned on holdout",
        "sadcl-quick",
        TUNED_ON_HOLDOUT["sadcl"],
        "SSCL and PSCL weights chosen on the holdout split: 0 and 0, of 100 and 50 down to 0",
    ),
    Variant("sadcl without SSCL", "sadcl-quick", {"method.sscl_weight": 0.0}, "PSCL alone"),
    Variant("sadcl without PSCL", "sadcl-quick", {"method.pscl_weight": 0.0}, "SSCL alone"),
    Variant(
        "sadcl without both",
        "sadcl-quick",
        {"method.sscl_weight": 0.0, "method.pscl_weight": 0.0},
        "SADCL's model and schedule, ASL alone",
    ),
    Variant("salgl", "salgl-quick", {}, "K = 6 latent scenes, one label graph per scene"),
    Variant("salgl, 1 scene", "salgl-quick", {"method.num_scenes": 1}, "one global label graph"),
    Variant("salgl, no graph", "salgl-quick", {"method.graph_steps": 0}, "label features alone"),
    Variant("AN", "spml-quick", {"method.loss": "an"} | SINGLE_POSITIVE, "assume negative"),
    Variant("EM", "spml-quick", {"method.loss": "em"} | SINGLE_POSITIVE, "entropy maximisation"),
    Variant("ROLE", "spml-quick", {"method.loss": "role"} | SINGLE_POSITIVE, "learned estimates"),
    Variant("scob", "scob-quick", SINGLE_POSITIVE, "ROLE-style estimates + semantic contrast"),
    Variant(
        "scob without contrast",
        "scob-quick",
        {"method.contrastive_weight": 0.0} | SINGLE_POSITIVE,
        "the contrastive phase contributes nothing",
    ),
    Variant(
        "scob without bootstrapping",
        "scob-quick",
        {"method.lr_scale_estimator": 0.0} | SINGLE_POSITIVE,
        "the label estimates stay at their start (observed positives only)",
    ),
)

COMPARISONS = (
    Comparison(
        "asymmetric loss",
        "02_backbone_and_baseline",
        ("baseline, BCE", "baseline"),
        (("baseline", "baseline, BCE"),),
    ),
    Comparison(
        "semantic decoder",
        "03_semantic_decoder",
        ("baseline", "baseline + decoder-sized head", "q2l"),
        (("q2l", "baseline"), ("q2l", "baseline + decoder-sized head")),
    ),
    Comparison(
        "mulcon",
        "04_mulcon",
        ("baseline", "mulcon, contrastive weight 0", "mulcon", "mulcon, tuned on holdout"),
        (
            ("mulcon", "baseline"),
            ("mulcon", "mulcon, contrastive weight 0"),
            ("mulcon, tuned on holdout", "baseline"),
            ("mulcon, tuned on holdout", "mulcon, contrastive weight 0"),
        ),
    ),
    Comparison(
        "sscl",
        "05_sscl",
        ("q2l", "sadcl without PSCL"),
        (("sadcl without PSCL", "q2l"),),
    ),
    Comparison(
        "sadcl",
        "06_pscl_and_sadcl",
        (
            "q2l",
            "sadcl without both",
            "sadcl without SSCL",
            "sadcl without PSCL",
            "sadcl",
            "sadcl, tuned on holdout",
        ),
        (
            ("sadcl", "q2l"),
            ("sadcl, tuned on holdout", "q2l"),
            ("sadcl", "sadcl without both"),
            ("sadcl", "sadcl without SSCL"),
            ("sadcl", "sadcl without PSCL"),
        ),
    ),
    Comparison(
        "salgl",
        "07_scene_graph",
        ("baseline", "salgl, no graph", "salgl, 1 scene", "salgl"),
        (("salgl", "baseline"), ("salgl", "salgl, 1 scene"), ("salgl", "salgl, no graph")),
    ),
    Comparison(
        "single positive",
        "08_single_positive_bootstrapping",
        ("AN", "EM", "ROLE", "scob without bootstrapping", "scob without contrast", "scob"),
        (
            ("scob", "ROLE"),
            ("ROLE", "AN"),
            ("scob", "scob without contrast"),
            ("scob", "scob without bootstrapping"),
        ),
    ),
)


# --------------------------------------------------------------------------- configurations


def variant_config(
    variant: Variant | str, seed: int, out_dir: str | Path, budget: dict[str, Any] | None = None
) -> Config:
    """The configuration of one seed of ``variant``: its preset, ``BUDGET`` (or ``budget``),
    its own overrides, the seed and the run folder."""
    variant = VARIANTS[variant] if isinstance(variant, str) else variant
    budget = BUDGET if budget is None else budget
    overrides = dict(budget)
    for key, value in variant.overrides.items():
        overrides[key] = _resolve(value, budget)
    overrides |= {"run.seed": seed, "run.out_dir": str(out_dir)}
    return load_config(variant.preset, overrides)


def _resolve(value: Any, budget: dict[str, Any]) -> Any:
    """``"match:q2l"``: the hidden width that gives a baseline head the parameters of q2l's."""
    if isinstance(value, str) and value.startswith("match:"):
        return matched_hidden_dim(VARIANTS[value.removeprefix("match:")], budget)
    return value


def matched_hidden_dim(reference: Variant, budget: dict[str, Any], num_classes: int = 24) -> int:
    """Width ``H`` of a baseline's hidden layer (``F·H + H + H·C + C`` parameters) nearest to the
    parameters ``reference`` has beyond its backbone."""
    from mlcl.methods import build_method
    from mlcl.models import Backbone

    config = variant_config(reference, 0, "unused", budget)
    method = build_method(config, num_classes=num_classes, num_train_images=1)
    total = sum(p.numel() for p in method.parameters())
    backbone = next(m for m in method.modules() if isinstance(m, Backbone))
    head = total - sum(p.numel() for p in backbone.parameters())
    features = backbone.num_features
    return max(1, round((head - num_classes) / (features + 1 + num_classes)))


# --------------------------------------------------------------------------- runs


def train_variant(
    variant: Variant | str,
    seed: int,
    root: str | Path,
    budget: dict[str, Any] | None = None,
    split: Literal["val", "holdout"] = "val",
) -> dict[str, Any]:
    """Train one seed of ``variant`` into ``root/<variant>/seed<seed>`` and return its summary;
    a run that already finished there with the same configuration is read back instead.

    ``split="holdout"`` scores every epoch on the training images ``data.holdout`` keeps out of
    training instead of the validation split: a choice of hyper-parameters is made there, so the
    validation split never takes part in one.
    """
    from mlcl.engine import fit
    from mlcl.engine.loaders import build_split, data_root
    from mlcl.methods import resolve_config

    variant = VARIANTS[variant] if isinstance(variant, str) else variant
    out_dir = run_dir(root, variant.name, seed)
    config = variant_config(variant, seed, out_dir, budget)
    summary_file = out_dir / "summary.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        if summary.get("config_hash") == resolve_config(config).hash():
            return summary
    if split == "val":
        return fit(config)
    data = data_root(config)
    return fit(
        config,
        train_dataset=build_split(config, "train", data),
        val_dataset=build_split(config, "holdout", data),
    )


def run_dir(root: str | Path, name: str, seed: int) -> Path:
    """``root/<variant name as a folder name>/seed<seed>``."""
    folder = "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())
    return Path(root) / folder / f"seed{seed}"


def epoch_curve(out_dir: str | Path) -> list[float]:
    """The validation mAP after each epoch of the run in ``out_dir``."""
    lines = (Path(out_dir) / "metrics.jsonl").read_text().splitlines()
    return [record["mAP"] for record in map(json.loads, lines) if "mAP" in record]


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of one variant's per-seed values."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else float("nan")

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f}"


def verdict(better: Spread, worse: Spread) -> str:
    """``wins`` when the gap of the means exceeds the larger standard deviation, ``loses`` when
    it does the other way, else ``within the spread``."""
    gap, spread = better.mean - worse.mean, max(better.std, worse.std)
    if gap > spread:
        return "wins"
    if -gap > spread:
        return "loses"
    return "within the spread"


def claim_rows(comparison: Comparison, spreads: dict[str, Spread]) -> list[dict[str, Any]]:
    """One row per claim of ``comparison``: both sides, the gap, the larger spread, the verdict."""
    rows = []
    for better, worse in comparison.claims:
        a, b = spreads[better], spreads[worse]
        rows.append(
            {
                "claim": f"{better} > {worse}",
                "better": better,
                "worse": worse,
                "gap": a.mean - b.mean,
                "larger_std": max(a.std, b.std),
                "verdict": verdict(a, b),
            }
        )
    return rows


def seeds_of(seeds: int | Sequence[int]) -> list[int]:
    """``3`` → ``[0, 1, 2]``; a list is kept as it is."""
    return list(range(seeds)) if isinstance(seeds, int) else list(seeds)


# --------------------------------------------------------------------------- chapters


def comparison_named(name: str) -> Comparison:
    """The comparison called ``name`` (a ``KeyError`` lists the known ones)."""
    for comparison in COMPARISONS:
        if comparison.name == name:
            return comparison
    raise KeyError(f"no comparison {name!r} (known: {', '.join(c.name for c in COMPARISONS)})")


def load_record(path: str | Path) -> dict[str, Any] | None:
    """The benchmark's record (``benchmarks/results/method_effects.json``), or None if absent."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def recorded_spreads(record: dict[str, Any], comparison: Comparison) -> dict[str, Spread] | None:
    """Each variant of ``comparison`` as the record has it; None if one is missing."""
    variants = record["variants"]
    if not all(name in variants for name in comparison.variants):
        return None
    return {name: Spread(tuple(variants[name]["values"])) for name in comparison.variants}


def train_comparison(
    comparison: Comparison,
    seeds: int | Sequence[int],
    root: str | Path,
    budget: dict[str, Any] | None = None,
) -> dict[str, Spread]:
    """Train every variant of ``comparison`` for ``seeds`` (seed-major) and summarise them."""
    values: dict[str, list[float]] = {name: [] for name in comparison.variants}
    for seed in seeds_of(seeds):
        for name in comparison.variants:
            values[name].append(train_variant(name, seed, root, budget)[METRIC])
    return {name: Spread(tuple(v)) for name, v in values.items()}


def spreads_table(comparison: Comparison, spreads: dict[str, Spread]) -> list[dict[str, Any]]:
    """Rows for a table: each variant's mean, standard deviation, seeds and description."""
    return [
        {
            "variant": name,
            "mAP mean": spreads[name].mean,
            "std": spreads[name].std,
            "per seed": ", ".join(f"{value:.2f}" for value in spreads[name].values),
            "what it is": VARIANTS[name].description,
        }
        for name in comparison.variants
    ]


def plot_spreads(axis: Any, comparison: Comparison, spreads: dict[str, Spread]) -> None:
    """Bars of the means with standard-deviation error bars, and a dot per seed."""
    names = list(comparison.variants)
    positions = list(range(len(names)))
    axis.bar(
        positions,
        [spreads[n].mean for n in names],
        yerr=[spreads[n].std for n in names],
        capsize=4,
        color="tab:blue",
        alpha=0.6,
    )
    for position, name in zip(positions, names):
        values = spreads[name].values
        axis.scatter([position] * len(values), values, s=12, color="black", zorder=3)
    every = [value for name in names for value in spreads[name].values]
    axis.set_ylim(min(every) - 3, max(every) + 2)
    axis.set_xticks(positions, names, rotation=30, ha="right")
    axis.set_ylabel("final mAP (bars: mean ± std; dots: seeds)")
    axis.set_title(comparison.name)


def claim_sentences(comparison: Comparison, spreads: dict[str, Spread]) -> str:
    """The result of each claim in words, with its numbers, for the chapter's prose."""
    seeds = len(next(iter(spreads.values())).values)
    sentences = []
    for row in claim_rows(comparison, spreads):
        better, worse, gap, spread = row["better"], row["worse"], row["gap"], row["larger_std"]
        if row["verdict"] == "wins":
            text = (
                f"{better} beats {worse} by {gap:.2f} mAP, more than the larger standard "
                f"deviation ({spread:.2f})"
            )
        elif row["verdict"] == "loses":
            text = (
                f"{better} does not beat {worse}: it trails by {-gap:.2f} mAP, more than the "
                f"larger standard deviation ({spread:.2f})"
            )
        else:
            text = (
                f"{better} against {worse} differ by {gap:+.2f} mAP, inside the larger standard "
                f"deviation ({spread:.2f}): these seeds do not decide it"
            )
        sentences.append(text)
    return f"Over {seeds} seeds, " + "; ".join(sentences) + "."
