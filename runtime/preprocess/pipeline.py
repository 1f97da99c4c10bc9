"""Run a manifest's steps on a volume, record what the geometric ones did, and invert from that record."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from runtime.errors import InputError, ManifestError, ModelError
from runtime.preprocess.geometry import Transform, pad_to_min_shape, resampled_shape, target_spacing
from runtime.preprocess.steps import STEPS, Step, StepSpec, check_step, with_defaults
from runtime.preprocess.volume import Volume, check_volume

INTERPOLATIONS = ("linear", "nearest")


@dataclass(frozen=True)
class Record:
    """What preprocessing did to the grid: the original and final grids and each geometric change, in order."""

    original_shape: tuple[int, ...]
    original_spacing: tuple[float, ...]
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    transforms: tuple[Transform, ...]


def _resolve(step: Step, index: int) -> tuple[StepSpec, dict[str, Any]]:
    params = dict(step.params) if isinstance(step.params, Mapping) else step.params
    problems = check_step(step.name, params)
    if problems:
        raise ManifestError(
            f"preprocessing step {index} ({step.name!r}) is invalid: {'; '.join(problems)}. "
            "Fix the step's params; runtime.preprocess documents every step."
        )
    spec = STEPS[step.name]
    return spec, with_defaults(spec, params)


def _private_float32(volume: Volume, caller_array: np.ndarray | None) -> Volume:
    """A volume whose array may be changed in place without touching the caller's array (None: the
    caller gave its array up)."""
    if volume.array.dtype == np.float32 and (
            caller_array is None or not np.may_share_memory(volume.array, caller_array)):
        return volume
    return replace(volume, array=np.array(volume.array, dtype=np.float32))


def run_steps(volume: Volume, steps: Sequence[Step], min_shape: Sequence[int] | None = None,
              overwrite: bool = False) -> tuple[Volume, Record]:
    """Apply `steps` in order; then pad at the end of any axis shorter than `min_shape`.

    The caller's volume is left unchanged (the result's float32 array may still be a view of the
    caller's array when no step changed any value), unless `overwrite` is true: then intensity
    steps work in place on a float32 array of the caller's, which saves a copy of the whole image
    when the caller no longer needs it. Geometric steps move the image (linear) with
    its foreground and mask (nearest); intensity steps change only the image.
    """
    check_volume(volume)
    resolved = [_resolve(step, i) for i, step in enumerate(steps)]
    current, transforms = volume, []
    for spec, params in resolved:
        if spec.in_place:
            current = _private_float32(current, None if overwrite else volume.array)
        current, transform = spec.apply(current, params)
        if transform is not None:
            transforms.append(transform)
    if min_shape is not None:
        current, transform = pad_to_min_shape(current, min_shape)
        if transform is not None:
            transforms.append(transform)
    if current.array.dtype != np.float32:
        current = replace(current, array=current.array.astype(np.float32))
    record = Record(volume.spatial_shape, tuple(volume.spacing), current.spatial_shape, tuple(current.spacing),
                    tuple(transforms))
    return current, record


def planned_shape(steps: Sequence[Step], shape: Sequence[int], spacing: Sequence[float],
                  min_shape: Sequence[int] | None = None) -> tuple[int, ...]:
    """The largest grid `run_steps` can make of an image of this shape and spacing, from the
    steps' parameters alone (a crop is taken to keep everything), so that the work can be sized
    before any voxel is read. A step whose axes do not match the image is passed over here; running
    it refuses the image."""
    shape, spacing = tuple(int(n) for n in shape), tuple(float(s) for s in spacing)
    for step in steps:
        values = step.params.get("spacing", step.params.get("shape"))
        if values is None or len(values) != len(shape):
            continue
        if step.name == "resample":
            target = target_spacing(spacing, values)
            shape = resampled_shape(shape, spacing, target, step.params.get("method", "linear"))
            spacing = target
        elif step.name == "resize":
            shape, spacing = tuple(int(v) for v in values), tuple(s * n / m for s, n, m in zip(spacing, shape, values))
        elif step.name == "pad":
            shape = tuple(max(n, int(v)) for n, v in zip(shape, values))
    if min_shape is not None and len(min_shape) == len(shape):
        shape = tuple(max(n, int(m)) for n, m in zip(shape, min_shape))
    return shape


def _check_output(record: Record, output: np.ndarray, fill: np.ndarray) -> None:
    if output.ndim != len(record.shape) + 1 or tuple(output.shape[1:]) != record.shape:
        raise ModelError(
            f"the model output has shape {output.shape}, but the preprocessed grid is {record.shape}: "
            f"expected (K, {', '.join(map(str, record.shape))}). The model changed the grid it was given."
        )
    if fill.shape != (output.shape[0],):
        raise ValueError(f"fill must hold one value per output channel ({output.shape[0]}), got shape {fill.shape}")


def invert(record: Record, output: np.ndarray, fill: np.ndarray, interpolation: str = "linear") -> np.ndarray:
    """Map `(K, *preprocessed grid)` back onto `(K, *original grid)`, undoing the geometric steps in reverse.

    Regions a crop removed get `fill` (one value per channel). "linear" suits probabilities (the result
    is floating point); "nearest" suits labels (the dtype is kept).
    """
    output, fill, nearest = _inverted_types(output, fill, interpolation)
    _check_output(record, output, fill)
    for transform in reversed(record.transforms):
        output = transform.invert(output, fill, nearest)
    return np.ascontiguousarray(output)


def _inverted_types(output: np.ndarray, fill: np.ndarray, interpolation: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """The output as inversion takes it (float32 for "linear", its own dtype for "nearest"), the
    fill in that dtype, and whether the interpolation is nearest."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    nearest = interpolation == "nearest"
    output = np.asarray(output)
    if output.dtype == np.float16 or not (nearest or np.issubdtype(output.dtype, np.floating)):
        output = output.astype(np.float32)
    return output, np.asarray(fill, dtype=output.dtype).reshape(-1), nearest


def _row_ranges(record: Record, first: int, stop: int) -> list[tuple[int, int]]:
    """Rows [first, stop) of the original grid, then the rows of each grid after it that they come from."""
    ranges = [(first, stop)]
    for transform in record.transforms:
        ranges.append(transform.rows_after(*ranges[-1]))
    return ranges


def rows_needed(record: Record, first: int, stop: int) -> tuple[int, int]:
    """The rows [c, d) of the preprocessed grid's first axis that rows [first, stop) of the original
    grid are inverted from (`invert_rows`); (0, 0) when none."""
    return _row_ranges(record, first, stop)[-1]


def invert_rows(record: Record, output: np.ndarray, at: int, first: int, stop: int, fill: np.ndarray,
                interpolation: str = "linear") -> np.ndarray:
    """Rows [first, stop) of the original grid's first axis of what `invert` gives, from `output`
    (K, n, *rest of the preprocessed grid) holding its rows [at, at + n), which must include
    `rows_needed(record, first, stop)`. A whole output inverted a slab of rows at a time needs
    memory for the slab only, and gives what `invert` gives (up to rounding in the last bit)."""
    output, fill, nearest = _inverted_types(output, fill, interpolation)
    if output.ndim != len(record.shape) + 1 or tuple(output.shape[2:]) != record.shape[1:]:
        raise ModelError(f"rows of shape {output.shape} do not fit the preprocessed grid {record.shape}")
    ranges = _row_ranges(record, first, stop)
    low, high = ranges[-1]
    if high > low and (low < at or high > at + output.shape[1]):
        raise ValueError(f"rows [{low}, {high}) are needed but rows [{at}, {at + output.shape[1]}) were given")
    part = output[:, low - at:high - at] if high > low else output[:, :0]
    for transform, (begin, end), (start, _) in zip(reversed(record.transforms), reversed(ranges[:-1]),
                                                    reversed(ranges[1:])):
        part = transform.invert_rows(part, start, begin, end, fill, nearest)
    return np.ascontiguousarray(part)


def transfer(record: Record, array: np.ndarray, interpolation: str = "nearest") -> np.ndarray:
    """Move `(C, *original grid)` onto the preprocessed grid the way the image moved (a label map
    in training, say); padding adds 0. The forward twin of `invert`."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    if tuple(array.shape[1:]) != record.original_shape:
        raise InputError(f"an array of shape {array.shape[1:]} cannot follow an image of shape {record.original_shape}")
    for transform in record.transforms:
        array = transform.apply(array, interpolation == "nearest")
    return np.ascontiguousarray(array)
