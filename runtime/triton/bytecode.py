"""The bytecode of a version's model.py, written beside it before a server loads it.

The Python backend's stub compiles model.py on its first load and writes the result into the version
folder (`__pycache__/`). A server that polls its repository sees that write as a changed version and
loads the version a second time. Written ahead, hash-checked (valid whatever the files' times after a
copy or a clone; Python writes it anew where model.py changes), the stub finds it and writes nothing.
"""
from __future__ import annotations

import importlib.util
import py_compile
from pathlib import Path


def compile_adapter(model_py: Path) -> None:
    """Write model.py's bytecode where Python looks for it. A folder this process cannot write, or a
    model.py that does not compile, is left as it is: the stub meets the same. So is a cache folder
    or file that is a link (it may lead out of the version folder)."""
    cache = Path(importlib.util.cache_from_source(str(model_py)))
    if cache.parent.is_symlink() or cache.is_symlink():
        return
    try:
        py_compile.compile(str(model_py), cfile=str(cache), doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    except (OSError, py_compile.PyCompileError):
        pass


def compile_adapters(repository: Path, names: list[str]) -> None:
    """The bytecode of every version's model.py of the named models of a repository."""
    for name in names:
        for model_py in sorted((repository / name).glob("*/model.py")):
            if model_py.parent.name.isdigit():
                compile_adapter(model_py)
