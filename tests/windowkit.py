"""Helpers for the window engine's tests: images, toy models and mergers by hand."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from runtime.backends import execution
from runtime.window import MemoryMerger, Plan, WindowSpec, Window

OVERLAPS = (0.0, 0.25, 0.5, 0.75)


def identity(batch: np.ndarray) -> np.ndarray:
    return batch


def random_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


class CountingPredictor:
    """Adds each window's own mean, so the result depends on which windows cover a voxel."""

    def __init__(self) -> None:
        self.windows = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.windows += len(batch)
        spatial = tuple(range(2, batch.ndim))
        return batch + batch.mean(axis=spatial, keepdims=True)


def spec(patch: Sequence[int], *, overlap: float = 0.5, blending: str = "gaussian", batch_size: int = 1,
         mirror_axes: Sequence[int] = (), skip_empty: bool = False) -> WindowSpec:
    return WindowSpec(tuple(patch), overlap, blending, batch_size, tuple(mirror_axes), skip_empty)


def sliding_window(image: np.ndarray, predict, patch: Sequence[int], *, overlap: float = 0.5,
                   blending: str = "gaussian", batch_size: int = 1, mirror_axes: Sequence[int] = (),
                   foreground: np.ndarray | None = None, **rest) -> np.ndarray:
    """`execution.sliding_window` with the settings spelled out (skipping where a foreground is given)."""
    settings = spec(patch, overlap=overlap, blending=blending, batch_size=batch_size,
                    mirror_axes=mirror_axes, skip_empty=foreground is not None)
    return execution.sliding_window(image, predict, settings, foreground=foreground, **rest)


def window_average(image: np.ndarray, predict, patch: Sequence[int], *, overlap: float = 0.5,
                   batch_size: int = 1, mirror_axes: Sequence[int] = (),
                   foreground: np.ndarray | None = None, **rest) -> np.ndarray:
    settings = spec(patch, overlap=overlap, batch_size=batch_size, mirror_axes=mirror_axes,
                    skip_empty=foreground is not None)
    return execution.window_average(image, predict, settings, foreground=foreground, **rest)


def memory(channels: int, shape: tuple[int, ...], normalise: bool = True) -> MemoryMerger:
    """An in-memory merger over `shape` with `channels` channels, for windows added by hand."""
    settings = WindowSpec(patch=(1,) * len(shape), blending="constant")
    merger = MemoryMerger(Plan(settings, shape, shape, (), 0, 0, 1), normalise=normalise)
    merger.channels = channels
    merger.make(channels)
    return merger


def add(merger: MemoryMerger, window: Window, prediction: np.ndarray, weights: np.ndarray | None) -> None:
    """Add prediction (K, *patch) times `weights` at `window`, every row at once."""
    prediction = np.asarray(prediction, dtype=np.float32)
    weights = None if weights is None else np.asarray(weights, dtype=np.float32)
    merger.add_rows(window, prediction, weights, weights, slice(0, window[0].stop - window[0].start))


def merge(merger, planned: Plan, seed: int = 0, channels: int = 3) -> None:
    """Every pass of `planned` into `merger`, each output random (normal) from `seed`."""
    rng = np.random.default_rng(seed)
    for step in planned.passes:
        output = rng.normal(size=(len(step.windows), channels, *planned.spec.output_patch)).astype(np.float32)
        merger.take(step, merger.check(output, len(step.windows)))
