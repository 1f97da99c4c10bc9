"""MetaImage headers (.mha with the data inside, .mhd beside a data file), read and checked before
ITK reads the file.

The header is text, `Key = Value` lines, ending with the ElementDataFile line: LOCAL (the data
follow that line) or the name of a data file beside the header. A value no valid file holds is
refused with its key named; the data a valid header describes is checked by `runtime.io.streams`
(MetaImage's compressed data are a zlib stream, whose Adler-32 ITK does not check).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from runtime.errors import InputError
from runtime.io.header import (
    MAX_TEXT_HEADER, Header, Stream, check_finite, check_sizes, check_spacing, inside, orthonormal, refuse, text_head,
)

_TYPES = {"CHAR": "i1", "UCHAR": "u1", "SHORT": "i2", "USHORT": "u2", "INT": "i4", "UINT": "u4", "LONG": "i4",
          "ULONG": "u4", "LONG_LONG": "i8", "ULONG_LONG": "u8", "FLOAT": "f4", "DOUBLE": "f8"}
_LINE = re.compile(r"^\s*([^=\s][^=]*?)\s*=\s*(.*?)\s*$")
MAX_CHANNELS = 1024
# The keys read here, as MetaIO spells them: it matches keys case and all, and takes another
# spelling for a field of the user's, which it ignores; the same key spelt otherwise is refused,
# so that the two never read one file two ways (`binarydatabyteordermsb = True` is little-endian
# data to ITK).
KEYS = {key.lower(): key for key in (
    "ObjectType", "NDims", "DimSize", "ElementType", "BinaryDataByteOrderMSB", "ElementByteOrderMSB",
    "ElementNumberOfChannels", "ElementSpacing", "ElementSize", "Offset", "Position", "Origin", "TransformMatrix",
    "Rotation", "Orientation", "BinaryData", "CompressedData", "CompressedDataSize", "HeaderSize", "ElementDataFile")}


def is_metaimage(path: Path) -> bool:
    return path.name.lower().endswith((".mha", ".mhd"))


def _read_header(path: Path) -> tuple[dict[str, str], int]:
    """The header's keys (lower case) with their values, and the offset just past the ElementDataFile line."""
    text = text_head(path)
    fields: dict[str, str] = {}
    position = 0
    while position < len(text):
        end = text.find(b"\n", position)
        line = text[position:] if end < 0 else text[position:end]
        position = len(text) if end < 0 else end + 1
        key, value = _field(line, path)
        fields[key] = value
        if key == "elementdatafile":
            return fields, position
    raise InputError(f"{path}: its header has no ElementDataFile line within {MAX_TEXT_HEADER} bytes; the file is "
                     "truncated or not a MetaImage.")


def _field(line: bytes, path: Path) -> tuple[str, str]:
    try:
        match = _LINE.match(line.decode("ascii"))
    except UnicodeDecodeError:
        match = None
    if match is None:
        raise InputError(f"{path}: its header holds a line that is not 'Key = Value' ({line[:40]!r}); the file is "
                         "damaged or not a MetaImage.")
    key = match.group(1).lower()
    if key in KEYS and match.group(1) != KEYS[key]:
        raise InputError(f"{path}: its header key {match.group(1)!r} is spelt otherwise than MetaIO reads it "
                         f"({KEYS[key]!r}, case and all), so ITK would ignore it; spell it {KEYS[key]}, or save the "
                         "image again.")
    return key, match.group(2)


def _flag(fields: dict[str, str], key: str, default: bool) -> bool:
    """A flag field as MetaIO reads it: true where its value begins with T, t or 1 (True, 1, T),
    false otherwise (False, 0, F)."""
    text = fields.get(key)
    if text is None:
        return default
    return text[:1] in ("T", "t", "1")


def _required(fields: dict[str, str], key: str, name: str, path: Path) -> str:
    if key not in fields:
        raise InputError(f"{path}: its header has no {name}, which a MetaImage needs; export the image again.")
    return fields[key]


def _numbers(fields: dict[str, str], key: str, name: str, count: int, path: Path, kind: type = float) -> list:
    text = fields[key]
    try:
        values = [kind(v) for v in text.split()]
    except ValueError:
        raise refuse(path, name, repr(text), f"it must be {count} numbers") from None
    if len(values) != count:
        raise refuse(path, name, repr(text), f"it must be {count} numbers, one per axis (NDims {count})")
    return values


def _ndims(fields: dict[str, str], path: Path) -> int:
    text = _required(fields, "ndims", "NDims", path)
    if not (text.isdigit() and 1 <= int(text) <= 10):
        raise refuse(path, "NDims", repr(text), "it must be a whole number from 1 to 10")
    return int(text)


def _dtype(fields: dict[str, str], path: Path) -> tuple[np.dtype, int]:
    name = _required(fields, "elementtype", "ElementType", path)
    base = name.upper().removeprefix("MET_").removesuffix("_ARRAY")
    if base not in _TYPES:
        raise refuse(path, "ElementType", repr(name), "it must be a numeric MET_ type (MET_UCHAR, MET_SHORT, "
                                                      "MET_FLOAT, …)")
    msb = _flag(fields, "binarydatabyteordermsb", _flag(fields, "elementbyteordermsb", False))
    channels = fields.get("elementnumberofchannels", "1")
    if not (channels.isdigit() and 1 <= int(channels) <= MAX_CHANNELS):
        raise refuse(path, "ElementNumberOfChannels", repr(channels), f"it must be a whole number from 1 to "
                                                                      f"{MAX_CHANNELS}")
    return np.dtype(_TYPES[base]).newbyteorder(">" if msb else "<"), int(channels)


def _geometry(fields: dict[str, str], dims: int, path: Path) -> tuple[float, ...]:
    """The spacing, after checking the origin and the direction matrix."""
    spacing_key = "elementspacing" if "elementspacing" in fields else "elementsize"
    spacing_name = "ElementSpacing" if spacing_key == "elementspacing" else "ElementSize"
    spacing = _numbers(fields, spacing_key, spacing_name, dims, path) if spacing_key in fields else [1.0] * dims
    for key, name in (("offset", "Offset"), ("position", "Position"), ("origin", "Origin")):
        if key in fields:
            check_finite(path, name, _numbers(fields, key, name, dims, path))
    for key, name in (("transformmatrix", "TransformMatrix"), ("rotation", "Rotation"), ("orientation", "Orientation")):
        if key in fields:
            _check_direction(fields[key], _numbers(fields, key, name, dims * dims, path), name, dims, path)
    return check_spacing(path, spacing_name, spacing)


def _check_direction(text: str, matrix: list[float], name: str, dims: int, path: Path) -> None:
    check_finite(path, name, matrix)
    if not orthonormal(matrix, dims):
        raise refuse(path, name, text, "its axes must be orthonormal (a rotation, possibly with flips)",
                     "the grid is sheared or scaled, which no output format of the runtime holds: resample "
                     "the image onto an orthogonal grid first")


def _binary(fields: dict[str, str], path: Path) -> bool:
    if not _flag(fields, "binarydata", True):
        raise refuse(path, "BinaryData", fields["binarydata"], "the runtime reads binary MetaImage data",
                     "save the image with BinaryData = True")
    return _flag(fields, "compresseddata", False)


def _data_file(fields: dict[str, str], path: Path, end: int) -> tuple[Path, int, bool]:
    """The file holding the data, where it starts, and whether it is the header's own file."""
    name = fields["elementdatafile"]
    if name.upper() == "LOCAL":
        return path, end, True
    if name.strip() and (name.split()[0].upper() == "LIST" or "%" in name):
        raise refuse(path, "ElementDataFile", repr(name), "the runtime reads one data file per image",
                     "save the image as one .mha file")
    return inside(path.parent, name, path, "ElementDataFile"), 0, False


def _stream(fields: dict[str, str], path: Path, end: int, compressed: bool) -> Stream:
    file, start, local = _data_file(fields, path, end)
    if compressed:
        size = fields.get("compresseddatasize")
        if size is not None and not size.isdigit():
            raise refuse(path, "CompressedDataSize", repr(size), "it must be a whole number of bytes")
        return Stream(file=file, start=start, encoding="zlib", length=None if size is None else int(size))
    header_size = fields.get("headersize", "0")
    if not re.fullmatch(r"-?\d+", header_size) or int(header_size) < -1:
        raise refuse(path, "HeaderSize", repr(header_size), "it must be a whole number >= 0, or -1 for data at the "
                                                            "end of the file")
    if local and int(header_size) > 0:
        raise refuse(path, "HeaderSize", repr(header_size), "the data follow the header (ElementDataFile = LOCAL), "
                     "where MetaIO would skip bytes this reader does not", "save the image again without it")
    skip = int(header_size) if not local or int(header_size) < 0 else 0
    return Stream(file=file, start=start + max(0, skip), encoding="raw", skip=min(0, skip))


def metaimage_header(path: Path) -> Header:
    """Read and check a MetaImage header; InputError naming the key when one is impossible."""
    fields, end = _read_header(path)
    object_type = fields.get("objecttype", "Image")
    if object_type.lower() != "image":
        raise refuse(path, "ObjectType", repr(object_type), "the runtime reads images (ObjectType = Image)")
    dims = _ndims(fields, path)
    _required(fields, "dimsize", "DimSize", path)
    sizes = _numbers(fields, "dimsize", "DimSize", dims, path, int)
    count = check_sizes(path, "DimSize", sizes)
    dtype, channels = _dtype(fields, path)
    spacing = _geometry(fields, dims, path)
    stream = _stream(fields, path, end, _binary(fields, path))
    return Header(path=path, kind="MetaImage", elements=count * channels, dtype=dtype, spacing=spacing[:3],
                  stream=stream)
