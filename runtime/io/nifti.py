"""Checks SimpleITK cannot make on NIfTI files: ITK reads a truncated NIfTI file (plain or gzip)
without complaint, filling the missing voxels with zeros, and turns NaN voxels into 0. These
checks read the file's own header (and, where needed, its data) to catch both."""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from runtime.errors import InputError

NIFTI_HEADER_SIZE = 348
_FLOAT_TYPES = {16: "f4", 64: "f8"}
_BYTES_PER_VOXEL = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
                    1536: 16, 1792: 16, 2048: 32, 2304: 4}


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _read_all(path: Path) -> bytes:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"{path} cannot be read: it is truncated or damaged ({exc}); copy the file again.") from None


def _layout(header: bytes, path: Path) -> tuple[str, int, int, int]:
    """(byte order, datatype, voxel count, data offset) from a NIfTI-1 header."""
    for order in ("<", ">"):
        if struct.unpack(order + "i", header[:4])[0] == NIFTI_HEADER_SIZE:
            break
    else:
        raise InputError(f"{path} does not start with a NIfTI-1 header; check the file.")
    dims = struct.unpack(order + "8h", header[40:56])
    datatype = struct.unpack(order + "h", header[70:72])[0]
    offset = int(struct.unpack(order + "f", header[108:112])[0])
    count = int(np.prod([max(1, d) for d in dims[1:1 + max(1, dims[0])]], dtype=np.int64))
    return order, datatype, count, offset


def nifti_data_size(header: bytes, path: Path) -> int:
    """The bytes an uncompressed NIfTI-1 file must hold: its data offset plus the voxel data its header describes.

    `header` is the file's first NIFTI_HEADER_SIZE bytes (uncompressed); InputError names `path`
    when they are not a NIfTI-1 header.
    """
    _, datatype, count, offset = _layout(header, path)
    return offset + count * _BYTES_PER_VOXEL.get(datatype, 0)


def _header(path: Path) -> bytes:
    """The file's first NIFTI_HEADER_SIZE bytes, uncompressed."""
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                header = handle.read(NIFTI_HEADER_SIZE)
        else:
            with open(path, "rb") as handle:
                header = handle.read(NIFTI_HEADER_SIZE)
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"{path} cannot be read: it is truncated or damaged ({exc}); copy the file again.") from None
    if len(header) < NIFTI_HEADER_SIZE:
        raise InputError(f"{path} is shorter than a NIfTI header; it is truncated or not NIfTI.")
    return header


def _gzip_size_matches(path: Path, size: int) -> bool:
    """The gzip trailer's length field (the uncompressed size modulo 2**32) equals `size`.

    A complete single-member file always matches; a truncated one ends inside its compressed data,
    so its last four bytes match only by a 1 in 2**32 chance. A mismatch proves nothing by itself
    (several members, trailing bytes), so the caller then decompresses the whole file.
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(-4, os.SEEK_END)
            trailer = handle.read(4)
    except OSError:
        return False
    return len(trailer) == 4 and struct.unpack("<I", trailer)[0] == size % (1 << 32)


def check_nifti(path: Path) -> None:
    """Refuse a truncated NIfTI file, and one holding NaN or infinite voxels.

    Integer files are checked from their header and length alone (for .nii.gz the gzip trailer's
    length field), without decompressing the data; floating-point files are read whole, since ITK
    reads their NaN voxels as 0.
    """
    header = _header(path)
    order, datatype, count, offset = _layout(header, path)
    needed = offset + count * _BYTES_PER_VOXEL.get(datatype, 0)
    if datatype not in _FLOAT_TYPES:
        if not path.name.lower().endswith(".gz"):
            _check_length(path, path.stat().st_size, needed)
            return
        if _gzip_size_matches(path, needed):
            return
    data = _read_all(path)
    _check_length(path, len(data), needed)
    if datatype in _FLOAT_TYPES:
        voxels = np.frombuffer(data, dtype=order + _FLOAT_TYPES[datatype], count=count, offset=offset)
        bad = int(count - np.count_nonzero(np.isfinite(voxels)))
        if bad:
            raise InputError(f"{path} holds {bad} NaN or infinite voxels; fix or mask them before inference.")


def _check_length(path: Path, length: int, needed: int) -> None:
    if length < needed:
        raise InputError(f"{path} is truncated: it holds {length} bytes of the {needed} its header describes; "
                         "copy the file again.")
