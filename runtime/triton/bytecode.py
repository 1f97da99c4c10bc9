"""The bytecode of a version's model.py, written beside it before a server loads it.

The Python backend's stub compiles model.py on its first load and writes the result into the version
folder (`__pycache__/`). A server that polls its repository sees that write as a changed version and
loads the version a second time. Written ahead, hash-checked (valid whatever the files' times after a
copy or a clone; Python writes it anew where model.py changes), the stub finds it and writes nothing.
"""
from __future__ import annotations

import os
import py_compile
import sys
import tempfile
from pathlib import Path


# Where Python keeps bytecode: no file under it is part of a version (a manifest never lists one).
CACHE_DIR = "__pycache__"


def compile_adapter(model_py: Path) -> None:
    """Write model.py's bytecode where the stub looks for it (`__pycache__/` beside it, whatever
    prefix this process has for its own bytecode), unless the file there holds these very bytes
    already: written again, its new time would be a change to a polling server, and a file whose
    header alone is right (cut short, or altered past it) would be run by Python as it is. The bytes
    do not depend on the folder (the file is named model.py in them), so a version built in a
    staging folder carries the same bytecode as one compiled where it lies. A folder this process
    cannot write, or a model.py that does not compile, is left as it is: the stub meets the same.
    So is a cache folder or file that is a link (it may lead out of the version folder)."""
    tag = sys.implementation.cache_tag
    cache = model_py.parent / CACHE_DIR / f"{model_py.stem}.{tag}.pyc"
    if tag is None or cache.parent.is_symlink() or cache.is_symlink():
        return
    try:
        data = _bytecode(model_py)
        if cache.is_file() and cache.read_bytes() == data:
            return
        cache.parent.mkdir(exist_ok=True)
        partial = cache.with_name(f".{cache.name}.{os.getpid()}.partial")
        try:
            partial.write_bytes(data)
            os.replace(partial, cache)
        finally:
            partial.unlink(missing_ok=True)
    except (OSError, py_compile.PyCompileError):
        pass


def _bytecode(model_py: Path) -> bytes:
    """model.py's hash-checked bytecode, as Python would write it, compiled in a folder of its own."""
    with tempfile.TemporaryDirectory(prefix="medflow-bytecode-") as work:
        compiled = Path(work) / "model.pyc"
        py_compile.compile(str(model_py), cfile=str(compiled), dfile=model_py.name, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
        return compiled.read_bytes()


def compile_adapters(repository: Path, names: list[str]) -> None:
    """The bytecode of every version's model.py of the named models of a repository."""
    for name in names:
        for model_py in sorted((repository / name).glob("*/model.py")):
            if model_py.parent.name.isdigit():
                compile_adapter(model_py)
