"""nbval collects the chapters in this folder. The chapters of the shipped ``quick`` grid run in CI
through ``mlcl sweep quick`` instead (``tests/test_quick_grid.py``): the command that runs chapters
in batches, on the same defaults, so CI does not execute them twice. A chapter named on the command
line still runs under nbval: ``pytest notebooks/05_sscl.ipynb``."""

from pathlib import Path

from mlcl.sweep import load_grid

collect_ignore = sorted({run.notebook.name for run in load_grid("quick", Path(__file__).parent)})
