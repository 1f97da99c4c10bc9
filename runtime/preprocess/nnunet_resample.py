"""Resampling as nnU-Net v2 does it (`resample: {spacing: [...], method: nnunet}`).

nnU-Net's default resampling, followed here so that a model trained with it sees the grid it was
trained on:

- the new shape per axis is `round(old_spacing / new_spacing * size)` (Python's rounding, half to
  even), and the two grids are edge-aligned: output voxel i samples input coordinate
  `(i + 0.5) * size_in / size_out - 0.5`, points past either end taking the end voxel's value;
- the image is interpolated with a cubic B-spline (order 3) and clipped to the range of the values
  it was interpolated from, as scikit-image's `resize` does;
- where one spacing (the scan's, else the target's) has an axis more than three times coarser than
  its finest one, and that axis is the only coarsest one, each slice across that axis is
  interpolated on its own and the slices along it are taken by nearest neighbour;
- the model's outputs go back with order 1 (linear) under the same rule, the coarse axis decided
  from the model's spacing first;
- the foreground and mask move by nearest neighbour (order 0).

Arrays are `(C, *spatial)`; the slices along the first axis can be made a slab at a time, from the
input rows the slab reads (`rows_read`), so that a large volume never needs a whole float64 copy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

Shape = tuple[int, ...]

# nnU-Net's ANISO_THRESHOLD: an axis this many times coarser than the finest is resampled apart.
ANISOTROPY = 3.0
# Rows read past a slab on each side for a cubic spline: its prefilter's influence falls by
# (2 - sqrt(3)) per row, below 1e-9 of a value after 16 rows.
SPLINE_MARGIN = 16
# Voxels of one channel resampled in one call; a larger channel goes a slab of output rows at a time.
SLAB_VOXELS = 16 * 2**20


def nnunet_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> Shape:
    """Voxels per axis after resampling, as nnU-Net computes them (at least 1)."""
    return tuple(max(1, int(round(float(s) / float(t) * int(n)))) for n, s, t in zip(shape, spacing, target))


def coarse_axis(spacing: Sequence[float], target: Sequence[float]) -> int | None:
    """The axis resampled apart (nearest neighbour along it) when going from `spacing` to
    `target`, or None: the first of the two spacings with an axis more than ANISOTROPY times its
    finest decides, and only a single coarsest axis is taken."""
    for values in (spacing, target):
        values = [float(v) for v in values]
        if len(values) == 3 and max(values) / min(values) > ANISOTROPY:
            coarsest = [axis for axis, v in enumerate(values) if max(values) / v == 1]
            return coarsest[0] if len(coarsest) == 1 else None
    return None


def source_points(size_in: int, size_out: int, first: int = 0, stop: int | None = None) -> np.ndarray:
    """The input coordinates that output points [first, stop) of an edge-aligned axis sample."""
    stop = size_out if stop is None else stop
    scale = float(size_in) / size_out
    return scale * (np.arange(first, stop, dtype=np.float64) + 0.5) - 0.5


def nearest_sources(size_in: int, size_out: int, first: int = 0, stop: int | None = None) -> np.ndarray:
    """The input index each output point [first, stop) of an edge-aligned axis takes by nearest
    neighbour (scipy's rounding, as nnU-Net's map_coordinates with order 0)."""
    points = source_points(size_in, size_out, first, stop)
    taken = ndimage.map_coordinates(np.arange(size_in, dtype=np.float64), points[None], order=0, mode="nearest")
    return taken.astype(np.intp)


def rows_read(size_in: int, size_out: int, first: int, stop: int, order: int) -> tuple[int, int]:
    """Rows [c, d) of an edge-aligned axis of `size_in` rows that output rows [first, stop)
    interpolated with `order` read (with SPLINE_MARGIN more each side for a cubic spline)."""
    if stop <= first:
        return 0, 0
    points = source_points(size_in, size_out, first, stop)
    margin = SPLINE_MARGIN if order > 1 else 1
    low = min(max(math.floor(points[0]) - margin, 0), size_in - 1)
    high = max(min(math.floor(points[-1]) + 1 + margin, size_in), low + 1)
    return low, high


def _zoom(plane: np.ndarray, out_shape: Shape, order: int) -> np.ndarray:
    """`plane` resized to `out_shape` as scikit-image's `resize(mode="edge", anti_aliasing=False)`
    does it: edge-aligned, points past the ends at the end values, clipped to the input's range."""
    factors = np.divide(plane.shape, out_shape)
    out = ndimage.zoom(plane.astype(np.float64), [1 / f for f in factors], order=order, mode="nearest",
                       grid_mode=True)
    if order > 1:
        np.clip(out, plane.min(), plane.max(), out=out)
    return out


def _zoom_rows(data: np.ndarray, at: int, size_in: int, out_shape: Shape, first: int, stop: int,
               order: int, value_range: tuple[float, float] | None) -> np.ndarray:
    """Rows [first, stop) of the whole grid (size_in rows along axis 0, the rest as `data`'s)
    resized to `out_shape`, from `data` holding its rows [at, at + n) (at least `rows_read`)."""
    ratios = [float(size_in) / out_shape[0]] + [float(n) / m for n, m in zip(data.shape[1:], out_shape[1:])]
    offset = [0.5 * r - 0.5 for r in ratios]
    offset[0] += first * ratios[0] - at
    out = ndimage.affine_transform(data.astype(np.float64), ratios, offset=offset,
                                   output_shape=(stop - first, *out_shape[1:]), order=order, mode="nearest",
                                   prefilter=order > 1)
    if value_range is not None:
        np.clip(out, *value_range, out=out)
    return out


@dataclass(frozen=True)
class Plan:
    """How one channel goes from `shape_in` to `shape_out`: the interpolation order and the axis
    resampled apart (None: all axes together)."""

    shape_in: Shape
    shape_out: Shape
    order: int
    axis: int | None

    def rows_read(self, first: int, stop: int) -> tuple[int, int]:
        """Input rows along axis 0 that output rows [first, stop) read."""
        if stop <= first:
            return 0, 0
        if self.axis == 0:
            taken = nearest_sources(self.shape_in[0], self.shape_out[0], first, stop)
            return int(taken.min()), int(taken.max()) + 1
        return rows_read(self.shape_in[0], self.shape_out[0], first, stop, self.order)

    def rows(self, data: np.ndarray, at: int, first: int, stop: int) -> np.ndarray:
        """Output rows [first, stop) (float64) from `data`, the input's rows [at, at + n) (at least
        `rows_read`), for order 0 or 1, which need no clipping."""
        if self.axis is None:
            return _zoom_rows(data, at, self.shape_in[0], self.shape_out, first, stop, self.order, None)
        out = np.empty((stop - first, *self.shape_out[1:]), dtype=np.float64)
        if self.axis == 0:
            taken = nearest_sources(self.shape_in[0], self.shape_out[0], first, stop) - at
            _zoom_planes(data, out, 0, taken, self.shape_out[1:], self.order)
            return out
        rest = tuple(n for a, n in enumerate(self.shape_out) if a != self.axis)
        for index, source in enumerate(nearest_sources(self.shape_in[self.axis], self.shape_out[self.axis])):
            plane = np.take(data, int(source), axis=self.axis)
            out[(slice(None),) * self.axis + (index,)] = _zoom_rows(plane, at, self.shape_in[0], rest, first, stop,
                                                                    self.order, None)
        return out


def plan_for(shape_in: Sequence[int], shape_out: Sequence[int], order: int,
             deciding: tuple[Sequence[float], Sequence[float]]) -> Plan:
    """The plan of one resampling; `deciding` are the two spacings that decide the coarse axis, in
    nnU-Net's order (the grid's own first)."""
    return Plan(tuple(int(n) for n in shape_in), tuple(int(n) for n in shape_out), order, coarse_axis(*deciding))


def resample_channels(array: np.ndarray, plan: Plan) -> np.ndarray:
    """Every channel of `(C, *plan.shape_in)` resampled to `plan.shape_out`, in `array`'s dtype: plane by
    plane across a coarse axis, else a slab of output rows at a time where a channel is large."""
    if plan.shape_in == plan.shape_out:
        return array
    work = array.view(np.uint8) if array.dtype == bool else array
    out = np.empty((work.shape[0], *plan.shape_out), dtype=work.dtype)
    for c in range(work.shape[0]):
        if plan.axis is None:
            _by_slab(work[c], out[c], plan)
        else:
            _by_plane(work[c], out[c], plan)
    return out.view(bool) if array.dtype == bool else out


def _by_plane(channel: np.ndarray, out: np.ndarray, plan: Plan) -> None:
    axis = plan.axis
    assert axis is not None
    rest = tuple(n for a, n in enumerate(plan.shape_out) if a != axis)
    _zoom_planes(channel, out, axis, nearest_sources(plan.shape_in[axis], plan.shape_out[axis]), rest, plan.order)


def _zoom_planes(data: np.ndarray, out: np.ndarray, axis: int, sources: np.ndarray, rest: Shape, order: int) -> None:
    """Plane i of `out` across `axis` = plane sources[i] of `data` resized to `rest` (`_zoom`), each
    source plane resized once for a run of outputs that take it."""
    made: tuple[int, np.ndarray] | None = None
    for index, source in enumerate(sources):
        if made is None or made[0] != int(source):
            made = (int(source), _zoom(np.take(data, int(source), axis=axis), rest, order))
        out[(slice(None),) * axis + (index,)] = _cast(made[1], out.dtype)


def _by_slab(channel: np.ndarray, out: np.ndarray, plan: Plan) -> None:
    if max(channel.size, out.size) <= SLAB_VOXELS:
        out[...] = _cast(_zoom(channel, plan.shape_out, plan.order), out.dtype)
        return
    value_range = (float(channel.min()), float(channel.max())) if plan.order > 1 else None
    rows = plan.shape_out[0]
    slab = max(1, SLAB_VOXELS // max(math.prod(plan.shape_out[1:]), math.prod(plan.shape_in[1:])))
    for first in range(0, rows, slab):
        stop = min(first + slab, rows)
        low, high = plan.rows_read(first, stop)
        out[first:stop] = _cast(_zoom_rows(channel[low:high], low, plan.shape_in[0], plan.shape_out, first, stop,
                                           plan.order, value_range), out.dtype)


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        return np.rint(values).astype(dtype)
    return values.astype(dtype)


@dataclass(frozen=True)
class ResampledNnunet:
    """A change of spacing the nnU-Net way (edge-aligned grids; see the module's documentation)."""

    shape_before: Shape
    spacing_before: tuple[float, ...]
    shape_after: Shape
    spacing_after: tuple[float, ...]

    def _back(self, nearest: bool) -> Plan:
        return plan_for(self.shape_after, self.shape_before, 0 if nearest else 1,
                        (self.spacing_after, self.spacing_before))

    def invert(self, output: np.ndarray, fill: np.ndarray, nearest: bool) -> np.ndarray:
        return resample_channels(output, self._back(nearest))

    def apply(self, array: np.ndarray, nearest: bool) -> np.ndarray:
        plan = plan_for(self.shape_before, self.shape_after, 0 if nearest else 3,
                        (self.spacing_before, self.spacing_after))
        return resample_channels(array, plan)

    def rows_after(self, first: int, stop: int) -> tuple[int, int]:
        """The rows of the grid after this step that rows [first, stop) before it are made from."""
        return self._back(False).rows_read(first, stop)

    def invert_rows(self, output: np.ndarray, at: int, first: int, stop: int, fill: np.ndarray,
                    nearest: bool) -> np.ndarray:
        """Rows [first, stop) of `invert`, from `output` holding rows from `at` on of the grid
        after this step (at least `rows_after(first, stop)`)."""
        plan = self._back(nearest)
        out = np.empty((output.shape[0], max(stop - first, 0), *self.shape_before[1:]), dtype=output.dtype)
        if stop > first:
            for c in range(output.shape[0]):
                channel = output[c].view(np.uint8) if output.dtype == bool else output[c]
                rows = _cast(plan.rows(channel, at, first, stop), channel.dtype)
                out[c] = rows.view(bool) if output.dtype == bool else rows
        return out
