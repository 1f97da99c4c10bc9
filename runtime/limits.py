"""Bounds on the manifest values that size an allocation, on the manifest file itself, and on an
image's spacing.

A manifest, a spec and a training config are checked against these bounds when they are read, so
that an edited or hostile value is refused with a message naming the field instead of exhausting
memory or time later. The bounds are far above what real models use: a 2D histology patch of
2048 x 2048, a 3D patch of 256^3 with batch 8 and several channels, hundreds of classes. Every
check returns what is wrong ("must be ..., got ...") or None, as the other field checks do.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from runtime.validation import is_int, is_number

MAX_MANIFEST_BYTES = 16 * 2**20      # manifest.json larger than 16 MiB is refused before it is read
MAX_MANIFEST_DEPTH = 64              # lists and objects nested deeper than this are refused

MAX_PATCH_AXIS = 4096                # window.patch_size: voxels per axis
MAX_PATCH_VOXELS = 2**26             # window.patch_size: voxels per window (67,108,864; 4096^2 or about 406^3)
MAX_BATCH_SIZE = 1024                # window.batch_size: windows per model call
MAX_BATCH_VALUES = 2**30             # batch_size x channels x patch voxels: values per model call (4 GiB of float32)
MAX_CHANNELS = 256                   # input channels
MAX_CLASSES = 1024                   # classes (or regression targets)
MAX_CLASS_VALUE = 65535              # a class value: label maps are written as uint8 or uint16
MAX_SHAPE_AXIS = 16384               # resize.shape and pad.shape: voxels per axis
MAX_SHAPE_VOXELS = 2**30             # resize.shape and pad.shape: voxels per channel (1024^3)
MIN_SPACING_MM = 1e-4                # resample.spacing: mm per voxel, at least
MAX_SPACING_MM = 1e4                 # resample.spacing: mm per voxel, at most

# An image's own spacing (file headers, Triton's SPACING): a micrometre-scale microscope pixel up to a metre.
IMAGE_MIN_SPACING_MM = 1e-6
IMAGE_MAX_SPACING_MM = 1e6


def _product(values: Sequence[int]) -> int:
    return math.prod(int(v) for v in values)


def sizes_problem(value: Any, axis_limit: int, total_limit: int, what: str) -> str | None:
    """Positive integers, each at most `axis_limit` and with a product at most `total_limit`;
    `what` names the product ("voxels per window")."""
    if not (isinstance(value, (list, tuple)) and value and all(is_int(v) and v > 0 for v in value)):
        return f"must be positive integers, got {value!r}"
    if max(value) > axis_limit:
        return f"must be at most {axis_limit} per axis, got {list(value)}"
    if _product(value) > total_limit:
        return f"must hold at most {total_limit:,} {what}, got {_product(value):,} ({list(value)})"
    return None


def patch_problem(patch: Any) -> str | None:
    """A window's size: at most MAX_PATCH_AXIS per axis and MAX_PATCH_VOXELS in all."""
    return sizes_problem(patch, MAX_PATCH_AXIS, MAX_PATCH_VOXELS, "voxels per window")


def shape_problem(shape: Any) -> str | None:
    """A resize or pad shape: at most MAX_SHAPE_AXIS per axis and MAX_SHAPE_VOXELS in all."""
    return sizes_problem(shape, MAX_SHAPE_AXIS, MAX_SHAPE_VOXELS, "voxels")


def spacing_problem(spacing: Any) -> str | None:
    """A resample spacing: finite numbers from MIN_SPACING_MM to MAX_SPACING_MM mm (null: the scan's own)."""
    if not isinstance(spacing, (list, tuple)) or not all(
            s is None or (is_number(s) and MIN_SPACING_MM <= s <= MAX_SPACING_MM)
            for s in spacing):
        return f"must be numbers from {MIN_SPACING_MM:g} to {MAX_SPACING_MM:g} (mm), got {spacing!r}"
    return None


def batch_problem(batch: Any, channels: int, patch: Sequence[int] | None) -> str | None:
    """Windows per call: at most MAX_BATCH_SIZE, and batch x channels x patch voxels at most MAX_BATCH_VALUES
    (checked when `channels` and `patch` are known)."""
    if not (is_int(batch) and 1 <= batch <= MAX_BATCH_SIZE):
        return f"must be an integer from 1 to {MAX_BATCH_SIZE}, got {batch!r}"
    if channels and patch:
        values = batch * channels * _product(patch)
        if values > MAX_BATCH_VALUES:
            return (f"{batch} windows x {channels} channel(s) x {_product(patch):,} voxels is {values:,} values per "
                    f"model call, more than {MAX_BATCH_VALUES:,}; lower batch_size")
    return None


def count_problem(count: int, limit: int, what: str) -> str | None:
    """At most `limit` entries of `what` ("channels", "classes")."""
    return None if count <= limit else f"must list at most {limit} {what}, got {count}"


def class_value_problem(value: Any) -> str | None:
    """A class value: an integer from 0 to MAX_CLASS_VALUE."""
    if is_int(value) and 0 <= value <= MAX_CLASS_VALUE:
        return None
    return f"must be an integer from 0 to {MAX_CLASS_VALUE} (label maps are uint8 or uint16), got {value!r}"
