"""A run's small files (run.json, config.yaml, splits.csv, summary.csv) replaced whole: written to a
temporary file of the writer's own beside the target and renamed over it, so that jobs of one run
writing at once (the folds of a SLURM array) never share a temporary file, and a reader never sees
half a file."""
from __future__ import annotations

import os
import secrets
from pathlib import Path


def replace_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path`, replacing it whole; the file gets the mode the umask gives."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
