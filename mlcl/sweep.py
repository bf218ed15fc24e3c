"""Run a grid of chapters × parameter sets through papermill.

A grid is a YAML file (or the name of one shipped in ``mlcl/sweeps/``)::

    notebooks: [02_backbone_and_baseline, 06_pscl_and_sadcl]
    parameter_sets:
      short: {epochs: 1}
      long: {epochs: 20, device: cuda}

``notebooks`` may also map each chapter to parameters of its own (its preset, say), which apply
on top of every set's. Every (notebook, parameter set) pair is one run, executed into its own directory
``OUT/<notebook>--<set>/`` with the executed notebook beside what the chapter writes there (the
run's ``out_dir`` parameter points at it): a chapter puts each training it makes in a folder of its
own under ``out_dir`` (``summary.json``, ``metrics.jsonl``, checkpoints). A cell that fails fails
that run, not the sweep: the sweep goes on and its report (``report.json`` and ``report.md`` in
``OUT``) says which runs failed and why, and the best mAP of every training each run made.

A sweep started again into the same ``OUT`` (after it was killed, or after fixing what failed)
reuses the runs that finished with the same parameters and executes the others; ``rerun=True``
(``mlcl sweep --rerun``) executes every run again.

A Jupyter kernel can stop answering: the cell's work done, its reply never reaches papermill, which
would then wait for ever (a rare fault of the kernel's messaging, seen in CI). ``cell_timeout``
(``--cell-timeout``) bounds each wait for the kernel, and ``retries`` (``--retries``) executes a
run again, from the top in a fresh kernel, when a cell timed out or the kernel died; a cell that
raised is a failure of the notebook and is not retried.
"""

from __future__ import annotations

import ast
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlcl.errors import ConfigError

GRID_DIR = Path(__file__).parent / "sweeps"


@dataclass
class SweepRun:
    notebook: Path
    set_name: str
    parameters: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.notebook.stem}--{self.set_name}"


@dataclass
class RunResult:
    name: str
    notebook: str
    parameters: dict[str, Any]
    status: str  # ok | failed
    seconds: float
    error: str = ""
    # Executions of the run; more than one after a timed-out cell or a dead kernel (``retries``),
    # and ``error`` then keeps what ended each earlier attempt.
    attempts: int = 1
    # The summary.json of every training the chapter made, by its folder relative to the run's.
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    reused: bool = False  # finished in an earlier sweep into the same folder, not executed again


def list_grids() -> list[str]:
    return sorted(path.stem for path in GRID_DIR.glob("*.yaml"))


def load_grid(grid: str | Path, notebooks_dir: str | Path = "notebooks") -> list[SweepRun]:
    """The runs of a grid file (path or shipped name), notebooks resolved in ``notebooks_dir``."""
    path = Path(grid)
    if path.suffix not in (".yaml", ".yml"):
        path = GRID_DIR / f"{grid}.yaml"
    if not path.is_file():
        raise ConfigError(f"{grid}: no such grid file (shipped grids: {', '.join(list_grids())})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, yaml.YAMLError):
        raise ConfigError(f"{path}: not a YAML grid file") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a grid must be a mapping with 'notebooks'")
    notebooks = raw.get("notebooks")
    parameter_sets = raw.get("parameter_sets", {"default": {}})
    if isinstance(notebooks, list):
        notebooks = {name: {} for name in notebooks}
    if not isinstance(notebooks, dict) or not notebooks:
        raise ConfigError(
            f"{path}: 'notebooks' must list chapter names (or map them to parameters)"
        )
    if not isinstance(parameter_sets, dict) or not all(
        isinstance(v, dict) for v in parameter_sets.values()
    ):
        raise ConfigError(f"{path}: 'parameter_sets' must map names to parameter mappings")
    runs = []
    for name, own_parameters in notebooks.items():
        notebook = Path(notebooks_dir) / f"{Path(str(name)).stem}.ipynb"
        if not notebook.is_file():
            raise ConfigError(f"{path}: notebook {notebook} not found")
        known = notebook_parameters(notebook)
        for set_name, parameters in parameter_sets.items():
            run = SweepRun(notebook, str(set_name), {**parameters, **(own_parameters or {})})
            # papermill would inject a misspelt name silently, and the run would train hours
            # on the chapter's default instead.
            unknown = sorted(set(run.parameters) - known)
            if unknown:
                raise ConfigError(
                    f"{path}: {notebook.name} has no parameter {unknown[0]!r} "
                    f"(its parameters: {', '.join(sorted(known))})"
                )
            runs.append(run)
    return runs


def notebook_parameters(notebook: Path) -> set[str]:
    """The names the cell tagged ``parameters`` assigns (what papermill can override)."""
    cells = json.loads(notebook.read_text())["cells"]
    for cell in cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            tree = ast.parse("".join(cell["source"]))
            return {
                target.id
                for node in tree.body
                if isinstance(node, ast.Assign | ast.AnnAssign)
                for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                if isinstance(target, ast.Name)
            }
    raise ConfigError(f"{notebook}: no cell is tagged 'parameters', so papermill cannot set any")


def run_sweep(
    runs: list[SweepRun],
    out_dir: str | Path,
    kernel_name: str | None = None,
    rerun: bool = False,
    cell_timeout: int | None = None,
    retries: int = 0,
) -> list[RunResult]:
    """Execute every run; never raises for a failing notebook. Writes the report to ``out_dir``.

    A run that an earlier sweep into ``out_dir`` finished with the same parameters is reused,
    unless ``rerun``. ``cell_timeout`` seconds at most for each cell (default: no limit), and up
    to ``retries`` more executions of a run whose cell timed out or whose kernel died.
    """
    if retries < 0:
        raise ConfigError(f"retries: {retries}, must be >= 0")
    # nbclient takes whole seconds only
    if cell_timeout is not None and (not isinstance(cell_timeout, int) or cell_timeout <= 0):
        raise ConfigError(f"cell_timeout: {cell_timeout!r} s, must be a whole number > 0 (or None)")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    finished = {} if rerun else finished_runs(out_dir)
    results = []
    for run in runs:
        earlier = finished.get(run.name)
        if earlier is not None and earlier.parameters == run.parameters:
            earlier.reused = True
            results.append(earlier)
        else:
            results.append(execute_run(run, out_dir / run.name, kernel_name, cell_timeout, retries))
        write_report(results, out_dir)
    return results


def execute_run(
    run: SweepRun,
    run_dir: Path,
    kernel_name: str | None,
    cell_timeout: int | None,
    retries: int,
) -> RunResult:
    """Execute one run into ``run_dir``, again (up to ``retries`` times) while the kernel is the
    trouble. A cell that raised is the notebook's own failure, and final; anything else (a cell
    that timed out, a kernel that died or would not start, a reply that never came) is retried."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    run_dir.mkdir(parents=True, exist_ok=True)
    parameters = {**run.parameters, "out_dir": str(run_dir)}
    start = time.perf_counter()
    errors: list[str] = []
    status = "failed"
    for attempt in range(1, retries + 2):
        try:
            papermill.execute_notebook(
                str(run.notebook),
                str(run_dir / run.notebook.name),
                parameters=parameters,
                kernel_name=kernel_name,
                cwd=str(run.notebook.parent),
                progress_bar=False,
                execution_timeout=cell_timeout,
            )
        except PapermillExecutionError as err:
            errors.append(f"cell {err.exec_count}: {err.ename}: {err.evalue}")
            break
        except Exception as err:
            errors.append(f"attempt {attempt}: {type(err).__name__}: {one_line(str(err))}")
            continue
        status = "ok"
        break
    return RunResult(
        name=run.name,
        notebook=str(run.notebook),
        parameters=run.parameters,
        status=status,
        seconds=round(time.perf_counter() - start, 1),
        error="; ".join(errors),
        summaries=collect_summaries(run_dir),
        attempts=attempt,
    )


def one_line(message: str) -> str:
    """nbclient's timeout message spans lines (with the cell's source): joined into one."""
    return " ".join(
        line.strip() for line in message.splitlines() if line.strip() and "---" not in line
    )


def finished_runs(out_dir: Path) -> dict[str, RunResult]:
    """The runs an earlier sweep into ``out_dir`` finished (whose executed notebook is there)."""
    report = out_dir / "report.json"
    if not report.is_file():
        return {}
    try:
        entries = json.loads(report.read_text())
        results = [RunResult(**entry) for entry in entries]
    except (json.JSONDecodeError, TypeError) as err:
        raise ConfigError(
            f"{report}: not a sweep report ({err}); move it away or pass --rerun"
        ) from None
    return {
        result.name: result
        for result in results
        if result.status == "ok" and (out_dir / result.name / Path(result.notebook).name).is_file()
    }


def collect_summaries(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Every ``summary.json`` under ``run_dir``, keyed by its folder (``.`` for ``run_dir``)."""
    return {
        path.parent.relative_to(run_dir).as_posix(): json.loads(path.read_text())
        for path in sorted(run_dir.glob("**/summary.json"))
    }


def write_report(results: list[RunResult], out_dir: Path) -> None:
    (out_dir / "report.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    lines = [
        "| run | status | best mAP of each training | seconds | error |",
        "| --- | --- | --- | --- | --- |",
    ]
    for result in results:
        best = ", ".join(
            f"{name} {summary['best_map']:.2f}"
            for name, summary in result.summaries.items()
            if isinstance(summary.get("best_map"), int | float)
        )
        error = result.error.replace("|", "\\|").splitlines()[0] if result.error else ""
        status = f"{result.status} (earlier sweep)" if result.reused else result.status
        if result.attempts > 1:
            status += f" ({result.attempts} attempts)"
        lines.append(f"| {result.name} | {status} | {best} | {result.seconds} | {error} |")
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
