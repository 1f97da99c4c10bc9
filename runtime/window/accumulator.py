"""One accumulator for stitching windows: a weighted sum per channel plus a weight (count) map."""
from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from runtime.errors import ModelError
from runtime.parallel import in_slabs
from runtime.window.grid import Window


# Rows of the first patch axis that `add_rows` multiplies and adds at once: for a 3-channel
# 96x96 patch, 4 rows make a 0.4 MB product, which stays in a core's cache.
_ROWS_AT_ONCE = 4


_local = threading.local()


def _scratch(shape: tuple[int, ...]) -> np.ndarray:
    """A float32 buffer of `shape` for this thread, reused from call to call."""
    size = int(np.prod(shape))
    buffer = getattr(_local, "buffer", None)
    if buffer is None or buffer.size < size:
        buffer = _local.buffer = np.empty(size, dtype=np.float32)
    return buffer[:size].reshape(shape)


class Accumulator:
    """Weighted sums of window predictions over a spatial `shape`, with `channels` channels.

    `add` places one prediction (K, *patch) at a window; `finish` divides the sums by the summed
    weights, and `weighted_sums` hands the sums over undivided (an accumulator made with
    `weights=False` keeps no weight map and only offers that). Everything is float32 and updated
    in place: no full-size temporaries per window.
    """

    def __init__(self, channels: int, shape: Sequence[int], weights: bool = True) -> None:
        if channels < 1:
            raise ValueError(f"an accumulator needs at least one channel, got {channels}")
        self.channels = int(channels)
        self.shape = tuple(int(s) for s in shape)
        self._sum = np.zeros((self.channels, *self.shape), dtype=np.float32)
        self._weight = np.zeros(self.shape if weights else (0,), dtype=np.float32)
        self._weighted = bool(weights)
        self._finished = False

    def add(self, window: Window, prediction: np.ndarray, weights: np.ndarray | None) -> None:
        """Add prediction (K, *patch) times `weights` (*patch) at `window` (None: weights of 1)."""
        self.add_rows(window, prediction, weights, weights, slice(0, window[0].stop - window[0].start))

    def add_rows(self, window: Window, prediction: np.ndarray, factor: np.ndarray | None,
                 weights: np.ndarray | None, rows: slice) -> None:
        """Add prediction (K, *patch) times `factor` at `window`, for the rows `rows` of the patch's
        first axis only; `weights` go to the weight map (None: 1 per voxel, and no factor).

        The product is formed a few rows at a time in a small buffer that stays in cache, so the
        window is read and added in one sweep. Calls for disjoint rows may run side by side.
        """
        if self._finished:
            raise RuntimeError("this accumulator was already finished")
        start = window[0].start
        for first in range(rows.start, rows.stop, _ROWS_AT_ONCE):
            part = slice(first, min(first + _ROWS_AT_ONCE, rows.stop))
            target = (slice(start + part.start, start + part.stop), *window[1:])
            values = prediction[:, part]
            if factor is not None:
                scale = factor if factor.ndim == 0 else factor[part]
                values = np.multiply(values, scale, out=_scratch(values.shape), dtype=np.float32)
            total = self._sum[(slice(None), *target)]
            np.add(total, values, out=total)
            if self._weighted:
                weight = self._weight[target]
                np.add(weight, 1.0 if weights is None else weights[part], out=weight)

    def finish(self, background: np.ndarray | None = None) -> np.ndarray:
        """Return (K, *shape) float32 = sum / weight; the accumulator cannot be used afterwards.

        Voxels no window covered get `background` (K,), or raise ModelError when it is None.
        Non-finite results raise ModelError.
        """
        if not self._weighted:
            raise RuntimeError("this accumulator keeps no weight map; use weighted_sums")
        self._finish()
        result, weight = self._sum, self._weight
        if weight.size and weight.min() > 0:
            np.divide(result, weight, out=result)
        else:
            self._divide_covered(result, weight, background)
        _check_finite(result)
        self._weight = np.zeros((0,), dtype=np.float32)
        return result

    def weighted_sums(self) -> np.ndarray:
        """Return the (K, *shape) float32 weighted sums, undivided; the accumulator cannot be used
        afterwards. Voxels no window covered hold 0. Non-finite sums raise ModelError."""
        self._finish()
        _check_finite(self._sum)
        return self._sum

    def _finish(self) -> None:
        if self._finished:
            raise RuntimeError("this accumulator was already finished")
        self._finished = True

    def _divide_covered(
        self, result: np.ndarray, weight: np.ndarray, background: np.ndarray | None
    ) -> None:
        covered = weight > 0
        if background is None:
            missing = int(covered.size - np.count_nonzero(covered))
            raise ModelError(
                f"{missing} of {covered.size} voxels were covered by no window; "
                "pass a background value for them or cover the whole image with windows"
            )
        fill = _background_vector(background, self.channels)
        np.divide(result, weight, out=result, where=covered)
        result[:, ~covered] = fill[:, None]


def _background_vector(background: np.ndarray, channels: int) -> np.ndarray:
    fill = np.asarray(background, dtype=np.float32).reshape(-1)
    if fill.shape != (channels,):
        raise ModelError(
            f"the background has {fill.size} values but the model returned {channels} channels; "
            "give one background value per output channel"
        )
    return fill


def _check_finite(result: np.ndarray) -> None:
    totals: list[np.floating] = []
    in_slabs(lambda rows: totals.append(np.sum(result[:, rows], dtype=np.float32)), result.shape[1], 8)
    if np.isfinite(totals).all():
        return
    bad = int(np.count_nonzero(~np.isfinite(result).all(axis=0)))
    if bad:
        raise ModelError(
            f"{bad} voxels of the stitched output are NaN or infinite; "
            "the model produced NaN/Inf — check the input intensities and the model file"
        )
