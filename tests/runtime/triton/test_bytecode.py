"""A version's model.py compiled ahead: Python loads the bytecode without writing it again, even in
a copy whose file times differ, and nothing is written through a link."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

from runtime.triton.bytecode import compile_adapter, compile_adapters

SOURCE = "VALUE = 41 + 1\n"


def test_a_copy_imports_the_bytecode_written_ahead_and_writes_nothing(tmp_path):
    version = tmp_path / "model" / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(SOURCE)
    compile_adapters(tmp_path, ["model"])
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("model.py", "__pycache__"):           # copied without their times, as a clone would
        source = version / name
        (shutil.copytree(source, copy / name, copy_function=shutil.copy) if source.is_dir()
         else shutil.copy(source, copy / name))
    cache = copy / importlib.util.cache_from_source("model.py")
    before = (cache.read_bytes(), cache.stat().st_mtime_ns)
    done = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(copy)!r}); "
                           "import model; print(model.VALUE, model.__cached__)"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["42", str(cache)]
    assert (cache.read_bytes(), cache.stat().st_mtime_ns) == before
    (copy / "model.py").write_text("VALUE = 7\n")               # a changed source is compiled anew
    done = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(copy)!r}); "
                           "import model; print(model.VALUE)"], capture_output=True, text=True)
    assert done.stdout.split() == ["7"] and cache.read_bytes() != before[0]


def test_nothing_is_written_through_a_linked_cache_folder_or_where_nothing_compiles(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    version = tmp_path / "model" / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(SOURCE)
    (version / "__pycache__").symlink_to(outside)
    compile_adapter(version / "model.py")
    assert list(outside.iterdir()) == []
    (version / "__pycache__").unlink()
    (version / "model.py").write_text("def broken(:\n")
    compile_adapter(version / "model.py")
    assert not (version / "__pycache__").exists()


def test_a_damaged_bytecode_file_is_written_again_and_a_bytecode_prefix_is_not_followed(tmp_path, monkeypatch):
    """Bytecode whose header is right but whose rest is cut short is replaced whole; a prefix this
    process has for its own bytecode (PYTHONPYCACHEPREFIX) is not where the stub looks: the file
    goes beside model.py all the same."""
    monkeypatch.setattr(sys, "pycache_prefix", str(tmp_path / "prefix"))
    version = tmp_path / "model" / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(SOURCE)
    compile_adapter(version / "model.py")
    cache = version / "__pycache__" / f"model.{sys.implementation.cache_tag}.pyc"
    whole = cache.read_bytes()
    assert not (tmp_path / "prefix").exists()
    cache.write_bytes(whole[:20])
    compile_adapter(version / "model.py")
    assert cache.read_bytes() == whole and sorted(p.name for p in cache.parent.iterdir()) == [cache.name]
