"""The package's modules import each other one way: no cycle among module-level imports.

Imports inside functions (the CLI's lazy ones) and under ``TYPE_CHECKING`` are left out: they do
not run when a module is imported. ``from package import name`` counts as importing the
package's ``__init__``; ``from package.module import name`` as importing that module only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mlcl

ROOT = Path(mlcl.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level_imports(tree: ast.Module, modules: set[str]) -> list[str]:
    """Names of the ``mlcl`` modules (of ``modules``) ``tree`` imports when it is imported."""
    names = []
    for node in tree.body:  # module level only: functions' imports run later, if at all
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.Import):
                names += [alias.name for alias in inner.names]
            elif isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                for alias in inner.names:  # `from mlcl.methods import spml` is a submodule
                    submodule = f"{inner.module}.{alias.name}"
                    names.append(submodule if submodule in modules else inner.module)
            if isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef):
                break
    return [name for name in names if name.split(".")[0] == "mlcl"]


def _import_graph() -> dict[str, set[str]]:
    paths = {_module_name(path): path for path in ROOT.rglob("*.py")}
    return {
        name: set(_module_level_imports(ast.parse(path.read_text(encoding="utf-8")), set(paths)))
        for name, path in paths.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, found by depth-first search (each reported once per entry point)."""
    found, done = [], set()

    def visit(module: str, stack: list[str]) -> None:
        if module in stack:
            found.append([*stack[stack.index(module) :], module])
            return
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            # A package's __init__ importing its own submodules is how registration works.
            if imported.startswith(module + "."):
                continue
            visit(imported, [*stack, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return found


def test_no_import_cycle_inside_mlcl():
    assert _cycles(_import_graph()) == []


def test_the_search_finds_a_cycle():
    """The check itself: a graph with a cycle is reported."""
    graph = {"mlcl.config": {"mlcl.methods"}, "mlcl.methods": {"mlcl.config"}}
    assert _cycles(graph) == [["mlcl.config", "mlcl.methods", "mlcl.config"]]


def test_the_configuration_imports_no_method():
    assert not {m for m in _import_graph()["mlcl.config"] if m.startswith("mlcl.methods")}
