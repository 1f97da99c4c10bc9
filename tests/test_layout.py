"""The tests mirror the packages: each test module sits in the folder of the package it tests, and no
test module imports another (what several of them share lives in a kit: tests/modelkit.py, …).

Test files are read with `ast`, never imported."""
from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

from tests.conftest import REPO

TESTS = REPO / "tests"
PACKAGES = ("runtime", "trainer", "export")
ROOT_MODULES = ("test_import_graph.py", "test_layout.py", "test_no_torch.py")


def python_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def imported_modules(source: str, package: list[str]) -> set[str]:
    """The dotted names `source` imports, relative imports resolved against `package` (its folder's parts)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package[:len(package) - node.level + 1] if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            found.update({base} | {f"{base}.{alias.name}" for alias in node.names})
    return found


def is_test_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "tests" and any(part.startswith("test_") for part in parts)


def imports_of_tests(path: Path) -> list[str]:
    return sorted(filter(is_test_module, imported_modules(path.read_text(encoding="utf-8"),
                                                          list(path.relative_to(REPO).parent.parts))))


def test_no_test_module_imports_another() -> None:
    imports = {str(path.relative_to(REPO)): imports_of_tests(path) for path in python_files()}
    assert {file: names for file, names in imports.items() if names} == {}


def test_the_import_reader_finds_test_modules_however_they_are_imported() -> None:
    source = ("from tests.runtime.test_manifest import make\nimport tests.test_no_torch\n"
              "from tests.trainer import test_splits\nfrom . import test_predict\nfrom .io.test_write import x\n"
              "from tests.modelkit import blob_volume\nfrom torch.testing import assert_close\n")
    assert sorted(filter(is_test_module, imported_modules(source, ["tests", "runtime"]))) == [
        "tests.runtime.io.test_write", "tests.runtime.io.test_write.x", "tests.runtime.test_manifest",
        "tests.runtime.test_manifest.make", "tests.runtime.test_predict", "tests.test_no_torch",
        "tests.trainer.test_splits"]


def test_every_test_module_sits_under_a_package_it_tests() -> None:
    misplaced = []
    for path in python_files():
        if not path.name.startswith("test_"):
            continue
        folder = path.parent.relative_to(TESTS)
        if folder == Path("."):
            placed = path.name in ROOT_MODULES
        else:
            placed = folder.parts[0] in PACKAGES and (REPO / folder / "__init__.py").is_file()
        if not placed:
            misplaced.append(str(path.relative_to(REPO)))
    assert misplaced == []


def test_every_test_folder_is_a_package_and_module_names_are_unique() -> None:
    folders = {path.parent for path in python_files()}
    assert sorted(str(f.relative_to(REPO)) for f in folders if not (f / "__init__.py").is_file()) == []
    names = Counter(path.name for path in python_files() if path.name.startswith("test_"))
    assert [name for name, count in names.items() if count > 1] == []
