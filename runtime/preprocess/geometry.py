"""Geometric steps (resample, resize, crop_nonzero, pad) and the transforms that undo them.

Frames: arrays are `(C, *spatial)`; shapes, spacings (mm) and boxes are per spatial axis in the
array's own axis order. SimpleITK indexes images in reverse (x first), so every per-axis value is
reversed on the way in. Voxel 0 of every resampled grid sits at the same physical point as voxel 0
of the input grid; points past the input's last voxel take, along each axis on its own, the end
voxel's value (linear interpolation over the end voxels repeated once).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import SimpleITK as sitk

from runtime.errors import InputError
from runtime.preprocess.nnunet_resample import ResampledNnunet, nnunet_shape
from runtime.preprocess.volume import Volume

Shape = tuple[int, ...]
Box = tuple[tuple[int, int], ...]


def _resample_channel(channel: np.ndarray, in_spacing: Sequence[float], out_shape: Shape,
                      out_spacing: Sequence[float], out_origin: Sequence[float], nearest: bool,
                      in_origin: Sequence[float]) -> np.ndarray:
    if not nearest:
        channel, in_origin = _bordered(channel, in_spacing, out_shape, out_spacing, out_origin, in_origin)
    image = sitk.GetImageFromArray(np.ascontiguousarray(channel))
    image.SetSpacing([float(s) for s in reversed(in_spacing)])
    image.SetOrigin([float(o) for o in reversed(in_origin)])
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(n) for n in reversed(out_shape)])
    resampler.SetOutputSpacing([float(s) for s in reversed(out_spacing)])
    resampler.SetOutputOrigin([float(o) for o in reversed(out_origin)])
    resampler.SetInterpolator(sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear)
    resampler.SetUseNearestNeighborExtrapolator(True)
    return sitk.GetArrayFromImage(resampler.Execute(image))


def _bordered(channel: np.ndarray, in_spacing: Sequence[float], out_shape: Shape, out_spacing: Sequence[float],
              out_origin: Sequence[float], in_origin: Sequence[float]) -> tuple[np.ndarray, list[float]]:
    """`channel` with its end voxels repeated once along each axis whose output points reach past
    its first or last voxel, and its origin moved to match: linear interpolation there then holds
    each axis at its end on its own (ITK's nearest-neighbour extrapolation, used past the grid,
    would snap every axis to a voxel and leave the outermost output voxels blocky)."""
    widths, origin = [], [float(o) for o in in_origin]
    for axis, size in enumerate(channel.shape):
        first = (float(out_origin[axis]) - origin[axis]) / float(in_spacing[axis])
        last = first + (out_shape[axis] - 1) * float(out_spacing[axis]) / float(in_spacing[axis])
        before, after = int(first < 0), int(last > size - 1)
        widths.append((before, after))
        origin[axis] -= before * float(in_spacing[axis])
    if not any(before or after for before, after in widths):
        return channel, origin
    return np.pad(channel, widths, mode="edge"), origin


def resample_array(array: np.ndarray, in_spacing: Sequence[float], out_shape: Shape,
                   out_spacing: Sequence[float], out_origin: Sequence[float], nearest: bool,
                   in_origin: Sequence[float] | None = None) -> np.ndarray:
    """Resample each channel of `(C, *spatial)` (whose voxel 0 sits at `in_origin`, default 0)
    onto the grid described by the out_ values."""
    in_origin = [0.0] * len(out_shape) if in_origin is None else in_origin
    if (tuple(array.shape[1:]) == tuple(out_shape) and tuple(in_spacing) == tuple(out_spacing)
            and tuple(map(float, out_origin)) == tuple(map(float, in_origin))):
        return array
    work = array.view(np.uint8) if array.dtype == bool else array
    out = np.empty((work.shape[0], *out_shape), dtype=work.dtype)
    for c in range(work.shape[0]):
        _resample_by_slab(work[c], in_spacing, out[c], out_spacing, out_origin, nearest, in_origin)
    return out.view(bool) if array.dtype == bool else out


# Voxels of the input or of the output that one resampling call holds at most: a larger channel is
# resampled a slab of output rows at a time, from the input rows that slab reads, so that ITK's copy
# of the input is a slab's and not the whole channel's (a 512 x 512 x 1000 CT in float32 is 1 GiB).
SLAB_VOXELS = 16 * 2**20


def _resample_by_slab(channel: np.ndarray, in_spacing: Sequence[float], out: np.ndarray,
                      out_spacing: Sequence[float], out_origin: Sequence[float], nearest: bool,
                      in_origin: Sequence[float]) -> None:
    """Resample `channel` into `out`, a slab of `out`'s first axis at a time where either is large."""
    rows, size = out.shape[0], channel.shape[0]
    step = float(out_spacing[0]) / float(in_spacing[0])
    start = (float(out_origin[0]) - float(in_origin[0])) / float(in_spacing[0])
    per_row = max(math.prod(out.shape[1:]), math.ceil(math.prod(channel.shape[1:]) * max(step, 1.0)))
    slab = max(1, SLAB_VOXELS // per_row)
    if slab >= rows and channel.size <= SLAB_VOXELS:
        out[...] = _resample_channel(channel, in_spacing, out.shape, out_spacing, out_origin, nearest, in_origin)
        return
    for first in range(0, rows, slab):
        stop = min(first + slab, rows)
        low, high = rows_read(first, stop, start, step, size)
        out[first:stop] = _resample_channel(
            channel[low:high], in_spacing, (stop - first, *out.shape[1:]), out_spacing,
            [float(out_origin[0]) + first * float(out_spacing[0]), *out_origin[1:]], nearest,
            [float(in_origin[0]) + low * float(in_spacing[0]), *in_origin[1:]])


def rows_read(first: int, stop: int, origin: float, step: float, size: int) -> tuple[int, int]:
    """Rows [c, d) of a grid of `size` rows along the first axis that interpolating at its rows
    `origin + i * step`, for first <= i < stop, reads: the neighbours of each point and one row
    more on each side; points past either end read the end row."""
    if stop <= first:
        return 0, 0
    low = min(max(math.floor(origin + first * step) - 1, 0), size - 1)
    high = max(min(math.ceil(origin + (stop - 1) * step) + 2, size), low + 1)
    return low, high


def _empty_rows(output: np.ndarray, shape: Shape) -> np.ndarray:
    return np.empty((output.shape[0], 0, *shape[1:]), dtype=output.dtype)


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

    def rows_after(self, first: int, stop: int) -> tuple[int, int]:
        """The rows of the grid after this step that rows [first, stop) before it are made from."""
        step = self.spacing_before[0] / self.spacing_after[0]
        return rows_read(first, stop, 0.0, step, self.shape_after[0])

    def invert_rows(self, output: np.ndarray, at: int, first: int, stop: int, fill: np.ndarray,
                    nearest: bool) -> np.ndarray:
        """Rows [first, stop) of `invert`, from `output` holding rows from `at` on of the grid
        after this step (at least `rows_after(first, stop)`)."""
        if stop <= first:
            return _empty_rows(output, self.shape_before)
        rest = [0.0] * (len(self.shape_before) - 1)
        return resample_array(output, self.spacing_after, (stop - first, *self.shape_before[1:]), self.spacing_before,
                              [first * self.spacing_before[0], *rest], nearest, [at * self.spacing_after[0], *rest])


@dataclass(frozen=True)
class Resized:
    """A change of shape covering the same physical extent."""

    shape_before: Shape
    shape_after: Shape

    def invert(self, output: np.ndarray, fill: np.ndarray, nearest: bool) -> np.ndarray:
        return resize_array(output, self.shape_before, nearest)

    def apply(self, array: np.ndarray, nearest: bool) -> np.ndarray:
        return resize_array(array, self.shape_after, nearest)

    def _steps(self) -> list[float]:
        return [after / before for before, after in zip(self.shape_before, self.shape_after)]

    def rows_after(self, first: int, stop: int) -> tuple[int, int]:
        step = self._steps()[0]
        return rows_read(first, stop, 0.5 * step - 0.5, step, self.shape_after[0])

    def invert_rows(self, output: np.ndarray, at: int, first: int, stop: int, fill: np.ndarray,
                    nearest: bool) -> np.ndarray:
        if stop <= first:
            return _empty_rows(output, self.shape_before)
        steps = self._steps()
        origin = [0.5 * s - 0.5 for s in steps]
        origin[0] += first * steps[0]
        return resample_array(output, [1.0] * len(steps), (stop - first, *self.shape_before[1:]), steps, origin,
                              nearest, [float(at)] + [0.0] * (len(steps) - 1))


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

    def _inside(self, first: int, stop: int) -> tuple[int, int]:
        """Rows [first, stop) before the crop clipped to the box, in the same frame."""
        start, end = self.box[0]
        low = min(max(first, start), end)
        return low, max(min(stop, end), low)

    def rows_after(self, first: int, stop: int) -> tuple[int, int]:
        low, high = self._inside(first, stop)
        return low - self.box[0][0], high - self.box[0][0]

    def invert_rows(self, output: np.ndarray, at: int, first: int, stop: int, fill: np.ndarray,
                    nearest: bool) -> np.ndarray:
        full = np.empty((output.shape[0], stop - first, *self.shape_before[1:]), dtype=output.dtype)
        full[...] = _fill_like(fill, len(self.shape_before))
        low, high = self._inside(first, stop)
        begin = low - self.box[0][0] - at
        rows = output[:, begin:begin + high - low]
        full[(slice(None), slice(low - first, high - first), *(slice(a, b) for a, b in self.box[1:]))] = rows
        return full


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

    def rows_after(self, first: int, stop: int) -> tuple[int, int]:
        before = self.widths[0][0]
        return (first + before, stop + before) if stop > first else (0, 0)

    def invert_rows(self, output: np.ndarray, at: int, first: int, stop: int, fill: np.ndarray,
                    nearest: bool) -> np.ndarray:
        begin = first + self.widths[0][0] - at
        inner = (slice(b, b + n) for (b, _), n in zip(self.widths[1:], self.shape_before[1:]))
        return output[(slice(None), slice(begin, begin + max(stop - first, 0)), *inner)]


Transform = Union[Resampled, ResampledNnunet, Resized, Cropped, Padded]


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


def resampled_shape(shape: Shape, spacing: Sequence[float], target: Sequence[float], method: str = "linear") -> Shape:
    """Voxels per axis after resampling: max(1, size * spacing / target), rounded half up; the
    nnU-Net way (`method: nnunet`), as nnU-Net rounds it."""
    if method == "nnunet":
        return nnunet_shape(shape, spacing, target)
    return tuple(max(1, math.floor(n * s / t + 0.5)) for n, s, t in zip(shape, spacing, target))


def target_spacing(spacing: Sequence[float], target: Sequence[float | None]) -> tuple[float, ...]:
    """A resample step's spacing on a grid of `spacing`: null keeps that axis's spacing."""
    return tuple(float(s) if t is None else float(t) for s, t in zip(spacing, target))


def resample(volume: Volume, params: Mapping[str, Any]) -> tuple[Volume, Resampled | ResampledNnunet]:
    target = target_spacing(volume.spacing, _per_axis(volume, params, "spacing", "resample"))
    method = params.get("method", "linear")
    shape = resampled_shape(volume.spatial_shape, volume.spacing, target, method)
    if method == "nnunet":
        transform: Resampled | ResampledNnunet = ResampledNnunet(volume.spatial_shape, volume.spacing, shape, target)
        moved = _move(volume, lambda a, nearest: transform.apply(a, nearest))
        return replace(moved, spacing=target), transform
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
