"""The loop behind the sliding window: gather the windows, run the model, stitch its output.

Three schedules.

- A model that runs on the CPU, called with batches (the default), is left alone while it runs:
  its own threads keep every core busy, and work squeezed in beside it slows it by about as much
  as that work costs. Between model calls, cutting the next windows out of the image and
  stitching the last output are shared out over one thread per core, in parts of a window's
  first axis.
- A predictor that cuts the windows out of the image itself (`WindowCutting`, as the OpenVINO
  backend does inside its graph, on streams of its own) is handed the image once, then only the
  windows: several batches stay in flight, nothing is gathered, and each output is stitched as
  it comes (over one thread per core) while the engine's streams work on the next.
- For a model that runs on an accelerator (`beside_model`), the CPU is free meanwhile: one
  thread gathers the next batches and another stitches finished outputs while the model runs.

Any exception (model, gathering or consumer) reaches the caller once every thread has stopped.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from runtime.parallel import Workers
from runtime.window.grid import Window, window_size

Predictor = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[int], None]


class WindowRunner(Protocol):
    """A model bound to one image (C, *S), which cuts each batch's windows out of it itself.

    `submit` starts one batch: the windows, each flipped over the given spatial axes (0-based),
    and returns a function that waits for the batch's output, shaped as the predictor would
    return it for those windows gathered. Up to `depth` batches may be in flight; an output
    stays valid until `depth` more batches have been submitted after it.
    """

    depth: int

    def submit(self, windows: Sequence[Window], flip: tuple[int, ...]) -> Callable[[], np.ndarray]: ...


@runtime_checkable
class WindowCutting(Protocol):
    """A predictor that can also take the whole image and cut each batch's windows out itself."""

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...

    def windows_of(self, image: np.ndarray, patch: tuple[int, ...], batch_size: int) -> WindowRunner | None:
        """A runner over `image` (C, *S) for batches of up to `batch_size` windows of `patch`, or
        None where such batches must be gathered."""


@dataclass(frozen=True)
class Pass:
    """One model call: a batch of windows, with the spatial axes (0-based) flipped for it."""

    windows: tuple[Window, ...]
    flip: tuple[int, ...]
    first: bool
    last: bool


class Consumer(Protocol):
    def check(self, output: np.ndarray, batch: int) -> np.ndarray:
        """Validate one model output and return it as an array."""

    def take(self, step: Pass, output: np.ndarray, workers: Workers) -> None:
        """Use one validated output, before the next model call; `workers.map(work, items)` runs
        work(item) for every item on the pass's threads and returns when all have ended."""


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


def row_parts(rows: int, parts: int) -> list[slice]:
    """`rows` cut into up to `parts` consecutive, nearly equal slices."""
    size = max(1, -(-rows // max(1, parts)))
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)]


def gather(image: np.ndarray, step: Pass, out: np.ndarray | None = None,
           workers: Workers | None = None) -> np.ndarray:
    """Cut the windows of `step` out of image (C, *S) into one contiguous float32 batch.

    `out` is filled and returned when it has the batch's shape (B, C, *patch), else a new array
    is made; with `workers`, every window is copied in one slice of its first axis per worker,
    side by side.
    """
    first = step.windows[0]
    patch = window_size(first)
    shape = (len(step.windows), image.shape[0], *patch)
    batch = out if out is not None and out.shape == shape else np.empty(shape, dtype=np.float32)
    flip_axes = tuple(axis + 1 for axis in step.flip)
    views = []
    for window in step.windows:
        view = image[(slice(None), *window)]
        views.append(np.flip(view, flip_axes) if flip_axes else view)
    for index, view in enumerate(views):
        if view.shape != batch.shape[1:]:
            raise ValueError(f"window {step.windows[index]} reaches outside the image of shape {image.shape[1:]}")
    parts = 1 if workers is None else workers.count
    pieces = [(index, rows) for index in range(len(views)) for rows in row_parts(patch[0], parts)]

    def copy(piece: tuple[int, slice]) -> None:
        index, rows = piece
        np.copyto(batch[index][:, rows], views[index][:, rows], casting="unsafe")

    if workers is None:
        for piece in pieces:
            copy(piece)
    else:
        workers.map(copy, pieces)
    return batch


def run_passes(
    image: np.ndarray,
    predict: Predictor,
    passes: Sequence[Pass],
    consumer: Consumer,
    progress: Progress | None,
    workers: int | None = None,
    beside_model: bool = False,
) -> None:
    """Run every pass: gather its windows, call `predict`, hand the output to `consumer`.

    By default gathering and the consumer share their work out over `workers` threads (one per
    core) while the model is not running, and one batch buffer is reused from pass to pass, so
    `predict` must not keep its input after returning. A `WindowCutting` predictor is asked for
    a runner over the image first; when it gives one, nothing is gathered and the runner's
    batches are kept in flight instead (see the module text). `beside_model`
    runs gathering and the consumer in two threads beside the model instead (always gathering);
    then `predict` must return a new array (or one it never writes to again), since outputs are
    stitched while the next batch runs.
    """
    if beside_model:
        _beside_model(image, predict, passes, consumer, progress)
        return
    runner = _runner(image, predict, passes)
    if runner is not None:
        _in_flight(runner, passes, consumer, progress, workers)
        return
    with Workers(workers) as pool:
        batch: np.ndarray | None = None
        for step in passes:
            batch = gather(image, step, batch, pool)
            output = _model_output(predict, batch, consumer, len(step.windows))
            consumer.take(step, output, pool)
            if progress is not None and step.last:
                progress(len(step.windows))


def _runner(image: np.ndarray, predict: Predictor, passes: Sequence[Pass]) -> WindowRunner | None:
    if not passes or not isinstance(predict, WindowCutting):
        return None
    patch = window_size(passes[0].windows[0])
    return predict.windows_of(image, patch, max(len(step.windows) for step in passes))


def _in_flight(runner: WindowRunner, passes: Sequence[Pass], consumer: Consumer,
               progress: Progress | None, workers: int | None) -> None:
    """Keep `runner.depth` batches in flight and hand each output to the consumer, oldest first,
    shared over `workers` threads (one per core by default: on a small CPU they take turns with
    the runner's streams, on a large one a single thread could not keep up with them). Every
    submitted batch has ended when this returns or raises."""
    pending: deque[tuple[Pass, Callable[[], np.ndarray]]] = deque()
    try:
        with Workers(workers) as pool:
            for step in passes:
                while len(pending) >= max(1, runner.depth):
                    _take_one(pending.popleft(), consumer, pool, progress)
                pending.append((step, runner.submit(step.windows, step.flip)))
            while pending:
                _take_one(pending.popleft(), consumer, pool, progress)
    finally:
        for _, wait in pending:  # also after Ctrl-C: no batch may still run when the image goes
            try:
                wait()
            except BaseException:  # noqa: BLE001 - the first error is already on its way to the caller
                pass


def _take_one(item: tuple[Pass, Callable[[], np.ndarray]], consumer: Consumer, workers: Workers,
              progress: Progress | None) -> None:
    step, wait = item
    consumer.take(step, consumer.check(wait(), len(step.windows)), workers)
    if progress is not None and step.last:
        progress(len(step.windows))


def _model_output(predict: Predictor, batch: np.ndarray, consumer: Consumer, windows: int) -> np.ndarray:
    """The model's output for `batch`, checked by the consumer, in memory of its own (the consumer
    may work on it in place while `batch` is refilled)."""
    output = predict(batch)
    if np.shares_memory(output, batch):
        output = output.copy()
    return consumer.check(output, windows)


_PREFETCH = 2
_MAX_PENDING = 2


def _beside_model(image: np.ndarray, predict: Predictor, passes: Sequence[Pass], consumer: Consumer,
                  progress: Progress | None) -> None:
    gatherer = ThreadPoolExecutor(1, thread_name_prefix="window-gather")
    stitcher = ThreadPoolExecutor(1, thread_name_prefix="window-stitch")
    alone = Workers(1)
    try:
        ahead = deque(gatherer.submit(gather, image, step) for step in passes[:_PREFETCH])
        pending: deque[tuple[Future[None], int]] = deque()
        for index, step in enumerate(passes):
            batch = ahead.popleft().result()
            if index + _PREFETCH < len(passes):
                ahead.append(gatherer.submit(gather, image, passes[index + _PREFETCH]))
            output = _model_output(predict, batch, consumer, len(step.windows))
            del batch
            done = len(step.windows) if step.last else 0
            pending.append((stitcher.submit(consumer.take, step, output, alone), done))
            while len(pending) > _MAX_PENDING:
                _collect(pending.popleft(), progress)
        while pending:
            _collect(pending.popleft(), progress)
    finally:
        gatherer.shutdown(wait=True, cancel_futures=True)
        stitcher.shutdown(wait=True, cancel_futures=True)


def _collect(item: tuple[Future[None], int], progress: Progress | None) -> None:
    future, done = item
    future.result()
    if progress is not None and done:
        progress(done)
