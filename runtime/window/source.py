"""Window sources: where the input of each planned window comes from.

A source has `channels` and a spatial `shape`, and fills a batch (B, C, *patch) float32 with the
windows of one pass. An image in memory is an `ArraySource`; a source that reads from disk (a
slide, tile by tile) may keep its own read-ahead, out of the plan's and the merger's way.
"""
from __future__ import annotations

from typing import Callable, Iterable, Protocol, TypeVar

import numpy as np

from runtime.errors import InputError
from runtime.window.grid import Window, window_size
from runtime.window.plan import Pass

Item = TypeVar("Item")
Map = Callable[[Callable[[Item], object], Iterable[Item]], None]


def in_order(work: Callable[[Item], object], items: Iterable[Item]) -> None:
    """Call work(item) for every item, one after the other (the `Map` of a caller with no
    threads to share work over)."""
    for item in items:
        work(item)


class WindowSource(Protocol):
    channels: int
    shape: tuple[int, ...]

    def gather(self, step: Pass, out: np.ndarray | None = None, share: Map = in_order,
               parts: int = 1) -> np.ndarray:
        """The windows of `step` (flipped as it says) as one (B, C, *patch) float32 batch, in
        `out` when that has the batch's shape; `share` runs the copy's `parts` pieces."""
        ...


def row_parts(rows: int, parts: int) -> list[slice]:
    """`rows` cut into up to `parts` consecutive, nearly equal slices."""
    size = max(1, -(-rows // max(1, parts)))
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)]


class ArraySource:
    """An image (C, *S) in memory; a window reaching past its end (as the last windows of a
    scaled grid may) is filled with zeros there."""

    def __init__(self, image: np.ndarray) -> None:
        if not isinstance(image, np.ndarray) or image.ndim < 2:
            raise InputError(f"the image has shape {getattr(image, 'shape', None)}; expected (channels, *spatial)")
        if image.dtype.kind not in "biuf":
            raise InputError(f"the image has dtype {image.dtype}; expected real numbers (float32)")
        self.array = image
        self.channels = int(image.shape[0])
        self.shape = tuple(int(s) for s in image.shape[1:])

    def gather(self, step: Pass, out: np.ndarray | None = None, share: Map = in_order,
               parts: int = 1) -> np.ndarray:
        patch = window_size(step.windows[0])
        shape = (len(step.windows), self.channels, *patch)
        batch = out if out is not None and out.shape == shape else np.empty(shape, dtype=np.float32)
        flip_axes = tuple(axis + 1 for axis in step.flip)
        views = [self._view(window, flip_axes, batch, index) for index, window in enumerate(step.windows)]
        pieces = [(index, rows) for index in range(len(views)) for rows in row_parts(patch[0], parts)]

        def copy(piece: tuple[int, slice]) -> None:
            index, rows = piece
            view = views[index]
            if view is not None:
                np.copyto(batch[index][:, rows], view[:, rows], casting="unsafe")

        share(copy, pieces)
        return batch

    def _view(self, window: Window, flip_axes: tuple[int, ...], batch: np.ndarray,
              index: int) -> np.ndarray | None:
        """The window's view of the image, or None once a window reaching past the image's end
        was copied into batch[index] (with zeros beyond the end)."""
        if any(part.start < 0 for part in window):
            raise ValueError(f"window {window} starts before the image")
        view = self.array[(slice(None), *window)]
        if view.shape[1:] == batch.shape[2:]:
            return np.flip(view, flip_axes) if flip_axes else view
        target = batch[index]
        target.fill(0)
        target[(slice(None), *(slice(0, n) for n in view.shape[1:]))] = view
        if flip_axes:
            target[...] = np.flip(target, flip_axes).copy()
        return None
