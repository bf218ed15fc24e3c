"""The book renders with warnings as errors, from the outputs stored in the chapters.

Executing the chapters is the job of the nbval run (and of `make book`); this test checks the
rest of the build: the table of contents, MyST syntax, cross-references and citations.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_book_builds_without_warnings(tmp_path):
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    config_file = tmp_path / "_config.yml"
    config_file.write_text(yaml.safe_dump(config))
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    result = subprocess.run(
        [
            str(jupyter_book),
            "build",
            str(ROOT),
            "--config",
            str(config_file),
            "--path-output",
            str(tmp_path),
            "--warningiserror",
            "--keep-going",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    chapters = [entry["file"] for part in toc["parts"] for entry in part["chapters"]]
    for chapter in chapters:
        assert (tmp_path / "_build" / "html" / f"{chapter}.html").is_file(), chapter
