"""CI runs the shipped ``quick`` grid as a user would: ``mlcl sweep quick``, every training chapter
on its defaults on the CPU, each through papermill into a folder of its own. These are the chapters'
own tests: nbval leaves them to this file (``notebooks/conftest.py``), so each runs once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlcl.sweep import load_grid

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
QUICK = load_grid("quick", NOTEBOOKS)
# The built-in data's labels are about 10 % positive, the mAP of scores that ignore the image.
# Every chapter trains long enough to be well clear of it.
CHANCE_MAP = 10.0


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, dict[str, dict], str]:
    out = tmp_path_factory.mktemp("quick-grid")
    completed = subprocess.run(
        [sys.executable, "-m", "mlcl.cli", "sweep", "quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    report_file = out / "report.json"
    assert report_file.is_file(), f"mlcl sweep wrote no report:\n{completed.stderr[-3000:]}"
    report = {entry["name"]: entry for entry in json.loads(report_file.read_text())}
    return out, report, completed.stdout


def test_the_sweep_ran_every_run_of_the_grid(sweep):
    _, report, stdout = sweep
    assert sorted(report) == sorted(run.name for run in QUICK)
    failed = [name for name, entry in report.items() if entry["status"] != "ok"]
    assert f"{len(QUICK) - len(failed)} ok, {len(failed)} failed" in stdout


@pytest.mark.parametrize("run", QUICK, ids=[run.name for run in QUICK])
def test_chapter_runs_on_its_defaults_and_learns(sweep, run):
    out, report, _ = sweep
    entry = report[run.name]
    executed = out / run.name / run.notebook.name
    assert entry["status"] == "ok", f"{entry['error']}\n(the executed notebook: {executed})"
    assert executed.is_file()
    # Every training the chapter made is in a folder of its own under the run's out_dir.
    assert entry["summaries"], f"{run.name}: no summary.json under {out / run.name}"
    for training, summary in entry["summaries"].items():
        assert training != ".", f"{run.name}: a training wrote straight into out_dir"
        assert summary["best_map"] > 2 * CHANCE_MAP, f"{run.name}/{training}: {summary}"
        assert summary["device"] == "cpu"
