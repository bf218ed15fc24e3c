"""CI runs the shipped ``quick`` grid as a user would: ``mlcl sweep quick``, every training chapter
on its defaults on the CPU, each through papermill into a folder of its own. These are the chapters'
own tests: nbval leaves them to this file (``notebooks/conftest.py``), so each runs once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from mlcl.sweep import load_grid

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
QUICK = load_grid("quick", NOTEBOOKS)
# The built-in data's labels are about 10 % positive, the mAP of scores that ignore the image.
# Every chapter trains long enough to be well clear of it.
CHANCE_MAP = 10.0


# Far above any cell of the quick grid (the longest trains for about a minute on two cores), so a
# cell over it is a kernel that stopped answering: the sweep executes that chapter once more.
CELL_TIMEOUT_S = 600
# The whole sweep, retries included, ends well before CI's 90 minutes even if every limit is hit.
SWEEP_LIMIT_S = 45 * 60


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, dict[str, dict], str]:
    out = tmp_path_factory.mktemp("quick-grid")
    command = [sys.executable, "-m", "mlcl.cli", "sweep", "quick", "--out", str(out)]
    command += ["--cell-timeout", str(CELL_TIMEOUT_S), "--retries", "1"]
    # Output to files, not pipes: a kernel left running must not hold the test's pipe open.
    with (out / "stdout.txt").open("w") as stdout, (out / "stderr.txt").open("w") as stderr:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=stdout, stderr=stderr, text=True, start_new_session=True
        )
        try:
            process.wait(timeout=SWEEP_LIMIT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            report = out / "report.md"
            finished = report.read_text() if report.is_file() else "(no run finished)\n"
            pytest.fail(f"mlcl sweep quick ran past {SWEEP_LIMIT_S} s; finished:\n{finished}")
    report_file = out / "report.json"
    stderr_tail = (out / "stderr.txt").read_text()[-3000:]
    assert report_file.is_file(), f"mlcl sweep wrote no report:\n{stderr_tail}"
    report = {entry["name"]: entry for entry in json.loads(report_file.read_text())}
    return out, report, (out / "stdout.txt").read_text()


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
    if entry["attempts"] > 1:  # passed, but the log should say that a kernel had to be replaced
        warnings.warn(f"{run.name}: {entry['attempts']} attempts ({entry['error']})", stacklevel=1)
    # Every training the chapter made is in a folder of its own under the run's out_dir.
    assert entry["summaries"], f"{run.name}: no summary.json under {out / run.name}"
    for training, summary in entry["summaries"].items():
        assert training != ".", f"{run.name}: a training wrote straight into out_dir"
        assert summary["best_map"] > 2 * CHANCE_MAP, f"{run.name}/{training}: {summary}"
        assert summary["device"] == "cpu"
