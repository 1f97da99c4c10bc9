"""Checks for decoded JSON or YAML documents that report every problem at once, each with its location.

A `Problems` collector gathers "location: what is wrong" lines while a document is read; the
reader raises one error listing them all at the end. Locations are dotted key paths
(`window.overlap`, `classes[0].name`); the empty location means the document itself.
"""
from __future__ import annotations

from collections import Counter

import math
from pathlib import Path
from typing import Any, Sequence

from runtime.errors import InputError, MedflowError


class Problems:
    """Collects every problem found in one document (a manifest, a spec, a config)."""

    def __init__(self, document: str) -> None:
        self.document = document
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        """Record one problem; `where` is a dotted key path, "" for the document itself."""
        self.items.append(f"{where or self.document}: {what}")

    def raise_if_any(self, error: type[MedflowError], prefix: str, suffix: str = "") -> None:
        """Raise `error` with every problem joined by "; " between `prefix` and `suffix`, if there are any."""
        if self.items:
            raise error(f"{prefix}{'; '.join(self.items)}{suffix}")


def join_key(where: str, key: Any) -> str:
    """The location of `key` inside the value at `where`."""
    return f"{where}.{key}" if where else str(key)


def is_int(value: Any) -> bool:
    """An integer, and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float, and not a bool; an integer too large for a float (JSON allows
    thousands of digits) is not one."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def choice(value: Any, options: tuple[str, ...], where: str, problems: Problems) -> str | None:
    """`value` when it is one of `options`; otherwise record the problem and return None."""
    if value not in options:
        problems.add(where, f"must be one of {', '.join(options)}, got {value!r}")
        return None
    return str(value)


def check_keys(data: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = (), *,
               problems: Problems) -> bool:
    """Record a non-mapping, unknown keys and missing keys; True when `data` is a mapping with every required key."""
    if not isinstance(data, dict):
        problems.add(where, f"must be a mapping of keys, got {data!r}")
        return False
    known = required + optional
    for key in data:
        if key not in known:
            problems.add(join_key(where, key), f"unknown key; known keys are {', '.join(known)}")
    missing = [key for key in required if key not in data]
    for key in missing:
        problems.add(join_key(where, key), "missing")
    return not missing


def resolves_inside(folder: Path, name: str) -> bool:
    """Whether `folder / name`, every link on the way followed, still lies inside `folder`; a loop of
    links lies nowhere."""
    try:
        return (folder / name).resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # RuntimeError: a loop of links
        return False


# A table of subjects or slides: a million rows of 64 bytes. Reading one builds Python objects of
# several times its size, so a larger file is refused before it is read.
MAX_TABLE_BYTES = 64 * 1024 * 1024


def check_table_size(path: Path) -> None:
    """Refuse a CSV table larger than MAX_TABLE_BYTES before reading it (one missing or unreadable
    is left for its reader to name)."""
    try:
        size = Path(path).stat().st_size
    except OSError:
        return
    if size > MAX_TABLE_BYTES:
        raise InputError(f"{path} is {size:,} bytes, more than the {MAX_TABLE_BYTES:,} a table of subjects or "
                         "slides holds; check that it is the right file, or split it.")


def repeated_columns(header: Sequence[str]) -> list[str]:
    """The column names a CSV header holds more than once (surrounding spaces aside), in order."""
    names = [name.strip() for name in header]
    counts = Counter(names)
    return list(dict.fromkeys(name for name in names if counts[name] > 1))


def is_number_name(text: str) -> bool:
    """Whether `text` is a whole number written in ASCII digits only (str.isdigit also takes "²",
    which int() refuses)."""
    return text.isascii() and text.isdigit()


def channel_files(paths: Sequence[Path]) -> tuple[Path, ...]:
    """The files the channel columns of a subjects table name, a file named in consecutive columns
    once: an RGB file named in the red, green and blue columns is one file that gives those three
    channels."""
    return tuple(path for index, path in enumerate(paths) if index == 0 or path != paths[index - 1])
