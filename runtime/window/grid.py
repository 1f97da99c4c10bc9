"""Window grids: where the patches of a sliding window sit on an array.

Every coordinate here is in array index space (voxels or pixels) of the spatial axes only; a
window is a tuple of slices, one per spatial axis, in the array's own axis order. The overlap is
a `WindowSpec`'s, checked there.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

Window = tuple[slice, ...]

_RATIO_TOLERANCE = 1e-9


def window_size(window: Window) -> tuple[int, ...]:
    """The voxels a window spans along each spatial axis."""
    return tuple(part.stop - part.start for part in window)


def window_starts(size: int, patch: int, overlap: float, placement: str = "even") -> list[int]:
    """Start indices of the windows along one axis of `size` voxels.

    The windows are spread evenly: the first starts at 0, the last ends at the border
    (starts at size - patch), and consecutive starts are at most patch * (1 - overlap) apart
    before rounding to whole voxels.
    """
    if size < patch:
        raise ValueError(f"axis of {size} voxels is smaller than the patch ({patch}); pad it first")
    if placement == "monai":
        return _monai_starts(size, patch, overlap)
    span = size - patch
    if span == 0:
        return [0]
    ratio = span / (patch * (1.0 - overlap))
    count = math.ceil(ratio - _RATIO_TOLERANCE) + 1
    starts = np.round(np.linspace(0, span, count)).astype(int)
    return [int(start) for start in np.unique(starts)]


def _monai_starts(size: int, patch: int, overlap: float) -> list[int]:
    """MONAI's sliding_window_inference: from 0 in steps of int(patch * (1 - overlap)) (at least
    1; the patch where it spans the axis), as many as it takes to reach the border, the last moved
    back to end at it."""
    step = patch if size == patch else max(1, int(patch * (1 - overlap)))
    count = next((d for d in range(math.ceil(size / step)) if d * step + patch >= size), 0) + 1
    return [min(index * step, size - patch) for index in range(count)]


def window_grid(shape: Sequence[int], patch: Sequence[int], overlap: float, placement: str = "even") -> list[Window]:
    """All windows of `patch` over spatial `shape`, the last axis varying fastest, laid by
    `placement` (`window_starts`)."""
    if len(shape) != len(patch):
        raise ValueError(f"shape {tuple(shape)} and patch {tuple(patch)} differ in dimensions")
    per_axis = [
        [slice(start, start + p) for start in window_starts(s, p, overlap, placement)]
        for s, p in zip(shape, patch)
    ]
    return [tuple(window) for window in itertools.product(*per_axis)]


def scaled(window: Window, scale: int) -> Window:
    """The window `scale` times larger on every axis (an output window in input voxels)."""
    return tuple(slice(part.start * scale, part.stop * scale) for part in window)
