"""NRRD headers (.nrrd with its data attached, .nhdr beside a data file), read and checked before
ITK reads the file.

The header is text: a magic line (NRRD0001 … NRRD0005), then `field: value` lines up to a blank
line (or the end of a .nhdr). Read here: dimension, type, sizes, encoding, spacings or space
directions, kinds, byte skip, line skip and data file. A value no valid file holds is refused
with its field named; the data a valid header describes is checked by `runtime.io.streams`.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from runtime.errors import InputError
from runtime.io.header import (
    MAX_TEXT_HEADER, Header, Stream, check_finite, check_sizes, check_spacing, inside, refuse, text_head,
)

_TYPES = {
    "i1": ("signed char", "int8", "int8_t"),
    "u1": ("uchar", "unsigned char", "uint8", "uint8_t"),
    "i2": ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    "u2": ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    "i4": ("int", "signed int", "int32", "int32_t"),
    "u4": ("uint", "unsigned int", "uint32", "uint32_t"),
    "i8": ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t"),
    "u8": ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    "f4": ("float",),
    "f8": ("double",),
}
_TYPE_CODES = {name: code for code, names in _TYPES.items() for name in names}
_ENCODINGS = {"raw": "raw", "gzip": "gzip", "gz": "gzip"}
_MAGIC = re.compile(rb"^NRRD000[1-5]$")


def is_nrrd(path: Path) -> bool:
    return path.name.lower().endswith((".nrrd", ".nhdr"))


def _read_header(path: Path) -> tuple[dict[str, str], int]:
    """The header's fields (names lower case) and the byte offset just past the header."""
    text = text_head(path)
    lines, position = text.split(b"\n"), 0
    if not _MAGIC.match(lines[0].rstrip(b"\r")):
        raise InputError(f"{path} does not start with an NRRD magic line (NRRD0001 … NRRD0005); it is not NRRD.")
    fields: dict[str, str] = {}
    position = len(lines[0]) + 1
    for line in lines[1:-1]:
        position += len(line) + 1
        line = line.rstrip(b"\r")
        if not line:
            return fields, position
        _add_field(line, fields, path)
    if path.name.lower().endswith(".nhdr") and len(text) < MAX_TEXT_HEADER:
        if lines[-1].strip():
            _add_field(lines[-1].rstrip(b"\r"), fields, path)
        return fields, len(text)
    raise InputError(f"{path}: its header has no blank line ending it within {MAX_TEXT_HEADER} bytes; "
                     "the file is truncated or not NRRD.")


def _add_field(line: bytes, fields: dict[str, str], path: Path) -> None:
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise InputError(f"{path}: its header holds a line that is not text ({line[:40]!r}); the file is damaged "
                         "or not NRRD.") from None
    if text.startswith("#") or ":=" in text:
        return
    key, colon, value = text.partition(":")
    key = "".join(key.lower().split())
    if not colon:
        raise refuse(path, repr(text[:40]), "not a 'field: value' line", "every header line is 'field: value'")
    fields[key] = value.strip()


def _required(fields: dict[str, str], key: str, path: Path) -> str:
    if key not in fields:
        raise InputError(f"{path}: its header has no '{key}' field, which every NRRD file needs; "
                         "export the image again.")
    return fields[key]


def _integers(fields: dict[str, str], key: str, path: Path) -> list[int]:
    try:
        return [int(v) for v in fields[key].split()]
    except ValueError:
        raise refuse(path, key, repr(fields[key]), "it must be whole numbers") from None


def _sizes(fields: dict[str, str], path: Path) -> list[int]:
    dimension = _required(fields, "dimension", path)
    if not (dimension.isdigit() and 1 <= int(dimension) <= 16):
        raise refuse(path, "dimension", repr(dimension), "it must be a whole number from 1 to 16")
    _required(fields, "sizes", path)
    sizes = _integers(fields, "sizes", path)
    if len(sizes) != int(dimension):
        raise refuse(path, "sizes", fields["sizes"], f"it must give one size per axis (dimension {dimension})")
    check_sizes(path, "sizes", sizes)
    return sizes


def _dtype(fields: dict[str, str], path: Path) -> np.dtype:
    name = " ".join(_required(fields, "type", path).lower().split())
    if name not in _TYPE_CODES:
        raise refuse(path, "type", repr(name), "it must be a numeric NRRD type (uchar, short, float, …)")
    big = fields.get("endian", "little").lower() == "big"
    return np.dtype(_TYPE_CODES[name]).newbyteorder(">" if big else "<")


def _floats(text: str, path: Path, field: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise refuse(path, field, repr(text), "it must be numbers") from None


_DOMAIN_KINDS = ("domain", "space", "time")


def _kinds(fields: dict[str, str], sizes: list[int], path: Path) -> list[str]:
    kinds = fields.get("kinds", "").lower().split()
    if kinds and len(kinds) != len(sizes):
        raise refuse(path, "kinds", fields["kinds"], f"it must give one kind per axis ({len(sizes)})")
    return kinds


def _spatial_axes(fields: dict[str, str], sizes: list[int], path: Path) -> tuple[list[int], list[float]]:
    """The spatial axes (those with a space direction, else of kind domain/space) and their spacing."""
    kinds = _kinds(fields, sizes, path)
    if "spacedirections" in fields:
        return _directions(fields["spacedirections"], kinds, sizes, path)
    axes = [a for a in range(len(sizes)) if not kinds or kinds[a] in (*_DOMAIN_KINDS, "???", "none")]
    values = _floats(fields["spacings"], path, "spacings") if "spacings" in fields else [1.0] * len(sizes)
    if len(values) != len(sizes):
        raise refuse(path, "spacings", fields["spacings"], f"it must give one value per axis ({len(sizes)})")
    return axes, [values[a] for a in axes]


def _directions(text: str, kinds: list[str], sizes: list[int], path: Path) -> tuple[list[int], list[float]]:
    """The axes with a space direction and their lengths; `none` only on axes that are not of a domain kind."""
    entries = re.findall(r"\([^()]*\)|none", text, flags=re.IGNORECASE)
    if len(entries) != len(sizes) or re.sub(r"\([^()]*\)|none", "", text, flags=re.IGNORECASE).strip():
        raise refuse(path, "space directions", text, f"it must give one vector or none per axis ({len(sizes)})")
    axes, spacing = [], []
    for axis, entry in enumerate(entries):
        if entry.lower() == "none":
            if kinds and kinds[axis] in _DOMAIN_KINDS:
                raise refuse(path, "space directions", text, f"axis {axis + 1} is of kind {kinds[axis]} but has no "
                                                             "direction, so it has no spacing")
            continue
        vector = _floats(entry[1:-1], path, "space directions")
        axes.append(axis)
        spacing.append(math.sqrt(sum(v * v for v in vector)) if all(map(math.isfinite, vector)) else math.nan)
    return axes, spacing


def _encoding(fields: dict[str, str], path: Path) -> str:
    encoding = _required(fields, "encoding", path).lower()
    if encoding not in _ENCODINGS:
        raise refuse(path, "encoding", repr(encoding), "the runtime reads raw and gzip NRRD data",
                     "save the image with raw or gzip encoding")
    return _ENCODINGS[encoding]


def _skips(fields: dict[str, str], encoding: str, path: Path) -> tuple[int, int]:
    line_skip = int(fields.get("lineskip", "0")) if fields.get("lineskip", "0").isdigit() else -1
    if line_skip < 0:
        raise refuse(path, "line skip", repr(fields["lineskip"]), "it must be a whole number >= 0")
    text = fields.get("byteskip", "0")
    byte_skip = int(text) if re.fullmatch(r"-?\d+", text) else -2
    if byte_skip < -1 or (byte_skip == -1 and encoding != "raw"):
        raise refuse(path, "byte skip", repr(text), "it must be a whole number >= 0, or -1 for raw data at the end "
                                                    "of the file")
    return line_skip, byte_skip


def _data_file(fields: dict[str, str], path: Path, end_of_header: int) -> tuple[Path, int]:
    """The file holding the data and the offset where it starts (before line and byte skips)."""
    name = fields.get("datafile")
    if name is None:
        if path.name.lower().endswith(".nhdr"):
            raise InputError(f"{path}: a detached NRRD header (.nhdr) needs a 'data file' field; "
                             "export the image again.")
        return path, end_of_header
    if name.strip() and (name.split()[0].upper() == "LIST" or "%" in name):
        raise refuse(path, "data file", repr(name), "the runtime reads one data file per image",
                     "save the image as one .nrrd file")
    return inside(path.parent, name, path, "data file"), 0


def _after_lines(file: Path, start: int, lines: int, path: Path) -> int:
    """The offset after skipping `lines` text lines from `start`."""
    if not lines:
        return start
    with open(file, "rb") as handle:
        handle.seek(start)
        for _ in range(lines):
            if not handle.readline(MAX_TEXT_HEADER).endswith(b"\n"):
                raise InputError(f"{path}: the file ends within the {lines} lines its header says to skip; "
                                 "it is truncated.")
        return handle.tell()


_MILLIMETRES = {"", "mm", "millimeter", "millimeters", "millimetre", "millimetres"}


def _check_units(fields: dict[str, str], axes: list[int], path: Path) -> None:
    """The spacings are read as millimetres, as ITK reads them whatever `space units` or the per-axis
    `units` say: a file in metres or microns would be read 1000 times off. An axis without a unit
    ("none", "???", or empty) is taken as mm, as ITK takes it."""
    for key, name, unitless in (("spaceunits", "space units", ()), ("units", "units", ("none", "???"))):
        if key not in fields:
            continue
        units = re.findall(r'"([^"]*)"', fields[key])
        if key == "units":                   # one per axis: those of the spatial axes count
            units = [units[a] for a in axes if a < len(units)] if len(units) > max(axes, default=-1) else []
        if not units or any(unit.strip().lower() not in (*_MILLIMETRES, *unitless) for unit in units):
            raise InputError(f"{path}: {name} are {fields[key][:80]}; the runtime reads spacings in mm only: "
                             "convert the file to mm (its space directions or spacings).")


def nrrd_header(path: Path) -> Header:
    """Read and check an NRRD header; InputError naming the field when one is impossible."""
    fields, end = _read_header(path)
    sizes = _sizes(fields, path)
    dtype = _dtype(fields, path)
    axes, spacing = _spatial_axes(fields, sizes, path)
    if "spaceorigin" in fields:
        check_finite(path, "space origin", _floats(fields["spaceorigin"].replace("(", " ").replace(")", " "), path,
                                                   "space origin"))
    _check_units(fields, axes, path)
    field = "space directions" if "spacedirections" in fields else "spacings"
    checked = check_spacing(path, field, spacing)
    encoding = _encoding(fields, path)
    line_skip, byte_skip = _skips(fields, encoding, path)
    file, start = _data_file(fields, path, end)
    start = _after_lines(file, start, line_skip, path)
    raw = encoding == "raw"
    stream = Stream(file=file, start=start + (max(0, byte_skip) if raw else 0), encoding=encoding,
                    skip=-1 if byte_skip == -1 else (0 if raw else byte_skip))
    return Header(path=path, kind="NRRD", elements=math.prod(sizes), dtype=dtype, spacing=checked, stream=stream)
