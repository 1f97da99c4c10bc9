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


# Where Python keeps bytecode: no file under it is part of a version (a manifest never lists one).
CACHE_DIR = "__pycache__"


def compile_adapter(model_py: Path) -> None:
    """Write model.py's bytecode where Python looks for it, unless the bytecode there is of this
    very source already (written again, its new time would be a change to a polling server). Its
    bytes do not depend on the folder (the file is named model.py in it), so a version built in a
    staging folder carries the same bytecode as one compiled where it lies. A folder this process
    cannot write, or a model.py that does not compile, is left as it is: the stub meets the same.
    So is a cache folder or file that is a link (it may lead out of the version folder)."""
    cache = Path(importlib.util.cache_from_source(str(model_py)))
    if cache.parent.is_symlink() or cache.is_symlink():
        return
    try:
        if _current(cache, model_py.read_bytes()):
            return
        py_compile.compile(str(model_py), cfile=str(cache), dfile=model_py.name, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    except (OSError, py_compile.PyCompileError):
        pass


def _current(cache: Path, source: bytes) -> bool:
    """Whether `cache` is hash-checked bytecode of `source` for this Python (PEP 552's header: magic
    number, flags with the hash and check bits set, the source's hash)."""
    try:
        with cache.open("rb") as handle:
            head = handle.read(16)
    except OSError:
        return False
    return (len(head) == 16 and head[:4] == importlib.util.MAGIC_NUMBER
            and int.from_bytes(head[4:8], "little") == 0b11 and head[8:] == importlib.util.source_hash(source))


def compile_adapters(repository: Path, names: list[str]) -> None:
    """The bytecode of every version's model.py of the named models of a repository."""
    for name in names:
        for model_py in sorted((repository / name).glob("*/model.py")):
            if model_py.parent.name.isdigit():
                compile_adapter(model_py)
