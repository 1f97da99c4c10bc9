"""JSON files read with their size checked before a byte is decoded: a missing file, a folder, a
device, one larger than its kind may be, or one that is not JSON is refused with a reason that the
caller puts in its own one-line message (naming the file and its remedy)."""
from __future__ import annotations

import json
import os
import stat
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
    raw = read_bytes(path, limit)
    try:
        return json.loads(raw.decode("utf-8-sig"), parse_constant=_refused if strict else None)
    except RecursionError:
        raise Unreadable("not JSON (nested too deep)", "invalid") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise Unreadable(f"not JSON ({_short(' '.join(str(error).split()))})", "invalid") from None


def read_bytes(path: Path, limit: int) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them, its size checked before it is
    read (and again as it is read: a file that grows meanwhile); Unreadable otherwise."""
    path = Path(path)
    try:                                        # non-blocking: a pipe put in the file's place must not hang
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise Unreadable("no such file", "missing") from None
    except OSError as error:
        raise Unreadable(f"cannot be read ({error.strerror or error})", "invalid") from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise Unreadable("not a regular file", "missing")
        if status.st_size > limit:
            raise Unreadable(f"{status.st_size:,} bytes, more than the {limit:,} such a file may hold", "large")
        raw = _read(descriptor, limit + 1)
    finally:
        os.close(descriptor)
    if len(raw) > limit:
        raise Unreadable(f"more than the {limit:,} bytes such a file may hold", "large")
    return raw


def _read(descriptor: int, most: int) -> bytes:
    """At most `most` bytes of an open regular file."""
    chunks, left = [], most
    try:
        while left > 0 and (chunk := os.read(descriptor, min(left, 2**20))):
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as error:
        raise Unreadable(f"cannot be read ({error.strerror or error})", "invalid") from None
    return b"".join(chunks)


def _refused(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON holds")


def _short(text: str, length: int = 100) -> str:
    return text if len(text) <= length else text[:length - 3] + "..."
