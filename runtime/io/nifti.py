"""NIfTI-1 headers, read and checked before ITK reads the file.

ITK reads a truncated NIfTI file without complaint (the missing voxels become zeros), turns NaN
voxels into 0, and repairs impossible headers (a pixdim of 0 or -1, a negative dim) by guessing.
Where the sform disagrees with pixdim or the qform, or is sheared, ITK builds its grid from the
qform or pixdim instead, while nibabel, FSL and most viewers use the sform: the same file lies on
two grids. `nifti_header` refuses every such header; `runtime.io.streams` then checks the data the
header describes (its length, the gzip CRC, finiteness).
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.errors import InputError
from runtime.io.header import Header, Stream, check_finite, check_sizes, check_spacing, refuse

NIFTI_HEADER_SIZE = 348
NIFTI2_HEADER_SIZE = 540
# How far the sform may stray from pixdim and the qform: its axes relative to the spacing, its
# origin in mm (both are stored in single precision).
FORM_TOLERANCE = 1e-4
ORIGIN_TOLERANCE_MM = 1e-3
# Element types by NIfTI datatype code; RGB and RGBA are stored as bytes, one per component.
_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8",
          128: "u1", 2304: "u1"}
_COMPONENTS = {128: 3, 2304: 4}
_UNSUPPORTED = {1: "binary (1 bit)", 32: "complex64", 1536: "float128", 1792: "complex128", 2048: "complex256"}


@dataclass(frozen=True)
class _Layout:
    """The raw fields of a NIfTI-1 header that the checks read."""

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
    """The file's first NIFTI_HEADER_SIZE bytes (fewer when shorter), uncompressed."""
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read(NIFTI_HEADER_SIZE)
        with open(path, "rb") as handle:
            return handle.read(NIFTI_HEADER_SIZE)
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"{path} cannot be read: it is truncated or damaged ({exc}); copy the file again.") from None


def _fields(data: bytes, order: str) -> _Layout:
    return _Layout(
        order=order, magic=data[344:348], dims=struct.unpack(order + "8h", data[40:56]),
        datatype=struct.unpack(order + "h", data[70:72])[0], pixdim=struct.unpack(order + "8f", data[76:108]),
        vox_offset=struct.unpack(order + "f", data[108:112])[0], scaling=struct.unpack(order + "2f", data[112:120]),
        qform=(struct.unpack(order + "h", data[252:254])[0], struct.unpack(order + "6f", data[256:280])),
        sform=(struct.unpack(order + "h", data[254:256])[0], struct.unpack(order + "12f", data[280:328])),
    )


def _layout(data: bytes, path: Path) -> _Layout:
    """The header's fields, in whichever byte order gives its own size."""
    if len(data) < NIFTI_HEADER_SIZE:
        raise InputError(f"{path} is shorter than a NIfTI header ({len(data)} bytes); it is truncated or not NIfTI.")
    for order in ("<", ">"):
        size = struct.unpack(order + "i", data[:4])[0]
        if size == NIFTI_HEADER_SIZE:
            return _fields(data, order)
        if size == NIFTI2_HEADER_SIZE:
            raise InputError(f"{path} is a NIfTI-2 file, which this runtime does not read; save it as NIfTI-1 "
                             "(nibabel: nib.Nifti1Image(img.dataobj, img.affine)).")
    raise InputError(f"{path} does not start with a NIfTI-1 header (sizeof_hdr 348); check the file.")


def _check_magic(layout: _Layout, path: Path) -> None:
    if layout.magic != b"n+1\x00":
        raise refuse(path, "magic", repr(layout.magic), "a single-file NIfTI-1 holds b'n+1\\x00' (a .hdr/.img "
                                                        "pair is not read)")


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
    offset, minimum = layout.vox_offset, NIFTI_HEADER_SIZE + 4
    if not (math.isfinite(offset) and offset == int(offset) and offset >= minimum):
        raise refuse(path, "vox_offset", f"{offset:g}", f"the voxel data must start at a whole byte at or after "
                                                        f"{minimum}, past the header")
    return int(offset)


def _scaled(layout: _Layout, path: Path) -> bool:
    """Whether scl_slope and scl_inter map the stored values to others. A slope of 0 or one that is
    not finite means no scaling, as niftilib and nibabel read it."""
    slope, intercept = layout.scaling
    if slope == 0 or not math.isfinite(slope):
        return False
    check_finite(path, "scl_inter", [intercept])
    return slope != 1 or intercept != 0


def _quaternion_affine(quatern: Sequence[float], pixdim: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The qform's axes (columns, scaled by pixdim) and origin, as niftilib computes them from
    quatern_b..qoffset_z and pixdim[0..3] (qfac first)."""
    b, c, d, *offset = quatern
    squares = b * b + c * c + d * d
    if 1.0 - squares < 1e-7:
        scale = 1.0 / math.sqrt(squares)
        a, b, c, d = 0.0, b * scale, c * scale, d * scale
    else:
        a = math.sqrt(1.0 - squares)
    rotation = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                         [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                         [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
    qfac = -1.0 if pixdim[0] < 0 else 1.0
    return rotation * np.array([pixdim[1], pixdim[2], qfac * pixdim[3]]), np.array(offset)


def _check_forms(layout: _Layout, sizes: tuple[int, ...], path: Path) -> None:
    """The qform and sform are finite, and a set sform lies on the grid ITK builds: axes as long as
    pixdim says, at right angles, and the same as the qform's when both are set."""
    if layout.qform[0] > 0:
        check_finite(path, "quatern_b..qoffset_z", layout.qform[1])
    if layout.sform[0] <= 0:
        return
    check_finite(path, "srow_x, srow_y, srow_z", layout.sform[1])
    rows = np.array(layout.sform[1], dtype=float).reshape(3, 4)
    axes, origin = rows[:, :3], rows[:, 3]
    spacing = np.array([layout.pixdim[i] if i <= len(sizes) else 1.0 for i in (1, 2, 3)])
    lengths = np.linalg.norm(axes, axis=0)
    unit = axes / np.where(lengths > 0, lengths, 1.0)
    if len(sizes) >= 3 and (not np.allclose(lengths, spacing, rtol=FORM_TOLERANCE, atol=0)
                            or not np.allclose(unit.T @ unit, np.eye(3), atol=FORM_TOLERANCE, rtol=0)):
        raise refuse(path, "srow_x, srow_y, srow_z", _shown(axes), f"its axes must be at right angles and as long "
                     f"as pixdim[1..3] ({' '.join(f'{v:g}' for v in spacing)}): ITK would read another grid than "
                     f"the sform's", "resample the image onto an orthogonal grid, or write pixdim and the "
                     "qform from the sform")
    if layout.qform[0] > 0:
        q_axes, q_origin = _quaternion_affine(layout.qform[1], layout.pixdim)
        scale = float(np.max(spacing))
        if not (np.allclose(q_axes, axes, atol=FORM_TOLERANCE * scale, rtol=0)
                and np.allclose(q_origin, origin, atol=ORIGIN_TOLERANCE_MM, rtol=1e-6)):
            raise refuse(path, "qform, sform", f"{_shown(q_axes)} + {_shown(q_origin)} against {_shown(axes)} + "
                         f"{_shown(origin)}", "a qform and an sform that are both set must describe one grid",
                         "write both from the same affine, or set qform_code to 0")


def _shown(values: np.ndarray) -> str:
    return "[" + " ".join(f"{v:.6g}" for v in np.asarray(values).ravel()) + "]"


@dataclass(frozen=True)
class Placement:
    """Where a 2D NIfTI image lies in 3D, which the 2D grid ITK reads keeps only in its plane: the
    header's qform and sform as stored (in millimetres) and pixdim[0..3] (qfac, the spacings, the
    slice thickness). A NIfTI output of the image takes back its forms, qfac and thickness
    (`stamp`; its spacings are the grid's), so that it lies where the input does (nibabel and most
    viewers read the sform)."""

    qform_code: int
    sform_code: int
    quatern: tuple[float, ...]        # quatern_b, _c, _d, qoffset_x, _y, _z
    srow: tuple[float, ...]           # srow_x, srow_y, srow_z: 12 values
    pixdim: tuple[float, ...]         # pixdim[0..3]: qfac, x, y and the slice's thickness

    def stamp(self, header: bytearray) -> None:
        """Write the placement into a NIfTI-1 `header` (348 bytes, in its own byte order)."""
        order = "<" if struct.unpack_from("<i", header, 0)[0] == NIFTI_HEADER_SIZE else ">"
        struct.pack_into(order + "f", header, 76, self.pixdim[0])
        struct.pack_into(order + "f", header, 88, self.pixdim[3])
        struct.pack_into(order + "2h", header, 252, self.qform_code, self.sform_code)
        struct.pack_into(order + "6f", header, 256, *self.quatern)
        struct.pack_into(order + "12f", header, 280, *self.srow)

    def tilted(self) -> bool:
        """Whether its pixels' axes leave the axial plane (a z component), which ITK's 2D grid,
        taking their x and y alone, cannot follow."""
        affine = self.affine()
        if affine is None:
            return False
        axes = affine[:3, :2]
        return bool(np.any(np.abs(axes[2]) > FORM_TOLERANCE * np.linalg.norm(axes, axis=0)))

    def in_3d(self) -> bool:
        """Whether it places the image in 3D beyond its 2D grid (not as ITK writes a 2D image)."""
        return not _flat(self.affine())

    def affine(self) -> np.ndarray | None:
        """The (3, 4) affine a reader takes: the sform's where it is set, else the qform's; None
        where neither is (the image is then placed by its spacing alone)."""
        if self.sform_code > 0:
            return np.array(self.srow, dtype=float).reshape(3, 4)
        if self.qform_code <= 0:
            return None
        axes, origin = _quaternion_affine(self.quatern, self.pixdim)
        return np.column_stack([axes, origin])


MM_UNITS = (0, 2)          # xyzt_units' spatial part: unknown (read as millimetres) or millimetres


def nifti_placement(path: Path) -> Placement | None:
    """The placement in 3D of a 2D NIfTI image (dim[0] 2) stored in millimetres; None for any other
    (a volume's grid is whole in ITK's, and one in other units is rescaled by ITK)."""
    data = _first_bytes(path)
    layout = _layout(data, path)
    units = data[123] & 0x07
    if layout.dims[0] != 2 or units not in MM_UNITS:
        return None
    return Placement(layout.qform[0], layout.sform[0], tuple(layout.qform[1]), tuple(layout.sform[1]),
                     tuple(layout.pixdim[:4]))


def _flat(affine: np.ndarray | None) -> bool:
    """Whether an affine places a 2D image in the plane z = 0, its axes in that plane: as ITK
    writes every 2D image (a label saved through SimpleITK, say), so it says nothing of a slice's
    place beyond the 2D grid."""
    return affine is None or bool(np.all(affine[2, [0, 1, 3]] == 0) and np.all(affine[:2, 2] == 0))


def same_placement(a: Placement | None, b: Placement | None) -> bool:
    """Whether two 2D images may lie in one plane of 3D space: false only where both place
    themselves in 3D (`_flat`: not as ITK writes a 2D image) and the places differ."""
    if a is None or b is None or not (a.in_3d() and b.in_3d()):
        return True
    first, second = a.affine(), b.affine()
    scale = float(np.max(np.abs(first[:, :2]))) or 1.0         # the pixels' axes; the thickness places no pixel
    return bool(np.allclose(first[:, :2], second[:, :2], atol=FORM_TOLERANCE * scale, rtol=0)
                and np.allclose(first[:, 3], second[:, 3], atol=ORIGIN_TOLERANCE_MM, rtol=1e-6))


def nifti_header(path: Path) -> Header:
    """Read and check a .nii or .nii.gz header; InputError naming the field when one is impossible."""
    layout = _layout(_first_bytes(path), path)
    _check_magic(layout, path)
    sizes, count = _spatial(layout, path)
    dtype, components = _element(layout, path)
    spatial = min(3, len(sizes))
    spacing = check_spacing(path, f"pixdim[1..{spatial}]", layout.pixdim[1:1 + spatial])
    _check_forms(layout, sizes, path)
    scaled = _scaled(layout, path)
    offset = _data_offset(layout, path)
    compressed = path.name.lower().endswith(".gz")
    stream = Stream(file=path, start=0 if compressed else offset, encoding="gzip" if compressed else "raw",
                    skip=offset if compressed else 0)
    return Header(path=path, kind="NIfTI-1", elements=count * components, dtype=dtype, spacing=spacing,
                  stream=stream, scaled=scaled)
