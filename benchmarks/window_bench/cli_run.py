"""`runtime predict ... --output` as a new process, on the runtime being timed (the checkout its
`runtime` package was imported from, which may be an older one put on PYTHONPATH)."""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Sequence

import SimpleITK as sitk

from window_bench.timing import Labels


def runtime_root() -> Path:
    """The folder that holds the imported `runtime` package."""
    import runtime

    return Path(runtime.__file__).resolve().parents[1]


def cli_target(root: Path) -> str:
    """`module:function` of the `runtime` command: from the checkout's pyproject.toml, else from
    the installed distribution's entry points."""
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        scripts = tomllib.loads(pyproject.read_text()).get("project", {}).get("scripts", {})
        if "runtime" in scripts:
            return str(scripts["runtime"])
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name="runtime")
    return str(entry.value)


def cli_command(inputs: Sequence[Path], model_dir: Path, output: Path, threads: int, device: str,
                target: str) -> list[str]:
    module, function = target.split(":")
    return [sys.executable, "-c", f"from {module} import {function}; {function}()", "predict",
            *map(str, inputs), "--model", str(model_dir), "--output", str(output), "--device", device,
            "--threads", str(threads), "--quiet"]


def cli_run(inputs: Sequence[Path], model_dir: Path, output: Path, threads: int, device: str,
            xdg_cache: Path) -> tuple[float, Labels]:
    """Seconds of the whole command as a fresh process (start, imports, model load, the run, the
    write) and the label map it wrote."""
    root = runtime_root()
    command = cli_command(inputs, model_dir, output, threads, device, cli_target(root))
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "XDG_CACHE_HOME": str(xdg_cache), "PYTHONPATH": path}
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=root, env=env, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    return seconds, sitk.GetArrayFromImage(sitk.ReadImage(str(output)))
