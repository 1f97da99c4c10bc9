"""Geometric steps (resample, resize, crop_nonzero, pad) and the transforms that undo them.

Frames: arrays are `(C, *spatial)`; shapes, spacings (mm) and boxes are per spatial axis in the
array's own axis order. SimpleITK indexes images in reverse (x first), so every per-axis value is
reversed on the way in. Voxel 0 of every resampled grid sits at the same physical point as voxel 0
of the input grid; points past the input's last voxel take the nearest voxel's value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import SimpleITK as sitk

from runtime.errors import InputError
from runtime.preprocess.volume import Volume

Shape = tuple[int, ...]
Box = tuple[tuple[int, int], ...]


def _resample_channel(channel: np.ndarray, in_spacing: Sequence[float], out_shape: Shape,
                      out_spacing: Sequence[float], out_origin: Sequence[float], nearest: bool) -> np.ndarray:
    image = sitk.GetImageFromArray(np.ascontiguousarray(channel))
    image.SetSpacing([float(s) for s in reversed(in_spacing)])
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(n) for n in reversed(out_shape)])
    resampler.SetOutputSpacing([float(s) for s in reversed(out_spacing)])
    resampler.SetOutputOrigin([float(o) for o in reversed(out_origin)])
    resampler.SetInterpolator(sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear)
    resampler.SetUseNearestNeighborExtrapolator(True)
    return sitk.GetArrayFromImage(resampler.Execute(image))


def resample_array(array: np.ndarray, in_spacing: Sequence[float], out_shape: Shape,
                   out_spacing: Sequence[float], out_origin: Sequence[float], nearest: bool) -> np.ndarray:
    """Resample each channel of `(C, *spatial)` (input origin 0) onto the grid described by the out_ values."""
    if (tuple(array.shape[1:]) == tuple(out_shape) and tuple(in_spacing) == tuple(out_spacing)
            and not any(out_origin)):
        return array
    work = array.view(np.uint8) if array.dtype == bool else array
    out = np.empty((work.shape[0], *out_shape), dtype=work.dtype)
    for c in range(work.shape[0]):
        out[c] = _resample_channel(work[c], in_spacing, out_shape, out_spacing, out_origin, nearest)
    return out.view(bool) if array.dtype == bool else out


def resize_array(array: np.ndarray, out_shape: Shape, nearest: bool) -> np.ndarray:
    """Resize `(C, *spatial)` to `out_shape`, with the first and last voxels' outer edges aligned."""
    in_shape = array.shape[1:]
    out_spacing = [n_in / n_out for n_in, n_out in zip(in_shape, out_shape)]
    out_origin = [0.5 * s - 0.5 for s in out_spacing]
    return resample_array(array, [1.0] * len(in_shape), out_shape, out_spacing, out_origin, nearest)


def _fill_like(fill: np.ndarray, spatial_ndim: int) -> np.ndarray:
    return fill.reshape((-1,) + (1,) * spatial_ndim)


@dataclass(frozen=True)
class Resampled:
    """A change of spacing; both grids have voxel 0 at the same physical point."""

    shape_before: Shape
    spacing_before: tuple[float, ...]
    shape_after: Shape
    spacing_after: tuple[float, ...]

    def invert(self, output: np.ndarray, fill: np.ndarray, nearest: bool) -> np.ndarray:
        origin = [0.0] * len(self.shape_before)
        return resample_array(output, self.spacing_after, self.shape_before, self.spacing_before, origin, nearest)

    def apply(self, array: np.ndarray, nearest: bool) -> np.ndarray:
        origin = [0.0] * len(self.shape_after)
        return resample_array(array, self.spacing_before, self.shape_after, self.spacing_after, origin, nearest)


@dataclass(frozen=True)
class Resized:
    """A change of shape covering the same physical extent."""

    shape_before: Shape
    shape_after: Shape

    def invert(self, output: np.ndarray, fill: np.ndarray, nearest: bool) -> np.ndarray:
        return resize_array(output, self.shape_before, nearest)

    def apply(self, array: np.ndarray, nearest: bool) -> np.ndarray:
        return resize_array(array, self.shape_after, nearest)


@dataclass(frozen=True)
class Cropped:
    """A crop to `box`: per axis [start, stop) on the grid before the crop."""

    shape_before: Shape
    box: Box

    def invert(self, output: np.ndarray, fill: np.ndarray, nearest: bool) -> np.ndarray:
        full = np.empty((output.shape[0], *self.shape_before), dtype=output.dtype)
        full[...] = _fill_like(fill, len(self.shape_before))
        full[(slice(None), *(slice(a, b) for a, b in self.box))] = output
        return full

    def apply(self, array: np.ndarray, nearest: bool) -> np.ndarray:
        return array[(slice(None), *(slice(a, b) for a, b in self.box))]


@dataclass(frozen=True)
class Padded:
    """Padding: per axis (before, after) voxels added around the grid of shape `shape_before`."""

    shape_before: Shape
    widths: Box

    def invert(self, output: np.ndarray, fill: np.ndarray, nearest: bool) -> np.ndarray:
        inner = (slice(b, b + n) for (b, _), n in zip(self.widths, self.shape_before))
        return output[(slice(None), *inner)]

    def apply(self, array: np.ndarray, nearest: bool) -> np.ndarray:
        return np.pad(array, ((0, 0), *self.widths))


Transform = Union[Resampled, Resized, Cropped, Padded]


def _per_axis(volume: Volume, params: Mapping[str, Any], key: str, step: str) -> tuple[Any, ...]:
    values = tuple(params[key])
    ndim = len(volume.spatial_shape)
    if len(values) != ndim:
        raise InputError(
            f"{step}: {key} {list(values)} has {len(values)} values but the image has {ndim} spatial axes "
            f"(shape {volume.spatial_shape}); the model expects {len(values)}-D input."
        )
    return values


def _move(volume: Volume, change: Callable[[np.ndarray, bool], np.ndarray]) -> Volume:
    """Apply one grid change to the image (linear) and to the foreground and mask (nearest)."""
    mask = None if volume.mask is None else change(volume.mask[None], True)[0]
    return replace(volume, array=change(volume.array, False), foreground=change(volume.foreground[None], True)[0],
                   mask=mask)


def resampled_shape(shape: Shape, spacing: Sequence[float], target: Sequence[float]) -> Shape:
    """Voxels per axis after resampling: max(1, size * spacing / target), rounded half up."""
    return tuple(max(1, math.floor(n * s / t + 0.5)) for n, s, t in zip(shape, spacing, target))


def resample(volume: Volume, params: Mapping[str, Any]) -> tuple[Volume, Resampled]:
    target = tuple(float(t) for t in _per_axis(volume, params, "spacing", "resample"))
    shape = resampled_shape(volume.spatial_shape, volume.spacing, target)
    origin = [0.0] * len(shape)
    moved = _move(volume, lambda a, nearest: resample_array(a, volume.spacing, shape, target, origin, nearest))
    return replace(moved, spacing=target), Resampled(volume.spatial_shape, volume.spacing, shape, target)


def resize(volume: Volume, params: Mapping[str, Any]) -> tuple[Volume, Resized]:
    shape = tuple(int(n) for n in _per_axis(volume, params, "shape", "resize"))
    spacing = tuple(s * n / m for s, n, m in zip(volume.spacing, volume.spatial_shape, shape))
    moved = _move(volume, lambda a, nearest: resize_array(a, shape, nearest))
    return replace(moved, spacing=spacing), Resized(volume.spatial_shape, shape)


def foreground_box(foreground: np.ndarray, margin: int) -> Box:
    """Per axis [start, stop) of the foreground's bounding box, widened by margin and kept inside the grid."""
    box = []
    for axis, size in enumerate(foreground.shape):
        others = tuple(a for a in range(foreground.ndim) if a != axis)
        hits = np.flatnonzero(foreground.any(axis=others))
        box.append((max(0, int(hits[0]) - margin), min(size, int(hits[-1]) + 1 + margin)))
    return tuple(box)


def crop_nonzero(volume: Volume, params: Mapping[str, Any]) -> tuple[Volume, Cropped]:
    if not volume.foreground.any():
        raise InputError(
            "crop_nonzero: the image has no non-zero voxel, so there is nothing to crop to; "
            "check that the right file was given."
        )
    box = foreground_box(volume.foreground, int(params["margin"]))
    inner = tuple(slice(a, b) for a, b in box)
    mask = None if volume.mask is None else volume.mask[inner]
    cropped = replace(volume, array=volume.array[(slice(None), *inner)], foreground=volume.foreground[inner], mask=mask)
    return cropped, Cropped(volume.spatial_shape, box)


def pad_volume(volume: Volume, widths: Box, value: float) -> Volume:
    """Pad the image with `value` and the foreground and mask with False."""
    if not any(b or a for b, a in widths):
        return volume
    mask = None if volume.mask is None else np.pad(volume.mask, widths)
    array = np.pad(volume.array, ((0, 0), *widths), constant_values=np.float32(value))
    return replace(volume, array=array, foreground=np.pad(volume.foreground, widths), mask=mask)


def pad(volume: Volume, params: Mapping[str, Any]) -> tuple[Volume, Padded]:
    target = _per_axis(volume, params, "shape", "pad")
    missing = [max(0, int(t) - n) for t, n in zip(target, volume.spatial_shape)]
    widths = tuple((m // 2, m - m // 2) for m in missing)
    return pad_volume(volume, widths, params["value"]), Padded(volume.spatial_shape, widths)


def pad_to_min_shape(volume: Volume, min_shape: Sequence[int]) -> tuple[Volume, Padded | None]:
    """Pad at the end of each axis shorter than `min_shape` (with 0), so a sliding window fits."""
    if len(min_shape) != len(volume.spatial_shape):
        raise InputError(
            f"the window's patch size {list(min_shape)} has {len(min_shape)} axes but the preprocessed image "
            f"has {len(volume.spatial_shape)} (shape {volume.spatial_shape}); the model expects {len(min_shape)}-D input."
        )
    widths = tuple((0, max(0, int(m) - n)) for m, n in zip(min_shape, volume.spatial_shape))
    if not any(after for _, after in widths):
        return volume, None
    return pad_volume(volume, widths, 0.0), Padded(volume.spatial_shape, widths)
