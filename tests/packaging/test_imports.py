"""The import promises of the layout: the code is imported only as `exitguard.*`, never as the source
folders' own names (`engine`, `states`), and no project module takes part in an import cycle."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = {REPO / "engine": "exitguard", REPO / "states": "exitguard.states"}
"""Each source folder and the package it installs as (pyproject.toml's package-dir)."""


# -- no bare `engine` / `states` -------------------------------------------------------------------

IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil, sys

import exitguard
import exitguard.states

def fail(name):
    raise SystemExit(f"cannot walk {name}")

# exitguard.states is walked on its own: in an editable install it maps to states/, outside exitguard.__path__.
packages = (exitguard, exitguard.states)
names = sorted({package.__name__ for package in packages}
               | {info.name for package in packages
                  for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".", onerror=fail)})
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names, "modules": sorted(sys.modules)}))
"""


@pytest.mark.parametrize("name", ["engine", "engine.exits", "states", "states.table"])
def test_a_source_folder_imported_by_its_own_name_is_refused(name: str) -> None:
    with pytest.raises(ImportError, match=r"import exitguard\S* instead of"):
        importlib.import_module(name)


def test_every_module_imports_from_the_repository_root_without_a_bare_engine_or_states() -> None:
    # The root is first on sys.path here (`python -c` in cwd), as under `python -m pytest`: a stray
    # `import engine` would succeed and load a second copy of the code.
    done = subprocess.run([sys.executable, "-c", IMPORT_EVERY_MODULE], cwd=REPO, capture_output=True, text=True,
                          timeout=120)

    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert set(seen["imported"]) >= set(module_files().values())
    bare = [name for name in seen["modules"] if name.partition(".")[0] in ("engine", "states")]
    assert bare == [], f"imported by their folder names instead of as exitguard.*: {bare}"


# -- no import cycle ---------------------------------------------------------------------------------

def module_files() -> dict[Path, str]:
    """Every .py under the source folders -> its module name under `exitguard`."""
    modules = {}
    for folder, package in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[path] = ".".join([package, *parts])
    return modules


def imported_modules(path: Path, module: str, known: set[str]) -> Iterator[str]:
    """The project modules `module` imports anywhere in its file: at the top, in functions and under
    `if TYPE_CHECKING:`. `from exitguard.a import b` is the module exitguard.a.b if there is one, else
    exitguard.a; the parent packages Python imports on the way are not counted."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.partition(".")[0] == "exitguard":
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = ".".join([*base, *filter(None, [node.module])])
            else:
                source = node.module or ""
            if source.partition(".")[0] != "exitguard":
                continue
            for alias in node.names:
                target = f"{source}.{alias.name}"
                yield target if target in known else source


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files.values())
    return {module: {target for target in imported_modules(path, module, known) if target != module}
            for path, module in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a, b, ..., a) through each strongly connected part of the graph with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    parts: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            part = set()
            while True:
                member = stack.pop()
                part.add(member)
                if member == node:
                    break
            if len(part) > 1:
                parts.append(part)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [cycle_through(min(part), part, graph) for part in parts]


def cycle_through(start: str, part: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from `start` back to itself inside `part` (breadth first)."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(graph[node] & part):
            if target == start:
                return [*paths[node], start]
            if target not in paths:
                paths[target] = [*paths[node], target]
                queue.append(target)
    raise AssertionError(f"no cycle through {start}")  # a strongly connected part always has one


def test_the_import_graph_sees_function_local_and_type_checking_imports(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import exitguard.clock\n"
        "from exitguard.exchange import port\n"
        "from exitguard.states import SellPermit\n"
        "from . import retry\n"
        "if TYPE_CHECKING:\n"
        "    from exitguard.exits import ExitEngine\n"
        "def later():\n"
        "    from exitguard.journal.store import Journal\n",
        encoding="utf-8")
    known = {"exitguard.clock", "exitguard.exchange", "exitguard.exchange.port", "exitguard.states",
             "exitguard.retry", "exitguard.exits", "exitguard.journal", "exitguard.journal.store"}

    found = set(imported_modules(source, "exitguard.mod", known))

    assert found == {"exitguard.clock", "exitguard.exchange.port", "exitguard.states", "exitguard.retry",
                     "exitguard.exits", "exitguard.journal.store"}


def test_cycles_names_each_cycle_once() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d", "a"}, "f": {"a"}}

    assert sorted(cycles(graph)) == [["a", "b", "c", "a"], ["d", "e", "d"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_the_project_modules() -> None:
    found = cycles(import_graph())

    assert found == [], "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)
