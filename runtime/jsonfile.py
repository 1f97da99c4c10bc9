"""JSON files read with their size checked before a byte is decoded: a missing file, a folder, a
device, one larger than its kind may be, or one that is not JSON is refused with a reason that the
caller puts in its own one-line message (naming the file and its remedy)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class Unreadable(ValueError):
    """Why a JSON file was not read: its `reason`, one short phrase, and its `kind`: "missing" (no
    file, or not a regular one), "large" (more bytes than its kind may hold) or "invalid" (not
    readable, not UTF-8 JSON)."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.reason, self.kind = reason, kind


def read_json(path: Path, limit: int, strict: bool = False) -> Any:
    """The decoded JSON of `path`, at most `limit` bytes (UTF-8, a byte-order mark allowed); with
    `strict`, NaN and Infinity, which JSON does not hold, are refused too. Unreadable otherwise."""
    path = Path(path)
    if not path.is_file():
        raise Unreadable("no such file" if not path.exists() else "not a regular file", "missing")
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > limit:
                raise Unreadable(f"{size:,} bytes, more than the {limit:,} such a file may hold", "large")
            raw = handle.read(limit + 1)
    except OSError as error:
        raise Unreadable(f"cannot be read ({error.strerror or error})", "invalid") from None
    if len(raw) > limit:
        raise Unreadable(f"more than the {limit:,} bytes such a file may hold", "large")
    try:
        return json.loads(raw.decode("utf-8-sig"), parse_constant=_refused if strict else None)
    except RecursionError:
        raise Unreadable("not JSON (nested too deep)", "invalid") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise Unreadable(f"not JSON ({_short(' '.join(str(error).split()))})", "invalid") from None


def _refused(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON holds")


def _short(text: str, length: int = 100) -> str:
    return text if len(text) <= length else text[:length - 3] + "..."
