"""Every bad input is one line that names the key or the file, never a traceback.

The configuration half walks the dataclasses of every section and of every registered method's
options, and gives each key a value of the wrong type and, where the field declares a range
(:func:`mlcl.config.ranged`), a value just outside it. The command-line half hands every command
that reads a file a missing file, an empty one and one of the wrong kind.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Literal

import pytest

from mlcl.cli import main
from mlcl.config import DataConfig, ModelConfig, OptimConfig, Range, RunConfig, load_config
from mlcl.errors import ConfigError
from mlcl.methods import get_method_class, method_names, resolve_config

SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "run": RunConfig}


def _keys() -> list[tuple[str, dict[str, Any], dataclasses.Field, Any]]:
    """(dotted key, the overrides it needs besides itself, field, type) of every key (the
    methods tests register for themselves left out)."""
    keys = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for spec in dataclasses.fields(cls):
            keys.append((f"{section}.{spec.name}", {}, spec, hints[spec.name]))
    for method in (name for name in method_names() if not name.startswith("test-")):
        options = get_method_class(method).Options
        hints = typing.get_type_hints(options)
        for spec in dataclasses.fields(options):
            keys.append((f"method.{spec.name}", {"model.method": method}, spec, hints[spec.name]))
    return keys


def _wrong_type(hint: Any) -> Any:
    """A value that is not of type ``hint``."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "not-one-of-the-choices"
    if origin in (tuple, list, dict):
        return "not-a-container"
    if origin in (typing.Union, types.UnionType):
        return object.__name__ if str not in typing.get_args(hint) else 3.5
    return {bool: 1, int: "many", float: "fast", str: 5}[hint]


def _outside(allowed: Range, integer: bool) -> list[float]:
    """Values just outside ``allowed``, on each bounded side."""
    step = 1 if integer else 0.5
    values = [allowed.low if allowed.low_open else allowed.low - step]
    if math.isfinite(allowed.high):
        values.append(allowed.high if allowed.high_open else allowed.high + step)
    return [int(value) for value in values] if integer else values


def _ids(cases):
    return [f"{case[1].get('model.method', '')}:{case[0]}={case[-1]!r}" for case in cases]


WRONG_TYPES = [(key, needs, _wrong_type(hint)) for key, needs, spec, hint in _keys()]
OUT_OF_RANGE = []
for key, needs, spec, hint in _keys():
    allowed = spec.metadata.get("range")
    if allowed is None:
        continue
    arity = len(typing.get_args(hint)) if typing.get_origin(hint) is tuple else 0
    for value in _outside(allowed, integer=hint is int):
        OUT_OF_RANGE.append((key, needs, [value] * arity if arity else value))


def test_every_number_of_the_configuration_declares_its_range():
    unranged = [key for key, _, spec, hint in _keys() if hint in (int, float)]
    unranged = [key for key, _, spec, hint in _keys() if key in unranged and not spec.metadata]
    assert unranged == []


@pytest.mark.parametrize(("key", "needs", "value"), WRONG_TYPES, ids=_ids(WRONG_TYPES))
def test_a_value_of_the_wrong_type_names_the_key(key, needs, value):
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}: "):
        resolve_config(load_config(None, {**needs, key: value}))


@pytest.mark.parametrize(("key", "needs", "value"), OUT_OF_RANGE, ids=_ids(OUT_OF_RANGE))
def test_a_value_out_of_range_names_the_key_and_the_range(key, needs, value):
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}: must be "):
        resolve_config(load_config(None, {**needs, key: value}))


# --------------------------------------------------------------------------- files on the CLI


def _bad_files(tmp_path, suffix: str) -> dict[str, Any]:
    """A missing file, an empty one, and one of the wrong kind (binary where text is read,
    YAML text where a checkpoint is read)."""
    empty = tmp_path / f"empty{suffix}"
    empty.touch()
    wrong = tmp_path / f"wrong{suffix}"
    if suffix == ".pt":
        wrong.write_text("run:\n  epochs: 2\n")
    else:
        wrong.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    return {"missing": tmp_path / f"missing{suffix}", "empty": empty, "wrong kind": wrong}


COMMANDS = {
    "train": (lambda path: ["train", "--config", str(path)], ".yaml"),
    "bench": (lambda path: ["bench", "--config", str(path)], ".yaml"),
    "evaluate": (lambda path: ["evaluate", "--checkpoint", str(path)], ".pt"),
    "sweep": (lambda path: ["sweep", str(path)], ".yaml"),
}


@pytest.mark.parametrize("case", ["missing", "empty", "wrong kind"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_bad_file_is_one_line_on_stderr(tmp_path, capsys, command, case):
    arguments, suffix = COMMANDS[command]
    path = _bad_files(tmp_path, suffix)[case]
    assert main(arguments(path)) != 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert err.count("\n") == 1 and err.startswith("mlcl: error: "), err
    assert str(path) in err


@pytest.mark.parametrize("case", ["missing", "empty", "a file"])
def test_data_check_of_a_bad_root_fails_and_names_it(tmp_path, capsys, case):
    """``data check`` reports its findings on stdout (a report, not an error line)."""
    root = tmp_path / "root"
    if case == "empty":
        root.mkdir()
    elif case == "a file":
        root.write_text("not a folder")
    assert main(["data", "check", "coco2014", "--root", str(root)]) != 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert str(root) in out
