"""Every chapter's shape: the first code cell is tagged ``parameters`` (papermill), the next one
is the Colab set-up cell, installing from the repository that ``_config.yml`` names."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("colab_cells", ROOT / "tools" / "colab_cells.py")
colab_cells = importlib.util.module_from_spec(spec)
spec.loader.exec_module(colab_cells)

CHAPTERS = colab_cells.chapters()


def test_every_chapter_is_found():
    assert [path.name[:2] for path in CHAPTERS] == [f"{n:02d}" for n in range(1, len(CHAPTERS) + 1)]
    assert len(CHAPTERS) >= 9


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda path: path.stem)
def test_parameters_then_the_colab_cell(path):
    code = [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "first code cell: parameters"
    url, branch = colab_cells.repository()
    assert code[1].source == colab_cells.colab_cell_source(url, branch), (
        f"{path.name}: run `make colab-cells` after changing repository.url in _config.yml"
    )
    assert {"colab-setup", "hide-cell"} <= set(code[1].metadata["tags"])


def test_a_stale_cell_is_rewritten(tmp_path):
    source = colab_cells.colab_cell_source("https://github.com/someone/fork", "dev")
    copy = tmp_path / CHAPTERS[0].name
    copy.write_bytes(CHAPTERS[0].read_bytes())
    assert colab_cells.update(copy, source, write=True)
    assert not colab_cells.update(copy, source, write=False)  # now current
    cells = nbformat.read(copy, as_version=4).cells
    tagged = [cell for cell in cells if "colab-setup" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1 and "someone/fork@dev" in tagged[0].source
