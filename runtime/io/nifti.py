"""NIfTI-1 and NIfTI-2 headers, read and checked before ITK reads the file.

ITK reads a truncated NIfTI file without complaint (the missing voxels become zeros), turns NaN
voxels into 0, and repairs impossible headers (a pixdim of 0 or -1, a negative dim) by guessing.
`nifti_header` refuses every such field; `runtime.io.streams` then checks the data the header
describes (its length, the gzip CRC, finiteness).
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import InputError
from runtime.io.header import Header, Stream, check_finite, check_sizes, check_spacing, refuse

NIFTI_HEADER_SIZE = 348
NIFTI2_HEADER_SIZE = 540
# Element types by NIfTI datatype code; RGB and RGBA are stored as bytes, one per component.
_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8",
          128: "u1", 2304: "u1"}
_COMPONENTS = {128: 3, 2304: 4}
_UNSUPPORTED = {1: "binary (1 bit)", 32: "complex64", 1536: "float128", 1792: "complex128", 2048: "complex256"}


@dataclass(frozen=True)
class _Layout:
    """The raw fields of a NIfTI-1 or NIfTI-2 header that the checks read."""

    version: int
    order: str
    magic: bytes
    dims: tuple[int, ...]
    datatype: int
    pixdim: tuple[float, ...]
    vox_offset: float
    scaling: tuple[float, float]
    qform: tuple[int, tuple[float, ...]]
    sform: tuple[int, tuple[float, ...]]


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _first_bytes(path: Path) -> bytes:
    """The file's first NIFTI2_HEADER_SIZE bytes (fewer when shorter), uncompressed."""
    import gzip
    import zlib

    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read(NIFTI2_HEADER_SIZE)
        with open(path, "rb") as handle:
            return handle.read(NIFTI2_HEADER_SIZE)
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"{path} cannot be read: it is truncated or damaged ({exc}); copy the file again.") from None


def _layout1(data: bytes, order: str) -> _Layout:
    dims = struct.unpack(order + "8h", data[40:56])
    return _Layout(
        version=1, order=order, magic=data[344:348], dims=dims, datatype=struct.unpack(order + "h", data[70:72])[0],
        pixdim=struct.unpack(order + "8f", data[76:108]), vox_offset=struct.unpack(order + "f", data[108:112])[0],
        scaling=struct.unpack(order + "2f", data[112:120]),
        qform=(struct.unpack(order + "h", data[252:254])[0], struct.unpack(order + "6f", data[256:280])),
        sform=(struct.unpack(order + "h", data[254:256])[0], struct.unpack(order + "12f", data[280:328])),
    )


def _layout2(data: bytes, order: str) -> _Layout:
    return _Layout(
        version=2, order=order, magic=data[4:12], dims=struct.unpack(order + "8q", data[16:80]),
        datatype=struct.unpack(order + "h", data[12:14])[0], pixdim=struct.unpack(order + "8d", data[104:168]),
        vox_offset=float(struct.unpack(order + "q", data[168:176])[0]),
        scaling=struct.unpack(order + "2d", data[176:192]),
        qform=(struct.unpack(order + "i", data[344:348])[0], struct.unpack(order + "6d", data[352:400])),
        sform=(struct.unpack(order + "i", data[348:352])[0], struct.unpack(order + "12d", data[400:496])),
    )


def _layout(data: bytes, path: Path) -> _Layout:
    """The header's fields, in whichever byte order gives its own size."""
    if len(data) < NIFTI_HEADER_SIZE:
        raise InputError(f"{path} is shorter than a NIfTI header ({len(data)} bytes); it is truncated or not NIfTI.")
    for order in ("<", ">"):
        size = struct.unpack(order + "i", data[:4])[0]
        if size == NIFTI_HEADER_SIZE:
            return _layout1(data, order)
        if size == NIFTI2_HEADER_SIZE:
            if len(data) < NIFTI2_HEADER_SIZE:
                raise InputError(f"{path} is shorter than a NIfTI-2 header; it is truncated.")
            return _layout2(data, order)
    raise InputError(f"{path} does not start with a NIfTI-1 or NIfTI-2 header (sizeof_hdr 348 or 540); "
                     "check the file.")


def _check_magic(layout: _Layout, path: Path) -> None:
    expected = b"n+1\x00" if layout.version == 1 else b"n+2\x00\r\n\x1a\n"
    if layout.magic != expected:
        raise refuse(path, "magic", repr(layout.magic), f"a single-file NIfTI-{layout.version} holds {expected!r} "
                                                        "(a .hdr/.img pair is not read)")


def _spatial(layout: _Layout, path: Path) -> tuple[tuple[int, ...], int]:
    """The sizes the header declares (dim[1..dim[0]]) and their element count."""
    rank = layout.dims[0]
    if not 1 <= rank <= 7:
        raise refuse(path, "dim[0]", rank, "the number of dimensions must be 1 to 7")
    sizes = tuple(int(d) for d in layout.dims[1:1 + rank])
    return sizes, check_sizes(path, f"dim[1..{rank}]", sizes)


def _element(layout: _Layout, path: Path) -> tuple[np.dtype, int]:
    code = layout.datatype
    if code in _UNSUPPORTED:
        raise refuse(path, "datatype", f"{code} ({_UNSUPPORTED[code]})",
                     "the runtime reads real-valued voxels only", "save the image as real numbers (a magnitude image)")
    if code not in _TYPES:
        raise refuse(path, "datatype", code, "it is no NIfTI data type")
    return np.dtype(_TYPES[code]).newbyteorder(layout.order), _COMPONENTS.get(code, 1)


def _data_offset(layout: _Layout, path: Path) -> int:
    offset, minimum = layout.vox_offset, (NIFTI_HEADER_SIZE if layout.version == 1 else NIFTI2_HEADER_SIZE) + 4
    if not (math.isfinite(offset) and offset == int(offset) and offset >= minimum):
        raise refuse(path, "vox_offset", f"{offset:g}", f"the voxel data must start at a whole byte at or after "
                                                        f"{minimum}, past the header")
    return int(offset)


def _check_transform(layout: _Layout, path: Path) -> None:
    slope, intercept = layout.scaling
    if slope != 0:
        check_finite(path, "scl_slope, scl_inter", [slope, intercept])
    if layout.qform[0] > 0:
        check_finite(path, "quatern_b..qoffset_z", layout.qform[1])
    if layout.sform[0] > 0:
        check_finite(path, "srow_x, srow_y, srow_z", layout.sform[1])


def nifti_header(path: Path) -> Header:
    """Read and check a .nii or .nii.gz header; InputError naming the field when one is impossible."""
    layout = _layout(_first_bytes(path), path)
    _check_magic(layout, path)
    sizes, count = _spatial(layout, path)
    dtype, components = _element(layout, path)
    spatial = min(3, len(sizes))
    spacing = check_spacing(path, f"pixdim[1..{spatial}]", layout.pixdim[1:1 + spatial])
    _check_transform(layout, path)
    offset = _data_offset(layout, path)
    compressed = path.name.lower().endswith(".gz")
    stream = Stream(file=path, start=0 if compressed else offset, encoding="gzip" if compressed else "raw",
                    skip=offset if compressed else 0)
    slope, intercept = layout.scaling
    return Header(path=path, kind=f"NIfTI-{layout.version}", elements=count * components, dtype=dtype,
                  spacing=spacing, stream=stream, scaled=slope != 0 and (slope != 1 or intercept != 0))


def check_nifti(path: Path) -> Header:
    """The header checks, then the data checks (length, gzip CRC, finite floats) of a NIfTI file."""
    from runtime.io.streams import verify_stream

    header = nifti_header(path)
    verify_stream(header)
    return header
