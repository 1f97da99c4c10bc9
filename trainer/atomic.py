"""A run's small files (run.json, config.yaml, splits.csv, summary.csv) replaced whole: written to a
temporary file of the writer's own beside the target and renamed over it, so that jobs of one run
writing at once (the folds of a SLURM array) never share a temporary file, and a reader never sees
half a file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def replace_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path`, replacing it whole."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            out.write(text)
        os.chmod(name, 0o666 & ~_umask())
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
