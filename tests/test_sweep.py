"""`mlcl sweep`: every run goes into its own directory, and a failing run fails alone."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from mlcl.errors import ConfigError
from mlcl.sweep import load_grid, run_sweep

NOTEBOOK_BODY = """
import json, pathlib, time
if fail:
    raise RuntimeError("asked to fail")
# stall_once: the first execution into out_dir stops answering, as a hung kernel does.
stalled_before = pathlib.Path(out_dir, "stalled")
if stall_once and not stalled_before.exists():
    stalled_before.touch()
    time.sleep(600)
for name, best_map in (("first", 10.0 * epochs), ("second/nested", 1.0)):
    run = pathlib.Path(out_dir) / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "summary.json").write_text(json.dumps({"best_map": best_map}))
"""


@pytest.fixture
def grid(tmp_path):
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell(
        "epochs = 1\nfail = False\nstall_once = False\nout_dir = 'unused'"
    )
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, nbformat.v4.new_code_cell(NOTEBOOK_BODY)]
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    nbformat.write(notebook, notebooks / "toy.ipynb")
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "notebooks: [toy]\nparameter_sets:\n  three: {epochs: 3}\n  broken: {fail: true}\n"
    )
    return grid, notebooks


def test_runs_each_pair_and_isolates_failures(grid, tmp_path):
    grid_file, notebooks = grid
    runs = load_grid(grid_file, notebooks)
    assert [run.name for run in runs] == ["toy--three", "toy--broken"]

    results = run_sweep(runs, tmp_path / "out")
    by_name = {result.name: result for result in results}
    assert by_name["toy--three"].status == "ok"
    assert by_name["toy--three"].summaries == {  # the override took effect
        "first": {"best_map": 30.0},
        "second/nested": {"best_map": 1.0},
    }
    assert (tmp_path / "out" / "toy--three" / "toy.ipynb").is_file()
    assert by_name["toy--broken"].status == "failed"
    assert "asked to fail" in by_name["toy--broken"].error

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [entry["status"] for entry in report] == ["ok", "failed"]
    table = (tmp_path / "out" / "report.md").read_text()
    assert "| toy--three | ok | first 30.00, second/nested 1.00 |" in table
    assert "asked to fail" in table


def test_bad_grid_names_the_file(grid, tmp_path):
    _, notebooks = grid
    bad = tmp_path / "bad.yaml"
    bad.write_text("parameter_sets: {}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_grid(bad, tmp_path)
    misspelt = tmp_path / "misspelt.yaml"
    misspelt.write_text("notebooks: [toy]\nparameter_sets: {a: {epoch: 3}}\n")
    with pytest.raises(
        ConfigError, match=r"toy\.ipynb has no parameter 'epoch'.*epochs, fail, out_dir, stall_once"
    ):
        load_grid(misspelt, notebooks)
    missing_notebook = tmp_path / "missing.yaml"
    missing_notebook.write_text("notebooks: [nowhere]\n")
    with pytest.raises(ConfigError, match="nowhere"):
        load_grid(missing_notebook, tmp_path)


def test_per_notebook_parameters_apply_on_top_of_the_set(grid, tmp_path):
    _, notebooks = grid
    grid_file = tmp_path / "mapped.yaml"
    grid_file.write_text(
        "notebooks: {toy: {epochs: 5}}\nparameter_sets: {a: {epochs: 1, fail: false}}\n"
    )
    (run,) = load_grid(grid_file, notebooks)
    assert run.parameters == {"epochs": 5, "fail": False}


@pytest.mark.parametrize("name", ["quick", "coco"])
def test_shipped_grids_name_existing_chapters(name):
    runs = load_grid(name, Path(__file__).resolve().parent.parent / "notebooks")
    assert runs, name
    assert all(run.notebook.is_file() for run in runs)


def test_a_second_sweep_reuses_finished_runs_and_retries_the_others(grid, tmp_path):
    grid_file, notebooks = grid
    runs = load_grid(grid_file, notebooks)
    out = tmp_path / "out"
    run_sweep(runs, out)
    executed = out / "toy--three" / "toy.ipynb"
    first_write = executed.stat().st_mtime_ns

    again = {result.name: result for result in run_sweep(runs, out)}
    assert again["toy--three"].reused and again["toy--three"].status == "ok"
    assert again["toy--three"].summaries["first"] == {"best_map": 30.0}
    assert executed.stat().st_mtime_ns == first_write  # not executed again
    assert not again["toy--broken"].reused and again["toy--broken"].status == "failed"
    assert "toy--three | ok (earlier sweep) |" in (out / "report.md").read_text()

    changed = load_grid(grid_file, notebooks)
    changed[0].parameters = {"epochs": 4}
    assert not run_sweep(changed, out)[0].reused  # other parameters: executed again
    assert not any(result.reused for result in run_sweep(runs, out, rerun=True))


def test_a_stalled_cell_times_out_and_the_run_is_executed_again(grid, tmp_path):
    _, notebooks = grid
    stalling = tmp_path / "stalling.yaml"
    stalling.write_text("notebooks: [toy]\nparameter_sets: {stall: {stall_once: true}}\n")
    (run,) = load_grid(stalling, notebooks)

    (once,) = run_sweep([run], tmp_path / "no-retry", cell_timeout=3)
    assert once.status == "failed" and once.attempts == 1
    assert "attempt 1: CellTimeoutError" in once.error
    assert "stall_once" in once.error  # names the cell that stalled

    (again,) = run_sweep([run], tmp_path / "retried", cell_timeout=3, retries=1)
    assert again.status == "ok" and again.attempts == 2
    assert again.summaries["first"] == {"best_map": 10.0}
    assert "attempt 1: CellTimeoutError" in again.error
    assert "| toy--stall | ok (2 attempts) |" in (tmp_path / "retried" / "report.md").read_text()


def test_a_cell_that_raised_is_not_executed_again(grid, tmp_path):
    grid_file, notebooks = grid
    broken = [run for run in load_grid(grid_file, notebooks) if run.set_name == "broken"]
    (result,) = run_sweep(broken, tmp_path / "out", cell_timeout=60, retries=2)
    assert result.status == "failed" and result.attempts == 1
    assert "asked to fail" in result.error


def test_retries_and_cell_timeout_are_checked(grid, tmp_path):
    runs = load_grid(*grid)
    with pytest.raises(ConfigError, match="retries: -1"):
        run_sweep(runs, tmp_path / "out", retries=-1)
    for cell_timeout in (0, 2.5):
        with pytest.raises(ConfigError, match=f"cell_timeout: {cell_timeout}"):
            run_sweep(runs, tmp_path / "out", cell_timeout=cell_timeout)
