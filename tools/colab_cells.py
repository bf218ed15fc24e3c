"""Write the Colab set-up cell into every chapter, from the one repository address in _config.yml.

Each chapter's cell right after its ``parameters`` cell installs mlcl when the notebook runs in
Google Colab (opened through the book's launch button, nothing of the repository is on the
runtime) and does nothing anywhere else. The address it installs from is ``repository.url`` in
``_config.yml``, the same setting the launch buttons use; after changing it (a fork), run

    python tools/colab_cells.py          # or: make colab-cells

to rewrite the cells. Only that cell changes: the stored outputs of the chapters stay as they are.
``--check`` exits non-zero, naming the chapters, when a cell is missing or out of date.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
TAG = "colab-setup"

CELL = """\
# In Google Colab: install mlcl from the repository (a minute; Colab's PyTorch is kept).
# Anywhere else this cell does nothing.
import importlib.util
import sys

if "google.colab" in sys.modules and importlib.util.find_spec("mlcl") is None:
    %pip install --quiet "mlcl @ git+{url}@{branch}"
"""


def repository(config_file: Path = ROOT / "_config.yml") -> tuple[str, str]:
    """(url, branch) of ``repository`` in the book's configuration."""
    config = yaml.safe_load(config_file.read_text())
    repo = config.get("repository") or {}
    if not repo.get("url"):
        raise SystemExit(f"{config_file}: repository.url is not set")
    return repo["url"].rstrip("/"), repo.get("branch", "main")


def colab_cell_source(url: str, branch: str) -> str:
    return CELL.format(url=url, branch=branch).rstrip("\n")


def chapters(notebook_dir: Path = ROOT / "notebooks") -> list[Path]:
    return sorted(notebook_dir.glob("[0-9][0-9]_*.ipynb"))


def update(path: Path, source: str, write: bool) -> bool:
    """Put the Colab cell right after the ``parameters`` cell of ``path``; True if it changed."""
    notebook = nbformat.read(path, as_version=4)
    cells = notebook.cells
    first_code = next(i for i, cell in enumerate(cells) if cell.cell_type == "code")
    if "parameters" not in cells[first_code].metadata.get("tags", []):
        raise SystemExit(f"{path}: the first code cell is not tagged 'parameters'")
    existing = next(
        (i for i, cell in enumerate(cells) if TAG in cell.metadata.get("tags", [])), None
    )
    if existing == first_code + 1 and cells[existing].source == source:
        return False
    if existing is not None:
        del cells[existing]
    cell = nbformat.v4.new_code_cell(source)
    # hide-cell: the rendered page shows a collapsed "set-up" toggle instead of the code.
    cell.metadata["tags"] = [TAG, "hide-cell"]
    cells.insert(first_code + 1, cell)
    if write:
        nbformat.write(notebook, path)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale chapters")
    args = parser.parse_args(argv)
    source = colab_cell_source(*repository())
    stale = [path.name for path in chapters() if update(path, source, write=not args.check)]
    if args.check and stale:
        print(f"Colab cell missing or stale in: {', '.join(stale)} (run tools/colab_cells.py)")
        return 1
    print(f"{'rewrote' if stale else 'up to date:'} {', '.join(stale) or 'every chapter'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
