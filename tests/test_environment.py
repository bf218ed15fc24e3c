"""environment.yml (conda, for readers) and pyproject.toml (pip, for everyone) must agree.

The rule: every runtime dependency in pyproject's ``[project] dependencies`` is a conda package in
environment.yml, under its conda name (torch is ``pytorch``) and with exactly pyproject's version
specifier; the ``dev`` extra is installed by the one pip entry, ``-e .[dev]``; and environment.yml
lists nothing else besides ``python`` (with pyproject's ``requires-python``) and ``pip``.
"""

from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"torch": "pytorch"}  # pip name -> conda-forge name, where they differ
CONDA_ONLY = {"python", "pip"}


@pytest.fixture(scope="module")
def pyproject():
    with open(ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]


@pytest.fixture(scope="module")
def environment():
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def conda_requirements(environment) -> dict[str, Requirement]:
    """The conda dependencies (not the pip section), parsed, by canonical name."""
    requirements = {}
    for entry in environment["dependencies"]:
        if isinstance(entry, dict):
            continue
        requirement = Requirement(entry)
        name = canonicalize_name(requirement.name)
        assert name not in requirements, f"environment.yml lists {name} twice"
        requirements[name] = requirement
    return requirements


def pip_entries(environment) -> list[str]:
    sections = [entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict)]
    assert len(sections) == 1, "environment.yml needs exactly one pip: section"
    return sections[0]


def test_environment_is_named_and_uses_conda_forge(environment):
    assert environment["name"] == "mlcl"
    assert environment["channels"] == ["conda-forge"]


def test_every_runtime_dependency_is_a_conda_package_with_the_same_bound(pyproject, environment):
    conda = conda_requirements(environment)
    for line in pyproject["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(CONDA_NAMES.get(requirement.name, requirement.name))
        assert name in conda, f"environment.yml lacks {name} (pyproject: {line})"
        assert conda[name].specifier == requirement.specifier, (
            f"environment.yml has {conda[name]}, pyproject has {line}"
        )


def test_environment_lists_nothing_unknown_to_pyproject(pyproject, environment):
    runtime = {
        canonicalize_name(CONDA_NAMES.get(Requirement(line).name, Requirement(line).name))
        for line in pyproject["dependencies"]
    }
    unknown = set(conda_requirements(environment)) - runtime - CONDA_ONLY
    assert not unknown, f"environment.yml lists packages pyproject does not: {sorted(unknown)}"


def test_python_bound_matches_requires_python(pyproject, environment):
    python = conda_requirements(environment)["python"]
    assert python.specifier == SpecifierSet(pyproject["requires-python"])
    assert "pip" in conda_requirements(environment)


def test_dev_extra_comes_from_the_pip_entry(pyproject, environment):
    assert "dev" in pyproject["optional-dependencies"]
    assert pip_entries(environment) == ["-e .[dev]"]
