"""The threaded loop behind the sliding window: gather, predict and stitch side by side.

One worker thread cuts the next batches of windows out of the image, the calling thread runs
the model, and a second worker thread hands finished predictions to a consumer (the stitcher or
the averager). Queues are bounded by keeping at most a few futures in flight, and any exception
(model, gatherer or consumer) stops both workers and reaches the caller.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from runtime.window.grid import Window

Predictor = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[int], None]

_PREFETCH = 2
_MAX_PENDING = 2


@dataclass(frozen=True)
class Pass:
    """One model call: a batch of windows, with the spatial axes (0-based) flipped for it."""

    windows: tuple[Window, ...]
    flip: tuple[int, ...]
    first: bool
    last: bool


class Consumer(Protocol):
    def check(self, output: np.ndarray, batch: int) -> np.ndarray:
        """Validate one model output in the calling thread and return it as an array."""

    def take(self, step: Pass, output: np.ndarray) -> None:
        """Use one validated output; runs in the stitching thread, one call at a time."""


def mirror_sets(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of `mirror_axes`, the identity first."""
    sets: list[tuple[int, ...]] = [()]
    for axis in mirror_axes:
        sets += [(*existing, axis) for existing in sets]
    return sets


def plan_passes(
    windows: Sequence[Window], batch_size: int, flips: Sequence[tuple[int, ...]]
) -> list[Pass]:
    """Batches of windows, each batch run once per flip, the flips of a batch in a row."""
    passes = []
    for begin in range(0, len(windows), batch_size):
        batch = tuple(windows[begin : begin + batch_size])
        for index, flip in enumerate(flips):
            passes.append(Pass(batch, flip, index == 0, index == len(flips) - 1))
    return passes


def gather(image: np.ndarray, step: Pass) -> np.ndarray:
    """Cut the windows of `step` out of image (C, *S) into one contiguous float32 batch."""
    first = step.windows[0]
    patch = tuple(s.stop - s.start for s in first)
    batch = np.empty((len(step.windows), image.shape[0], *patch), dtype=np.float32)
    flip_axes = tuple(axis + 1 for axis in step.flip)
    for index, window in enumerate(step.windows):
        view = image[(slice(None), *window)]
        batch[index] = np.flip(view, flip_axes) if flip_axes else view
    return batch


def run_passes(
    image: np.ndarray,
    predict: Predictor,
    passes: Sequence[Pass],
    consumer: Consumer,
    progress: Progress | None,
) -> None:
    """Run every pass through `predict` and `consumer`, with gathering and stitching beside it."""
    gatherer = ThreadPoolExecutor(1, thread_name_prefix="window-gather")
    stitcher = ThreadPoolExecutor(1, thread_name_prefix="window-stitch")
    try:
        _drive(image, predict, passes, consumer, progress, gatherer, stitcher)
    finally:
        gatherer.shutdown(wait=True, cancel_futures=True)
        stitcher.shutdown(wait=True, cancel_futures=True)


def _drive(
    image: np.ndarray,
    predict: Predictor,
    passes: Sequence[Pass],
    consumer: Consumer,
    progress: Progress | None,
    gatherer: ThreadPoolExecutor,
    stitcher: ThreadPoolExecutor,
) -> None:
    ahead = deque(gatherer.submit(gather, image, step) for step in passes[:_PREFETCH])
    pending: deque[tuple[Future[None], int]] = deque()
    for index, step in enumerate(passes):
        batch = ahead.popleft().result()
        if index + _PREFETCH < len(passes):
            ahead.append(gatherer.submit(gather, image, passes[index + _PREFETCH]))
        output = predict(batch)
        if np.shares_memory(output, batch):
            output = output.copy()  # the stitcher works on outputs in place
        output = consumer.check(output, len(step.windows))
        del batch
        done = len(step.windows) if step.last else 0
        pending.append((stitcher.submit(consumer.take, step, output), done))
        while len(pending) > _MAX_PENDING:
            _collect(pending.popleft(), progress)
    while pending:
        _collect(pending.popleft(), progress)


def _collect(item: tuple[Future[None], int], progress: Progress | None) -> None:
    future, done = item
    future.result()
    if progress is not None and done:
        progress(done)
