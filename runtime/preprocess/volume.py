"""The array that preprocessing works on, with its spacing, foreground and optional mask.

Frames: every array is channels first, `(C, *spatial)`, in the model's axis order (2 or 3 spatial
axes); `spacing` is in mm per spatial axis in that same order. Masks are `(*spatial)` booleans.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from runtime.errors import InputError


@dataclass
class Volume:
    """A channels-first float32 image on one grid, plus the boolean maps that follow its geometry."""

    array: np.ndarray
    spacing: tuple[float, ...]
    foreground: np.ndarray
    mask: np.ndarray | None = None

    @classmethod
    def from_array(cls, array: np.ndarray, spacing: Sequence[float], mask: np.ndarray | None = None) -> Volume:
        """Wrap a raw `(C, *spatial)` array; foreground = voxels non-zero in any channel."""
        array = np.asarray(array)
        if array.ndim not in (3, 4):
            raise InputError(
                f"expected a channels-first array (C, *spatial) with 2 or 3 spatial axes, got shape {array.shape}; "
                "add a channel axis of length 1 for a single-channel image."
            )
        volume = cls(
            array=array.astype(np.float32, copy=False),
            spacing=tuple(float(s) for s in spacing),
            foreground=nonzero_any(array),
            mask=None if mask is None else np.asarray(mask, dtype=bool),
        )
        check_volume(volume)
        return volume

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[1:])


def nonzero_any(array: np.ndarray) -> np.ndarray:
    """Voxels non-zero in any channel of a channels-first array, as a boolean (*spatial) map."""
    foreground = np.not_equal(array[0], 0)
    for channel in array[1:]:
        np.logical_or(foreground, np.not_equal(channel, 0), out=foreground)
    return foreground


def check_volume(volume: Volume) -> None:
    """Refuse a volume whose parts do not agree on the grid."""
    shape = volume.array.shape
    if volume.array.ndim not in (3, 4) or shape[0] < 1:
        raise InputError(f"expected an array (C, *spatial) with 2 or 3 spatial axes, got shape {shape}.")
    spatial = shape[1:]
    if len(volume.spacing) != len(spatial):
        raise InputError(
            f"spacing {volume.spacing} has {len(volume.spacing)} values but the image has {len(spatial)} "
            f"spatial axes (shape {shape}); give one spacing per spatial axis."
        )
    if not all(math.isfinite(s) and s > 0 for s in volume.spacing):
        raise InputError(f"spacing must be positive finite mm values, got {volume.spacing}.")
    for name in ("foreground", "mask"):
        part = getattr(volume, name)
        if part is not None and tuple(part.shape) != tuple(spatial):
            raise InputError(f"the {name} has shape {tuple(part.shape)} but the image's spatial shape is {spatial}.")
