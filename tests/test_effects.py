"""The book's measured comparisons (mlcl.effects): every variant is a valid configuration of the
budget, the decoder-sized head matches the decoder, spreads and verdicts, and runs read back."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest

from mlcl.effects import (
    BOOK_DATA,
    BUDGET,
    COMPARISONS,
    TUNED_ON_HOLDOUT,
    VARIANTS,
    Spread,
    claim_rows,
    claim_sentences,
    comparison_named,
    epoch_curve,
    load_record,
    matched_hidden_dim,
    plot_spreads,
    recorded_spreads,
    run_dir,
    spreads_table,
    train_variant,
    variant_config,
    verdict,
)
from mlcl.methods import build_method, method_options, resolve_config
from mlcl.models import Backbone


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_is_its_preset_under_the_budget(name, tmp_path):
    config = resolve_config(variant_config(name, 2, tmp_path / "run"))
    assert config.run.seed == 2 and config.run.out_dir == str(tmp_path / "run")
    assert config.model.backbone == BUDGET["model.backbone"]
    assert config.data.synthetic_setting == "mechanisms"
    assert (config.run.epochs, config.data.image_size) == (
        BUDGET["run.epochs"],
        BUDGET["data.image_size"],
    )
    options = method_options(config)
    for key, value in VARIANTS[name].overrides.items():
        if key.startswith("method.") and not str(value).startswith("match:"):
            assert getattr(options, key.removeprefix("method.")) == value, key


def test_every_comparison_names_known_variants_and_claims_among_them():
    assert {c.chapter[:2] for c in COMPARISONS} == {"02", "03", "04", "05", "06", "07", "08"}
    for comparison in COMPARISONS:
        assert set(comparison.variants) <= set(VARIANTS)
        for better, worse in comparison.claims:
            assert {better, worse} <= set(comparison.variants)


def test_the_decoder_sized_head_has_the_decoders_parameters():
    width = matched_hidden_dim(VARIANTS["q2l"], BUDGET)

    def head_parameters(name: str) -> int:
        method = build_method(variant_config(name, 0, "unused"), num_classes=24, num_train_images=1)
        backbone = next(m for m in method.modules() if isinstance(m, Backbone))
        backbone = sum(p.numel() for p in backbone.parameters())
        return sum(p.numel() for p in method.parameters()) - backbone

    config = variant_config("baseline + decoder-sized head", 0, "unused")
    assert method_options(config).hidden_dim == width
    decoder, head = head_parameters("q2l"), head_parameters("baseline + decoder-sized head")
    assert abs(head - decoder) / decoder < 0.01


def test_spread_is_the_mean_and_sample_deviation():
    spread = Spread((1.0, 2.0, 6.0))
    assert spread.mean == 3.0
    assert math.isclose(spread.std, math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 2))
    assert str(spread) == "3.00 ± 2.65"
    assert math.isnan(Spread((4.0,)).std)


def test_verdict_compares_the_gap_with_the_larger_spread():
    tight, loose = Spread((10.0, 10.2, 9.8)), Spread((8.0, 12.0, 10.0))
    assert verdict(Spread((12.0, 12.2, 11.8)), tight) == "wins"
    assert verdict(tight, Spread((12.0, 12.2, 11.8))) == "loses"
    assert verdict(Spread((12.0, 12.2, 11.8)), loose) == "within the spread"  # gap 2 = std 2
    comparison = comparison_named("semantic decoder")
    spreads = {name: tight for name in comparison.variants} | {"q2l": Spread((13.0, 13.0, 13.0))}
    rows = claim_rows(comparison, spreads)
    assert [row["claim"] for row in rows] == [f"{a} > {b}" for a, b in comparison.claims]
    assert all(row["verdict"] == "wins" and math.isclose(row["gap"], 3.0) for row in rows)


def test_run_folders_are_plain_names():
    assert run_dir("root", "baseline + decoder-sized head", 1).as_posix() == (
        "root/baseline-decoder-sized-head/seed1"
    )
    assert run_dir("root", "mulcon, contrastive weight 0", 0).parent.name == (
        "mulcon-contrastive-weight-0"
    )


# The budget shrunk to a few seconds of training: a handful of 32-px images, one epoch.
TINY_BUDGET = BUDGET | {
    "data.synthetic_train": 24,
    "data.synthetic_val": 12,
    "data.synthetic_image_size": 32,
    "data.image_size": 32,
    "data.batch_size": 8,
    "run.epochs": 1,
}


def test_a_finished_run_is_read_back_and_a_changed_one_trained_again(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCL_DATA_DIR", str(tmp_path / "data"))
    budget = TINY_BUDGET
    first = train_variant("baseline", 0, tmp_path / "runs", budget)
    out = run_dir(tmp_path / "runs", "baseline", 0)
    assert len(epoch_curve(out)) == 1 and epoch_curve(out)[0] == first["final_map"]
    stamp = (out / "summary.json").stat().st_mtime_ns
    again = train_variant("baseline", 0, tmp_path / "runs", budget)
    assert (again["final_map"], again["config_hash"]) == (first["final_map"], first["config_hash"])
    assert (out / "summary.json").stat().st_mtime_ns == stamp  # read back, not trained
    train_variant("baseline", 0, tmp_path / "runs", budget | {"optim.lr": 3e-4})
    assert (out / "summary.json").stat().st_mtime_ns != stamp  # another configuration


def test_holdout_scoring_trains_the_same_model_and_scores_it_on_held_out_training_images(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("MLCL_DATA_DIR", str(tmp_path / "data"))
    budget = TINY_BUDGET | {"data.synthetic_train": 40, "data.holdout": 0.25}
    on_val = train_variant("baseline", 0, tmp_path / "val", budget)
    on_holdout = train_variant("baseline", 0, tmp_path / "holdout", budget, split="holdout")
    records = [
        json.loads((run_dir(tmp_path / root, "baseline", 0) / "metrics.jsonl").read_text())
        for root in ("val", "holdout")
    ]
    # The same 30 training images in the same order: the same training, scored elsewhere.
    assert records[0]["train_loss"] == records[1]["train_loss"]
    assert on_val["final_map"] != on_holdout["final_map"]


def test_a_chapter_reads_its_comparison_from_the_record_and_states_it_in_words(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comparison = comparison_named("semantic decoder")
    values = {"baseline": [50.0, 51.0, 49.0], "baseline + decoder-sized head": [53.0, 55.5, 53.0]}
    values["q2l"] = [55.0, 56.0, 54.0]
    record = {"variants": {name: {"values": v} for name, v in values.items()}}
    path = tmp_path / "method_effects.json"
    path.write_text(json.dumps(record))
    spreads = recorded_spreads(load_record(path), comparison)
    assert spreads["q2l"].mean == 55.0
    sentence = claim_sentences(comparison, spreads)
    assert sentence.startswith("Over 3 seeds, q2l beats baseline by 5.00 mAP")
    assert "q2l against baseline + decoder-sized head differ by +1.17 mAP, inside" in sentence
    losing = dict(spreads) | {"q2l": Spread((40.0, 40.5, 41.0))}
    assert "q2l does not beat baseline: it trails by 9.50 mAP" in claim_sentences(
        comparison, losing
    )
    rows = spreads_table(comparison, spreads)
    assert [row["variant"] for row in rows] == list(comparison.variants)
    assert rows[0]["per seed"] == "50.00, 51.00, 49.00"
    figure, axis = plt.subplots()
    plot_spreads(axis, comparison, spreads)
    assert len(axis.patches) == len(comparison.variants)  # one bar per variant
    plt.close(figure)
    assert load_record(tmp_path / "absent.json") is None
    del record["variants"]["q2l"]
    assert recorded_spreads(record, comparison) is None
    with pytest.raises(KeyError, match="no comparison 'nonsense'"):
        comparison_named("nonsense")


NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_every_variant_trains_on_the_books_data_set():
    assert BUDGET.items() >= BOOK_DATA.items()
    config = variant_config("salgl", 0, "unused")
    assert config.data.synthetic_setting == BOOK_DATA["data.synthetic_setting"] == "mechanisms"


@pytest.mark.parametrize("chapter", sorted({c.chapter for c in COMPARISONS}))
def test_each_training_chapter_defaults_to_the_books_data_set(chapter):
    # The chapters' own runs and the over-seeds record they show must be on the same data.
    cells = json.loads((NOTEBOOKS / f"{chapter}.ipynb").read_text())["cells"]
    code = ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]
    parameters = next(
        source
        for cell, source in zip((c for c in cells if c["cell_type"] == "code"), code)
        if "parameters" in cell["metadata"].get("tags", [])
    )
    defaults = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse(parameters).body
        if isinstance(node, ast.Assign)
    }
    assert defaults["dataset"] == "synthetic"
    assert defaults["synthetic_setting"] == BOOK_DATA["data.synthetic_setting"]
    assert any("BOOK_DATA" in source and "synthetic_setting" in source for source in code[1:])


def test_the_tuned_variants_carry_what_the_holdout_tuning_chose():
    record = json.loads(
        (NOTEBOOKS.parent / "benchmarks/results/holdout_tuning/holdout_tuning.json").read_text()
    )
    assert record["split"] == "holdout" and record["budget"]["data.holdout"] > 0
    assert sorted(record["methods"]) == sorted(TUNED_ON_HOLDOUT)
    for method, result in record["methods"].items():
        best = max(result["points"], key=lambda point: point["mean"])
        assert result["chosen"] == best["overrides"] == TUNED_ON_HOLDOUT[method]
        assert VARIANTS[f"{method}, tuned on holdout"].overrides == TUNED_ON_HOLDOUT[method]
