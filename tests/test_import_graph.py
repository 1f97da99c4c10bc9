"""The arrows of the design hold in the code: no import cycle, a pure window core, and runtime, trainer
and export importing one way only (export → trainer → runtime).

Every module of the three packages is read with `ast`, never imported. `import a.b` is an edge to
a.b; `from a.b import c` is an edge to a.b.c where that is a module, else to a.b. Importing a.b.c
also runs a/__init__ and a/b/__init__, but those implicit parent-package imports are not edges.
Imports inside functions and under `if TYPE_CHECKING:` count like any other.
"""
from __future__ import annotations

import ast
import functools
import sys
from collections import deque
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("runtime", "trainer", "export")
PURE_WINDOW = "runtime.window"
ERRORS = "runtime.errors"
WINDOW_MAY_IMPORT = ("numpy",)


def module_files() -> dict[str, Path]:
    """Every module of the three packages by dotted name (a package by its own name, not `.__init__`)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The dotted names `name` imports: one of `modules` where the import names one, else as written."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(node, package)
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    found.discard(name)
    return found


def _from_base(node: ast.ImportFrom, package: str) -> str:
    """The module a `from … import` reads from, relative imports resolved against `package`."""
    if node.level == 0:
        return node.module or ""
    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(parent + ([node.module] if node.module else []))


@functools.lru_cache(maxsize=1)
def import_graph() -> dict[str, frozenset[str]]:
    """Every module and the names it imports (ours as module names, others as written)."""
    modules = module_files()
    return {name: frozenset(imported_names(name, path, modules)) for name, path in modules.items()}


def internal_edges() -> dict[str, set[str]]:
    graph = import_graph()
    return {name: {target for target in targets if target in graph} for name, targets in graph.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a path back to its first module) through each strongly connected group of modules."""
    groups = _strong_groups(edges)
    return [_cycle_through(sorted(group)[0], group, edges) for group in groups if len(group) > 1]


def _strong_groups(edges: dict[str, set[str]]) -> list[set[str]]:
    """Kosaraju: the modules that reach each other, by two depth-first passes."""
    order: list[str] = []
    seen: set[str] = set()
    for start in sorted(edges):
        _finish_order(start, edges, seen, order)
    reverse: dict[str, set[str]] = {name: set() for name in edges}
    for name, targets in edges.items():
        for target in targets:
            reverse[target].add(name)
    groups, placed = [], set()
    for start in reversed(order):
        if start not in placed:
            group = _reachable(start, reverse, placed)
            placed |= group
            groups.append(group)
    return groups


def _finish_order(start: str, edges: dict[str, set[str]], seen: set[str], order: list[str]) -> None:
    if start in seen:
        return
    seen.add(start)
    stack = [(start, iter(sorted(edges[start])))]
    while stack:
        node, targets = stack[-1]
        target = next((t for t in targets if t not in seen), None)
        if target is None:
            stack.pop()
            order.append(node)
        else:
            seen.add(target)
            stack.append((target, iter(sorted(edges[target]))))


def _reachable(start: str, edges: dict[str, set[str]], excluded: set[str]) -> set[str]:
    found, todo = {start}, [start]
    while todo:
        for target in edges[todo.pop()]:
            if target not in found and target not in excluded:
                found.add(target)
                todo.append(target)
    return found


def _cycle_through(start: str, group: set[str], edges: dict[str, set[str]]) -> list[str]:
    """The shortest path of imports from `start` back to `start` inside `group`."""
    came_from: dict[str, str] = {}
    todo = deque([start])
    while todo:
        node = todo.popleft()
        for target in sorted(edges[node] & group):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if target not in came_from:
                came_from[target] = node
                todo.append(target)
    return [start]


def imports_from(prefix: str, to: tuple[str, ...]) -> list[str]:
    """"module -> imported" for every import of a module under `prefix` into one of the packages `to`."""
    return sorted(f"{name} -> {target}" for name, targets in import_graph().items() if _under(name, prefix)
                  for target in targets if any(_under(target, package) for package in to))


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _window_may_import(target: str) -> bool:
    top = target.split(".")[0]
    return (_under(target, PURE_WINDOW) or target == ERRORS or top in WINDOW_MAY_IMPORT
            or top in sys.stdlib_module_names)


def test_the_graph_holds_every_module_of_the_three_packages() -> None:
    graph = import_graph()
    assert {"runtime.manifest", "runtime.contract", "trainer.config", "export.spec"} <= set(graph)
    assert "runtime.contract" in graph["runtime.manifest"]
    assert "runtime.preprocess.steps" in graph["runtime.contract"]


def test_there_is_no_import_cycle() -> None:
    found = cycles(internal_edges())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


def test_the_window_core_imports_numpy_and_the_standard_library_only() -> None:
    """Besides numpy and the standard library, the window core raises the project's own errors,
    whose module imports nothing beyond the standard library."""
    graph = import_graph()
    offending = sorted(f"{name} -> {target}" for name, targets in graph.items() if _under(name, PURE_WINDOW)
                       for target in targets if not _window_may_import(target))
    assert not offending, f"{PURE_WINDOW} may import only numpy, the standard library, {ERRORS} and itself:\n" + \
        "\n".join(offending)
    own = sorted(target for target in graph[ERRORS] if target.split(".")[0] not in sys.stdlib_module_names)
    assert not own, f"{ERRORS} must import nothing but the standard library, got {own}"


def test_the_runtime_never_imports_the_trainer_or_export() -> None:
    offending = imports_from("runtime", ("trainer", "export"))
    assert not offending, "the runtime installs alone:\n" + "\n".join(offending)


def test_the_trainer_never_imports_export() -> None:
    offending = imports_from("trainer", ("export",))
    assert not offending, "export imports the trainer, never the other way:\n" + "\n".join(offending)


def test_the_checker_finds_a_cycle_and_prints_it() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(edges) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
