"""Sliding-window inference over an array (C, *S): segmentation maps and window averages.

The model is any `Predictor`: a callable from a float32 batch (B, C, *patch) to (B, K, *patch)
for segmentation or (B, K) for classification and regression. Its input buffer is reused for the
next batch, and each output is stitched before the next call.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from runtime.errors import InputError, ModelError
from runtime.window.accumulator import Accumulator
from runtime.window.grid import Window, check_overlap, window_grid
from runtime.parallel import Workers
from runtime.window.pipeline import (
    Pass,
    Predictor,
    Progress,
    mirror_sets,
    plan_passes,
    row_parts,
    run_passes,
)
from runtime.window.weights import blending_weights


def sliding_window(
    image: np.ndarray,
    predict: Predictor,
    patch: Sequence[int],
    *,
    overlap: float = 0.5,
    blending: str = "gaussian",
    batch_size: int = 1,
    mirror_axes: Sequence[int] = (),
    foreground: np.ndarray | None = None,
    background: np.ndarray | None = None,
    progress: Progress | None = None,
    normalise: bool = True,
    workers: int | None = None,
    beside_model: bool = False,
) -> np.ndarray:
    """Blend the model's raw output over every window of image (C, *S) into (K, *S) float32.

    `mirror_axes` (spatial, 0-based over S) average the output over every subset of those axes
    flipped. Windows holding no `foreground` voxel are never sent to the model; voxels no kept
    window covers get `background` (K,), which is then required. `progress(n)` receives the
    number of windows just finished; skipped windows are reported first, so the counts add up
    to len(window_grid(S, patch, overlap)).

    `normalise` False returns the weighted sums instead, not divided by the summed weights (and
    keeps no weight map): per voxel that is the blended output times one positive factor, so its
    argmax over channels is the blended output's wherever a window covered the voxel. Voxels no
    window covered hold 0 and `background` is not needed.

    `workers` threads (default one per core) gather and stitch between model calls; the result
    does not depend on their number. A predictor that cuts its own windows (`WindowCutting`)
    keeps batches in flight instead, and the threads only stitch. `beside_model` gathers and stitches in threads while the
    model runs instead, for a model that leaves the CPU free (see `runtime.window.pipeline`).
    """
    patch = _check_image(image, patch)
    check_overlap(overlap)
    if foreground is not None and background is None and normalise:
        raise ValueError("skipping background windows needs a background value per channel")
    windows = _kept_windows(image.shape[1:], patch, overlap, foreground, progress)
    flips = mirror_sets(_check_mirror_axes(mirror_axes, len(patch)))
    weights = blending_weights(patch, blending)
    stitch_weights = None if blending == "constant" else weights
    stitcher = _Stitcher(image.shape[1:], patch, stitch_weights, len(flips), normalise)
    passes = plan_passes(windows, _check_batch(batch_size), flips)
    run_passes(image, predict, passes, stitcher, progress, workers, beside_model)
    return stitcher.finish(background)


def window_average(
    image: np.ndarray,
    predict: Predictor,
    patch: Sequence[int],
    *,
    overlap: float = 0.5,
    batch_size: int = 1,
    mirror_axes: Sequence[int] = (),
    foreground: np.ndarray | None = None,
    progress: Progress | None = None,
    beside_model: bool = False,
) -> np.ndarray:
    """Mean (K,) float32 of a per-window output (B, K) over every kept window and mirror."""
    patch = _check_image(image, patch)
    check_overlap(overlap)
    windows = _kept_windows(image.shape[1:], patch, overlap, foreground, progress)
    if not windows:
        raise InputError("the foreground mask selects no window; there is nothing to average")
    flips = mirror_sets(_check_mirror_axes(mirror_axes, len(patch)))
    averager = _Averager()
    passes = plan_passes(windows, _check_batch(batch_size), flips)
    run_passes(image, predict, passes, averager, progress, beside_model=beside_model)
    return averager.finish()


def _as_numeric(output: np.ndarray) -> np.ndarray:
    output = np.asarray(output)
    if output.dtype.kind not in "biuf":
        raise ModelError(f"the model returned dtype {output.dtype}; expected real numbers")
    return output


class _Stitcher:
    """Consumer that averages mirrored outputs of a batch and adds them to an Accumulator."""

    def __init__(
        self,
        shape: Sequence[int],
        patch: tuple[int, ...],
        weights: np.ndarray | None,
        mirrors: int,
        normalise: bool = True,
    ) -> None:
        self.shape = tuple(shape)
        self.normalise = normalise
        self.patch = patch
        self.weights = weights
        self.scaled = _scaled_weights(weights, mirrors)
        self.channels: int | None = None
        self.accumulator: Accumulator | None = None
        self._buffer: np.ndarray | None = None

    def check(self, output: np.ndarray, batch: int) -> np.ndarray:
        output = _as_numeric(output)
        channels = output.shape[1] if output.ndim == len(self.patch) + 2 else -1
        expected = (batch, channels, *self.patch)
        if output.shape != expected or channels < 1 or (self.channels or channels) != channels:
            want = f"({batch}, K, {', '.join(map(str, self.patch))})"
            raise ModelError(
                f"the model returned shape {output.shape} for a batch of {batch} windows; "
                f"expected {want} with the same K for every batch"
            )
        self.channels = channels
        return output

    def take(self, step: Pass, output: np.ndarray, workers: Workers) -> None:
        if step.flip:
            output = np.flip(output, tuple(axis + 2 for axis in step.flip))
        total = self._sum_mirrors(step, output)
        if total is None:
            return
        accumulator = self._accumulator()
        for index, window in enumerate(step.windows):  # windows of a batch may overlap: one at a time
            prediction = total[index]
            workers.map(lambda rows, window=window, prediction=prediction: accumulator.add_rows(
                window, prediction, self.scaled, self.weights, rows), row_parts(self.patch[0], workers.count))

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

    def _accumulator(self) -> Accumulator:
        if self.accumulator is None:
            self.accumulator = Accumulator(self.channels or 1, self.shape, weights=self.normalise)
        return self.accumulator

    def finish(self, background: np.ndarray | None) -> np.ndarray:
        if self.accumulator is None:
            if background is None:
                raise ModelError("no window was run, so there is no output to stitch")
            self.accumulator = Accumulator(np.asarray(background).size, self.shape, weights=self.normalise)
        if not self.normalise:
            return self.accumulator.weighted_sums()
        return self.accumulator.finish(background)


class _Averager:
    """Consumer that sums per-window outputs (B, K) and divides by their number."""

    def __init__(self) -> None:
        self.total = np.zeros(0, dtype=np.float64)
        self.count = 0

    def check(self, output: np.ndarray, batch: int) -> np.ndarray:
        output = _as_numeric(output)
        ok = output.ndim == 2 and output.shape[0] == batch and output.shape[1] >= 1
        if not ok or (self.total.size and output.shape[1] != self.total.size):
            raise ModelError(
                f"the model returned shape {output.shape} for a batch of {batch} windows; "
                f"expected ({batch}, K) with the same K for every batch"
            )
        if not self.total.size:
            self.total = np.zeros(output.shape[1], dtype=np.float64)
        return output

    def take(self, step: Pass, output: np.ndarray, workers: Workers) -> None:
        self.total += output.sum(axis=0, dtype=np.float64)
        self.count += output.shape[0]

    def finish(self) -> np.ndarray:
        mean = (self.total / self.count).astype(np.float32)
        if not np.all(np.isfinite(mean)):
            raise ModelError(
                f"the window average {mean.tolist()} is NaN or infinite; "
                "the model produced NaN/Inf — check the input intensities and the model file"
            )
        return mean


def _scaled_weights(weights: np.ndarray | None, mirrors: int) -> np.ndarray | None:
    """Blending weights divided by the number of mirrors, or None when that is all ones."""
    if weights is None:
        return None if mirrors == 1 else np.full((), 1.0 / mirrors, dtype=np.float32)
    return (weights * np.float32(1.0 / mirrors)).astype(np.float32)


def _check_image(image: np.ndarray, patch: Sequence[int]) -> tuple[int, ...]:
    patch = tuple(int(p) for p in patch)
    if not isinstance(image, np.ndarray) or image.ndim != len(patch) + 1:
        shape = getattr(image, "shape", None)
        raise InputError(
            f"the image has shape {shape}; expected (channels, *spatial) with "
            f"{len(patch)} spatial axes to match the patch {patch}"
        )
    if image.dtype.kind not in "biuf":
        raise InputError(f"the image has dtype {image.dtype}; expected real numbers (float32)")
    if any(p < 1 for p in patch):
        raise ValueError(f"patch sizes must be at least 1, got {patch}")
    spatial = image.shape[1:]
    if any(s < p for s, p in zip(spatial, patch)):
        raise InputError(
            f"the image's spatial shape {spatial} is smaller than the patch {patch} on some axis; "
            "pad the image to at least the patch size first"
        )
    return patch


def _check_mirror_axes(mirror_axes: Sequence[int], dims: int) -> tuple[int, ...]:
    axes = tuple(int(axis) for axis in mirror_axes)
    if len(set(axes)) != len(axes) or any(not 0 <= axis < dims for axis in axes):
        raise ValueError(f"mirror axes {axes} must be distinct spatial axes in [0, {dims})")
    return axes


def _check_batch(batch_size: int) -> int:
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    return int(batch_size)


def _kept_windows(
    shape: Sequence[int],
    patch: tuple[int, ...],
    overlap: float,
    foreground: np.ndarray | None,
    progress: Progress | None,
) -> list[Window]:
    windows = window_grid(shape, patch, overlap)
    if foreground is None:
        return windows
    if foreground.shape != tuple(shape):
        raise InputError(
            f"the foreground mask has shape {foreground.shape}; expected the image's "
            f"spatial shape {tuple(shape)}"
        )
    kept = [window for window in windows if foreground[window].any()]
    if progress is not None and len(kept) < len(windows):
        progress(len(windows) - len(kept))
    return kept
