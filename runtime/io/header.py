"""What an image file's own header promises, read before ITK reads the file.

ITK "repairs" impossible headers without a word — a spacing of 0 or -1 becomes 1, a negative
dimension becomes 1, a truncated file is padded with zeros, a damaged gzip stream is decoded
anyway — and then runs. The format readers here (`nifti`, `nrrd`, `metaimage`) parse the header
themselves, refuse every field no scanner could have written, and describe where the voxels are
stored (`Stream`) so that `runtime.io.streams` can check the stored data against the header: its
size, its checksums, its finiteness. Each refusal names the file, the field, its value and what
to do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.errors import InputError
from runtime.limits import IMAGE_MAX_SPACING_MM, IMAGE_MIN_SPACING_MM
from runtime.validation import resolves_inside

# The largest header a text format may have before its data begins.
MAX_TEXT_HEADER = 1 << 20


@dataclass(frozen=True)
class Stream:
    """Where a header says the voxels are stored, and how.

    `start` is the byte offset in `file` where the stored stream begins; `encoding` "raw", "gzip"
    or "zlib"; `skip` the decoded bytes before the voxels (-1: the voxels end the file, raw only);
    `length` the stored bytes of a compressed stream when the header says (else to the end of the
    file).
    """

    file: Path
    start: int
    encoding: str
    skip: int = 0
    length: int | None = None


@dataclass(frozen=True)
class Header:
    """One image file's promises: its element count, element type, spatial spacing and storage."""

    path: Path
    kind: str                       # "NIfTI-1", "NRRD", "MetaImage", …
    elements: int                   # voxels × components
    dtype: np.dtype                 # one stored element, with its byte order
    spacing: tuple[float, ...]      # mm per spatial axis, as stored (x first)
    stream: Stream
    scaled: bool = False            # a reader maps the stored values to others (NIfTI scl_slope/scl_inter)

    @property
    def nbytes(self) -> int:
        """The bytes of voxel data the header promises."""
        return self.elements * self.dtype.itemsize


def refuse(path: Path, field: str, value: object, expected: str,
           remedy: str = "the header is damaged or was written wrongly: export the image again") -> InputError:
    """The error for one header field no valid file holds."""
    return InputError(f"{path}: header field {field} is {value}; {expected}; {remedy}.")


def text_head(path: Path) -> bytes:
    """The first MAX_TEXT_HEADER bytes of a file with a text header."""
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_TEXT_HEADER)
    except OSError as exc:
        raise InputError(f"{path} cannot be read ({exc.strerror or exc}); check the file.") from None


def check_sizes(path: Path, field: str, sizes: Sequence[int]) -> int:
    """Every axis holds at least one element; returns the element count."""
    for index, size in enumerate(sizes):
        if size < 1:
            raise refuse(path, field, " ".join(map(str, sizes)),
                         f"axis {index + 1} has {size} elements, but every axis needs at least 1")
    return math.prod(sizes)


def check_spacing(path: Path, field: str, spacing: Sequence[float]) -> tuple[float, ...]:
    """Finite positive spacings between IMAGE_MIN_SPACING_MM and IMAGE_MAX_SPACING_MM."""
    for value in spacing:
        if not (math.isfinite(value) and IMAGE_MIN_SPACING_MM <= value <= IMAGE_MAX_SPACING_MM):
            shown = " ".join(f"{v:g}" for v in spacing)
            raise refuse(path, field, shown, f"every spacing must be a finite number of mm between "
                                             f"{IMAGE_MIN_SPACING_MM:g} and {IMAGE_MAX_SPACING_MM:g}")
    return tuple(float(v) for v in spacing)


def check_finite(path: Path, field: str, values: Sequence[float]) -> None:
    if not all(math.isfinite(v) for v in values):
        raise refuse(path, field, " ".join(f"{v:g}" for v in values), "every value must be a finite number")


def inside(folder: Path, name: str, path: Path, field: str) -> Path:
    """The file `name` (a header's data file) inside `folder`, refusing one that leaves it."""
    candidate = Path(name)
    if not name or candidate.is_absolute() or ".." in candidate.parts or "\\" in name or "\x00" in name:
        raise refuse(path, field, repr(name), "the data file must be named relative to the header's folder, "
                                              "inside it", "keep the header and its data file side by side")
    if not resolves_inside(folder, name):
        raise refuse(path, field, repr(name), "the data file must lie inside the header's folder (it is a link "
                                              "that leads out of it)", "keep the header and its data file side by side")
    if not (folder / candidate).is_file():
        raise InputError(f"{path}: its data file {name} (header field {field}) does not exist beside it; "
                         "copy the data file too.")
    return folder / candidate


ORTHONORMAL_TOLERANCE = 1e-4


def orthonormal(matrix: Sequence[float], dims: int) -> bool:
    """Whether a dims × dims matrix (row major) is a rotation, possibly with flips, within
    ORTHONORMAL_TOLERANCE."""
    values = np.asarray(matrix, dtype=float).reshape(dims, dims)
    return bool(np.all(np.isfinite(values))
                and np.allclose(values @ values.T, np.eye(dims), atol=ORTHONORMAL_TOLERANCE, rtol=0))
