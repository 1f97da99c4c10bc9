"""Mergers: where the outputs of a plan's passes are stitched (or averaged) into one result.

A merger checks each model output (`check`), takes each checked pass's output (`take`), and,
once every pass is in, gives the result (`finish`). Segmentation outputs (B, K, *patch) are
blended: each window's output, averaged over its mirrors, times the blending weights, added to
a weighted sum, then divided by the summed weights. Here that sum lives in memory
(`MemoryMerger`); `runtime.window.chunked.ChunkedMerger` keeps it on disk in bounded memory.
Per-window outputs (B, K) of a classifier are averaged (`MeanMerger`).

Finishing refuses voxels no window covered (unless a background is given for them) and
non-finite results, with ModelError. `take` and `finish` may share their work out with `share`
(a `Map`: e.g. a thread pool's map); the result does not depend on how.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from runtime.errors import InputError, ModelError
from runtime.window.grid import Window
from runtime.window.plan import Pass, Plan
from runtime.window.source import Map, in_order, row_parts

# Rows of the first patch axis that are multiplied and added at once: for a 3-channel 96x96
# patch, 4 rows make a 0.4 MB product, which stays in a core's cache.
ROWS_AT_ONCE = 4

# Rows of the first spatial axis per piece when the whole result is checked.
_SLAB_ROWS = 8


class Merger(Protocol):
    def check(self, output: np.ndarray, windows: int) -> np.ndarray:
        """The model's output for a batch of `windows` windows, checked, as an array."""
        ...

    def take(self, step: Pass, output: np.ndarray, share: Map = in_order, parts: int = 1) -> None:
        """Use one checked output before the next model call; `share` runs `parts` pieces."""
        ...

    def finish(self, background: np.ndarray | None = None, share: Map = in_order) -> object:
        """The result, once every pass is in; the merger cannot be used afterwards."""
        ...


def as_numeric(output: np.ndarray) -> np.ndarray:
    """The output as an array of real numbers, or ModelError."""
    output = np.asarray(output)
    if output.dtype.kind not in "biuf":
        raise ModelError(f"the model returned dtype {output.dtype}; expected real numbers")
    return output


class Blending:
    """What every blending merger does: check outputs against the plan's output patch, sum a
    batch's mirrored outputs, and add each window's sum times the blending weights (divided by
    the mirror count) to the store of a subclass, one `add_rows` call per piece of rows.

    A subclass implements `make(channels)` (the store, once the channel count is known) and
    `add_rows(window, prediction, factor, weights, rows)`; `parallel` says whether `add_rows`
    calls for disjoint rows may run side by side."""

    parallel = True

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.patch = plan.spec.output_patch
        self.weights = plan.weights
        self.factor = _scaled_weights(self.weights, plan.mirrors)
        self.channels: int | None = None
        self._buffer: np.ndarray | None = None
        self._finished = False

    def make(self, channels: int) -> None:
        raise NotImplementedError

    def add_rows(self, window: Window, prediction: np.ndarray, factor: np.ndarray | None,
                 weights: np.ndarray | None, rows: slice) -> None:
        raise NotImplementedError

    def check(self, output: np.ndarray, windows: int) -> np.ndarray:
        output = as_numeric(output)
        channels = output.shape[1] if output.ndim == len(self.patch) + 2 else -1
        expected = (windows, channels, *self.patch)
        if output.shape != expected or channels < 1 or (self.channels or channels) != channels:
            want = f"({windows}, K, {', '.join(map(str, self.patch))})"
            raise ModelError(
                f"the model returned shape {output.shape} for a batch of {windows} windows; "
                f"expected {want} with the same K for every batch"
            )
        if self.channels is None:
            self.channels = channels
            self.make(channels)
        return output

    def take(self, step: Pass, output: np.ndarray, share: Map = in_order, parts: int = 1) -> None:
        self._require_open()
        if step.flip:
            output = np.flip(output, tuple(axis + 2 for axis in step.flip))
        total = self._sum_mirrors(step, output)
        if total is None:
            return
        pieces = row_parts(self.patch[0], parts if self.parallel else 1)
        for index, window in enumerate(step.targets):  # windows of a batch may overlap: one at a time
            prediction = total[index]
            share(lambda rows, window=window, prediction=prediction: self.add_rows(
                window, prediction, self.factor, self.weights, rows), pieces)

    def _sum_mirrors(self, step: Pass, output: np.ndarray) -> np.ndarray | None:
        """The sum of the mirrored outputs of one batch, once its last mirror is in."""
        if step.first and step.last:
            return output
        buffer = self._batch_buffer(output.shape)
        if step.first:
            np.copyto(buffer, output)
        else:
            np.add(buffer, output, out=buffer)
        return buffer if step.last else None

    def _batch_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        buffer = self._buffer
        if buffer is None or buffer.shape[1:] != shape[1:] or len(buffer) < shape[0]:
            self._buffer = np.empty(shape, dtype=np.float32)
        return self._buffer[: shape[0]]

    def _start_finish(self, background: np.ndarray | None) -> int:
        """Mark the merger finished and return the channel count, made from the background's
        where no window ran."""
        self._require_open()
        self._finished = True
        if self.channels is None:
            if background is None:
                raise ModelError("no window was run, so there is no output to stitch")
            self.channels = int(np.asarray(background).size)
            self.make(self.channels)
        return self.channels

    def _require_open(self) -> None:
        if self._finished:
            raise RuntimeError("this merger was already finished")


class MemoryMerger(Blending):
    """The weighted sums (K, *output_shape) and the summed weights in memory, float32, updated
    in place. `normalise` False keeps no weight map: `finish` then returns the sums undivided,
    which per voxel is the blended output times one positive factor (its argmax over channels
    is the blend's wherever a window covered the voxel; uncovered voxels hold 0)."""

    def __init__(self, plan: Plan, normalise: bool = True) -> None:
        super().__init__(plan)
        self.normalise = normalise
        self._sum = np.zeros((0,), dtype=np.float32)
        self._weight = np.zeros((0,), dtype=np.float32)

    def make(self, channels: int) -> None:
        shape = self.plan.output_shape
        self._sum = np.zeros((channels, *shape), dtype=np.float32)
        self._weight = np.zeros(shape if self.normalise else (0,), dtype=np.float32)

    def add_rows(self, window: Window, prediction: np.ndarray, factor: np.ndarray | None,
                 weights: np.ndarray | None, rows: slice) -> None:
        """Add prediction (K, *patch) times `factor` at `window`, for the rows `rows` of the
        patch's first axis only; `weights` go to the weight map (None: 1 per voxel). The product
        is formed a few rows at a time, so the window is read and added in one sweep."""
        start = window[0].start
        for first in range(rows.start, rows.stop, ROWS_AT_ONCE):
            part = slice(first, min(first + ROWS_AT_ONCE, rows.stop))
            target = (slice(start + part.start, start + part.stop), *window[1:])
            values = prediction[:, part]
            if factor is not None:
                scale = factor if factor.ndim == 0 else factor[part]
                values = np.multiply(values, scale, dtype=np.float32)
            total = self._sum[(slice(None), *target)]
            np.add(total, values, out=total)
            if self.normalise:
                weight = self._weight[target]
                np.add(weight, 1.0 if weights is None else weights[part], out=weight)

    def finish(self, background: np.ndarray | None = None, share: Map = in_order) -> np.ndarray:
        """(K, *output_shape) float32: the blend (or, not normalising, the weighted sums).
        Voxels no window covered get `background` (K,), or ModelError when it is None."""
        channels = self._start_finish(background)
        result, weight = self._sum, self._weight
        if self.normalise:
            if weight.size and weight.min() > 0:
                np.divide(result, weight, out=result)
            else:
                covered = weight > 0
                fill = background_vector(background, channels, int(covered.size - np.count_nonzero(covered)),
                                         int(covered.size))
                np.divide(result, weight, out=result, where=covered)
                result[:, ~covered] = fill[:, None]
        check_finite(result, share)
        self._sum = self._weight = np.zeros((0,), dtype=np.float32)
        return result


class MeanMerger:
    """The mean (K,) float32 of per-window outputs (B, K) over every window and mirror run."""

    def __init__(self) -> None:
        self.total = np.zeros(0, dtype=np.float64)
        self.count = 0

    def check(self, output: np.ndarray, windows: int) -> np.ndarray:
        output = as_numeric(output)
        ok = output.ndim == 2 and output.shape[0] == windows and output.shape[1] >= 1
        if not ok or (self.total.size and output.shape[1] != self.total.size):
            raise ModelError(
                f"the model returned shape {output.shape} for a batch of {windows} windows; "
                f"expected ({windows}, K) with the same K for every batch"
            )
        if not self.total.size:
            self.total = np.zeros(output.shape[1], dtype=np.float64)
        return output

    def take(self, step: Pass, output: np.ndarray, share: Map = in_order, parts: int = 1) -> None:
        self.total += output.sum(axis=0, dtype=np.float64)
        self.count += output.shape[0]

    def finish(self, background: np.ndarray | None = None, share: Map = in_order) -> np.ndarray:
        if not self.count:  # a grid has a window at least: the plan skipped them all
            raise InputError("the foreground mask selects no window; there is nothing to average")
        mean = (self.total / self.count).astype(np.float32)
        if not np.all(np.isfinite(mean)):
            raise ModelError(
                f"the window average {mean.tolist()} is NaN or infinite; "
                "the model produced NaN/Inf — check the input intensities and the model file"
            )
        return mean


class WindowTable:
    """The output (K,) of every window run, averaged over its mirrors, kept per window: the
    per-tile values of a classification or regression model over a slide. `finish` gives the
    output windows (in the plan's order) and their values (N, K) float32."""

    def __init__(self) -> None:
        self.targets: list[Window] = []
        self.values: list[np.ndarray] = []
        self._sum: np.ndarray | None = None
        self._flips = 0

    def check(self, output: np.ndarray, windows: int) -> np.ndarray:
        output = as_numeric(output)
        width = self.values[0].shape[1] if self.values else None
        if output.ndim != 2 or output.shape[0] != windows or output.shape[1] < 1 or output.shape[1] != (
                width or output.shape[1]):
            raise ModelError(
                f"the model returned shape {output.shape} for a batch of {windows} windows; "
                f"expected ({windows}, K) with the same K for every batch"
            )
        return output

    def take(self, step: Pass, output: np.ndarray, share: Map = in_order, parts: int = 1) -> None:
        if step.first or self._sum is None:
            self._sum, self._flips = output.astype(np.float64, copy=True), 1
        else:
            self._sum, self._flips = self._sum + output, self._flips + 1
        if step.last:
            self.targets.extend(step.targets)
            self.values.append((self._sum / self._flips).astype(np.float32))

    def finish(self, background: np.ndarray | None = None,
               share: Map = in_order) -> tuple[list[Window], np.ndarray]:
        if not self.values:
            raise InputError("the foreground mask selects no window; there are no tiles to report")
        values = np.concatenate(self.values)
        if not np.isfinite(values).all():
            bad = int(np.count_nonzero(~np.isfinite(values).all(axis=1)))
            raise ModelError(f"{bad} of {len(values)} windows' outputs are NaN or infinite; "
                             "the model produced NaN/Inf — check the input intensities and the model file")
        return self.targets, values


def background_vector(background: np.ndarray | None, channels: int, missing: int, size: int) -> np.ndarray:
    """The background as one float32 value per channel, for `missing` of `size` voxels that no
    window covered; ModelError when there is none or it does not fit."""
    if background is None:
        raise ModelError(
            f"{missing} of {size} voxels were covered by no window; "
            "pass a background value for them or cover the whole image with windows"
        )
    fill = np.asarray(background, dtype=np.float32).reshape(-1)
    if fill.shape != (channels,):
        raise ModelError(
            f"the background has {fill.size} values but the model returned {channels} channels; "
            "give one background value per output channel"
        )
    return fill


def check_finite(result: np.ndarray, share: Map = in_order) -> None:
    """ModelError when any value of result (K, *S) is NaN or infinite."""
    rows = result.shape[1] if result.ndim > 1 else 0
    totals: list[np.floating] = []
    share(lambda part: totals.append(np.sum(result[:, part], dtype=np.float32)),
          [slice(start, min(start + _SLAB_ROWS, rows)) for start in range(0, rows, _SLAB_ROWS)])
    if np.isfinite(totals).all():
        return
    bad = int(np.count_nonzero(~np.isfinite(result).all(axis=0)))
    if bad:
        raise ModelError(
            f"{bad} voxels of the stitched output are NaN or infinite: the model produced NaN/Inf; check the input's "
            "intensities against the model's preprocessing, and the model file (its export)"
        )


def _scaled_weights(weights: np.ndarray | None, mirrors: int) -> np.ndarray | None:
    """Blending weights divided by the number of mirrors, or None when that is all ones."""
    if weights is None:
        return None if mirrors == 1 else np.full((), 1.0 / mirrors, dtype=np.float32)
    return (weights * np.float32(1.0 / mirrors)).astype(np.float32)
