"""How a backend runs a plan: gather each pass's windows, call the model, hand the output to
the merger. The window engine's maths (`runtime.window`) is single-threaded; the threads live here.

Three schedules.

- A model that runs on the CPU, called with batches (the default), is left alone while it runs:
  its own threads keep every core busy, and work squeezed in beside it slows it by about as much
  as that work costs. Between model calls, cutting the next windows out of the image and
  stitching the last output are shared out over one thread per core, in parts of a window's
  first axis (`run_plan`).
- A backend that cuts the windows out of the image itself (a `Runner`, as the OpenVINO backend
  does inside its graph, on streams of its own) is handed the image once, then only the windows:
  several batches stay in flight, nothing is gathered, and each output is stitched as it comes
  (over one thread per core) while the engine's streams work on the next (`run_in_flight`).
- For a model that runs on an accelerator (`beside_model`), the CPU is free meanwhile: one
  thread gathers the next batches and another stitches finished outputs while the model runs.
- For a model that runs elsewhere (a server), each call mostly waits on the network: `depth`
  calls are in flight on threads of their own while this thread gathers the next batches and
  stitches each output as it comes, oldest first (`run_remote`).

Any exception (model, source or merger) reaches the caller once every thread has stopped.
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Protocol, Sequence

import numpy as np

from runtime.parallel import Workers
from runtime.window import (
    ArraySource, MeanMerger, Merger, MemoryMerger, Pass, Plan, Window, WindowSource, WindowSpec, plan,
)

Call = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[int], None]


class Runner(Protocol):
    """A model bound to one image, which cuts each batch's windows out of it itself.

    `submit` starts one batch: the windows, each flipped over the given spatial axes (0-based),
    and returns a function that waits for the batch's output, shaped as the model would return
    it for those windows gathered. Up to `depth` batches may be in flight; an output stays valid
    until `depth` more batches have been submitted after it.
    """

    depth: int

    def submit(self, windows: Sequence[Window], flip: tuple[int, ...]) -> Callable[[], np.ndarray]: ...


def run_plan(call: Call, source: WindowSource, planned: Plan, merger: Merger,
             progress: Progress | None = None, *, workers: int | None = None,
             beside_model: bool = False) -> None:
    """Run every pass of `planned`: gather its windows from `source`, `call` the model, hand the
    output to `merger`. Windows the plan skipped are reported to `progress` first.

    By default gathering and stitching share their work out over `workers` threads (one per
    core) while the model is not running, and one batch buffer is reused from pass to pass, so
    `call` must not keep its input after returning. `beside_model` runs gathering and stitching
    in two threads beside the model instead; then `call` must return a new array (or one it
    never writes to again), since outputs are stitched while the next batch runs.
    """
    _report_skipped(planned, progress)
    if beside_model:
        _beside_model(call, source, planned.passes, merger, progress)
        return
    with Workers(workers) as pool:
        batch: np.ndarray | None = None
        for step in planned.passes:
            batch = source.gather(step, batch, pool.map, pool.count)
            output = _model_output(call, batch, merger, len(step.windows))
            merger.take(step, output, pool.map, pool.count)
            if progress is not None and step.last:
                progress(len(step.windows))


def run_in_flight(runner: Runner, planned: Plan, merger: Merger, progress: Progress | None = None,
                  workers: int | None = None) -> None:
    """Keep `runner.depth` batches in flight and hand each output to the merger, oldest first,
    shared over `workers` threads (one per core by default: on a small CPU they take turns with
    the runner's streams, on a large one a single thread could not keep up with them). Every
    submitted batch has ended when this returns or raises."""
    _report_skipped(planned, progress)
    pending: deque[tuple[Pass, Callable[[], np.ndarray]]] = deque()
    try:
        with Workers(workers) as pool:
            for step in planned.passes:
                while len(pending) >= max(1, runner.depth):
                    _take_one(pending.popleft(), merger, pool, progress)
                pending.append((step, runner.submit(step.windows, step.flip)))
            while pending:
                _take_one(pending.popleft(), merger, pool, progress)
    finally:
        for _, wait in pending:  # also after Ctrl-C: no batch may still run when the image goes
            try:
                wait()
            except BaseException:  # noqa: BLE001 - the first error is already on its way to the caller
                pass


def run_remote(connect: Callable[[], Call], source: WindowSource, planned: Plan, merger: Merger,
               progress: Progress | None = None, depth: int = 2) -> None:
    """Run every pass of `planned` with up to `depth` model calls in flight, each on a thread of
    its own with a model call `connect()` made for that thread (a connection of its own); the
    windows are gathered and the outputs stitched here. Every call has ended when this returns
    or raises."""
    _report_skipped(planned, progress)
    local = threading.local()

    def call(batch: np.ndarray) -> np.ndarray:
        if not hasattr(local, "call"):
            local.call = connect()
        return local.call(batch)

    pending: deque[tuple[Pass, Future[np.ndarray]]] = deque()
    with ThreadPoolExecutor(max(1, depth), thread_name_prefix="window-remote") as calls:
        try:
            for step in planned.passes:
                while len(pending) >= max(1, depth):
                    _stitch(pending.popleft(), merger, progress)
                pending.append((step, calls.submit(call, source.gather(step))))
            while pending:
                _stitch(pending.popleft(), merger, progress)
        finally:
            for _, future in pending:
                future.cancel()


def _stitch(item: tuple[Pass, Future[np.ndarray]], merger: Merger, progress: Progress | None) -> None:
    step, future = item
    merger.take(step, merger.check(future.result(), len(step.windows)))
    if progress is not None and step.last:
        progress(len(step.windows))


def sliding_window(image: np.ndarray, call: Call, spec: WindowSpec, *,
                   foreground: np.ndarray | None = None, background: np.ndarray | None = None,
                   progress: Progress | None = None, normalise: bool = True,
                   workers: int | None = None, beside_model: bool = False) -> np.ndarray:
    """Blend `call`'s output over `spec`'s windows of image (C, *S) into (K, *S) float32, in
    memory: a plan, an `ArraySource`, a `MemoryMerger` and `run_plan`, for a plain model callable
    (the trainer's validation, tests). `foreground` is needed where `spec.skip_empty`; voxels no
    window covers then get `background` (K,)."""
    planned = plan(image.shape[1:], spec, foreground)
    merger = MemoryMerger(planned, normalise=normalise)
    run_plan(call, ArraySource(image), planned, merger, progress, workers=workers, beside_model=beside_model)
    return merger.finish(background)


def window_average(image: np.ndarray, call: Call, spec: WindowSpec, *,
                   foreground: np.ndarray | None = None, progress: Progress | None = None,
                   beside_model: bool = False) -> np.ndarray:
    """Mean (K,) float32 of a per-window output (B, K) over every window run and mirror."""
    planned = plan(image.shape[1:], spec, foreground)
    merger = MeanMerger()
    run_plan(call, ArraySource(image), planned, merger, progress, beside_model=beside_model)
    return merger.finish()


def _report_skipped(planned: Plan, progress: Progress | None) -> None:
    if progress is not None and planned.skipped:
        progress(planned.skipped)


def _take_one(item: tuple[Pass, Callable[[], np.ndarray]], merger: Merger, workers: Workers,
              progress: Progress | None) -> None:
    step, wait = item
    merger.take(step, merger.check(wait(), len(step.windows)), workers.map, workers.count)
    if progress is not None and step.last:
        progress(len(step.windows))


def _model_output(call: Call, batch: np.ndarray, merger: Merger, windows: int) -> np.ndarray:
    """The model's output for `batch`, checked by the merger, in memory of its own (the merger
    may work on it in place while `batch` is refilled)."""
    output = call(batch)
    if np.shares_memory(output, batch):
        output = output.copy()
    return merger.check(output, windows)


_PREFETCH = 2
_MAX_PENDING = 2


def _beside_model(call: Call, source: WindowSource, passes: Sequence[Pass], merger: Merger,
                  progress: Progress | None) -> None:
    gatherer = ThreadPoolExecutor(1, thread_name_prefix="window-gather")
    stitcher = ThreadPoolExecutor(1, thread_name_prefix="window-stitch")
    try:
        ahead = deque(gatherer.submit(source.gather, step) for step in passes[:_PREFETCH])
        pending: deque[tuple[Future[None], int]] = deque()
        for index, step in enumerate(passes):
            batch = ahead.popleft().result()
            if index + _PREFETCH < len(passes):
                ahead.append(gatherer.submit(source.gather, passes[index + _PREFETCH]))
            output = _model_output(call, batch, merger, len(step.windows))
            del batch
            done = len(step.windows) if step.last else 0
            pending.append((stitcher.submit(merger.take, step, output), done))
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
