"""A test hook: named points of the engine where a test can kill the training process.

``MLCL_TEST_KILL_AT=<point>:<n>`` in the environment makes the process send itself ``SIGKILL``
the ``n``-th time it reaches ``kill_point(<point>)``: ``step`` (after an optimisation step),
``checkpoint`` (a checkpoint written to its temporary file, not yet renamed over the old one),
``eval`` (between the evaluation of the weights and of their EMA copy) and ``epoch_end`` (the
epoch's metrics line written, its checkpoint not yet). ``tests/test_kill_resume.py`` kills runs
there and checks that ``--resume`` ends with exactly the weights of an uninterrupted run. A real
kill, not an exception: no ``finally`` block or ``atexit`` handler runs, as when the machine
goes down. Without the variable (always, outside that test) a point only counts.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_reached: Counter[str] = Counter()


def kill_point(name: str) -> None:
    """Count one more arrival at point ``name``; die here if ``MLCL_TEST_KILL_AT`` says so."""
    _reached[name] += 1
    target = os.environ.get("MLCL_TEST_KILL_AT", "")
    if target and target == f"{name}:{_reached[name]}":
        os.kill(os.getpid(), signal.SIGKILL)
