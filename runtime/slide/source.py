"""A slide as a window source: each window read at the model's resolution from the best pyramid
level, resized and preprocessed; read ahead on threads while a model on a GPU or a server runs
the batches before it, or between the calls of a model on the CPU, whose threads keep every core
busy while it runs."""
from __future__ import annotations

import math
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from runtime.errors import InputError
from runtime.preprocess import Volume, run_steps
from runtime.preprocess.steps import Step
from runtime.slide.reader import MAX_READ_SIDE, RESOLUTION_TOLERANCE, UPSAMPLE_TOLERANCE, Slide
from runtime.slide.tissue import TissueMask, check_image_in_tissue
from runtime.window import Map, Pass, Plan, Window, in_order

# Batches read ahead of the one the model runs.
READ_AHEAD = 4


@dataclass(frozen=True)
class Sampling:
    """Where the model's pixels lie on a slide: each spans `l0_per_pixel` level-0 pixels on both
    axes, read from `level` (Slide.best_level: the coarsest level no coarser than the model's
    resolution, or a little coarser) and resized; `shape` (rows, columns) is the whole slide in model
    pixels."""

    l0_per_pixel: float
    level: int
    shape: tuple[int, int]


def sampling_for(slide: Slide, model_mpp: float) -> Sampling:
    """The model's pixels on `slide`; InputError where the model's resolution is finer than the
    slide's level 0 by more than UPSAMPLE_TOLERANCE of it."""
    scale = model_mpp / slide.mpp
    if scale < 1 - UPSAMPLE_TOLERANCE:
        raise InputError(
            f"{slide.path}: the model works at {model_mpp:g} microns per pixel, finer than the slide's level 0 "
            f"({slide.mpp:g} microns per pixel, {slide.mpp_said}) by more than {UPSAMPLE_TOLERANCE:.0%}; scan the "
            "slide at a higher magnification, or check its microns per pixel."
        )
    scale = 1.0 if abs(scale - 1) < RESOLUTION_TOLERANCE else scale
    shape = (math.ceil(slide.l0_height / scale), math.ceil(slide.l0_width / scale))
    return Sampling(scale, slide.best_level(scale), shape)


def resized_up(slide: Slide, sampling: Sampling) -> float:
    """How much finer the model's pixels are than those of the level they are read from, as a share
    (0 where they are no finer, within RESOLUTION_TOLERANCE)."""
    share = 1 - sampling.l0_per_pixel / slide.levels[sampling.level].downsample
    return share if share > RESOLUTION_TOLERANCE else 0.0


def check_reads(slide: Slide, sampling: Sampling, patch: Sequence[int]) -> None:
    """InputError where a window of `patch` model pixels would be read as more than MAX_READ_SIDE
    pixels a side of its level (the slide has no level near the model's resolution)."""
    per_level = sampling.l0_per_pixel / slide.levels[sampling.level].downsample
    side = max(round(p * per_level) for p in patch)
    if side > MAX_READ_SIDE:
        raise InputError(
            f"{slide.path}: each window of {tuple(patch)} model pixels would be read as {side} pixels a side of "
            f"level {sampling.level}, more than {MAX_READ_SIDE}; the slide has no level near the model's resolution "
            "(save it with a pyramid), or the microns per pixel given for it (--mpp, or a CSV's mpp column) is wrong."
        )


def read_pixels(slide: Slide, sampling: Sampling, window: Window, tissue: TissueMask | None = None) -> np.ndarray:
    """(rows, columns, 3) uint8 RGB of one window of the model's pixels: read from the
    sampling's level and resized (bilinear) to the model's resolution; white outside the slide.
    With `tissue`, InputError where the level holds no image inside it (`check_image_in_tissue`)."""
    from PIL import Image

    rows, cols = window
    height, width = rows.stop - rows.start, cols.stop - cols.start
    scale = sampling.l0_per_pixel
    per_level = scale / slide.levels[sampling.level].downsample
    size = (max(1, round(width * per_level)), max(1, round(height * per_level)))
    l0_x, l0_y = round(cols.start * scale), round(rows.start * scale)
    pixels, holes = slide.read_with_holes(l0_x, l0_y, sampling.level, *size)
    if holes is not None and tissue is not None:
        check_image_in_tissue(slide, sampling.level, l0_x, l0_y, holes, tissue)
    if size != (width, height):
        pixels = np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR))
    return pixels


class SlideSource:
    """The windows of `plan` over a slide at `sampling`, as (B, 3, *patch) float32 batches after
    the model's preprocessing `steps` (applied to each window on its own). With `read_ahead`,
    batches are read in the plan's order by `threads` threads, up to `ahead` batches before the
    one asked for; without it, each batch is read when asked for, its windows shared out with the
    `share` the caller gives (as `run_plan` does between the calls of a model on the CPU, where
    reading beside the model would slow it by as much as the reading costs). A pass that mirrors
    the one before it reuses its windows. With `tissue`, a window whose level holds no image inside
    it is refused (`read_pixels`). `close` stops the reading."""

    channels = 3

    def __init__(self, slide: Slide, sampling: Sampling, plan: Plan, steps: Sequence[Step],
                 threads: int = 2, ahead: int = READ_AHEAD, read_ahead: bool = True,
                 tissue: TissueMask | None = None) -> None:
        self.slide = slide
        self.sampling = sampling
        self.tissue = tissue
        self.steps = tuple(steps)
        self.shape = plan.shape
        self._batches = [step.windows for step in plan.passes if step.first]
        self._next = 0
        self._ahead = max(1, ahead) if read_ahead else 0
        self._patch = tuple(plan.spec.patch)
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="slide-read") if read_ahead else None
        self._pending: deque[tuple[tuple[Window, ...], Future[np.ndarray]]] = deque()
        self._current: tuple[tuple[Window, ...], np.ndarray] | None = None
        self._top_up()

    def gather(self, step: Pass, out: np.ndarray | None = None, share: Map = in_order,
               parts: int = 1) -> np.ndarray:
        if not step.first and self._current is not None and self._current[0] == step.windows:
            batch = self._current[1]
        else:
            batch = self._take(step.windows, share)
            self._current = (step.windows, batch)
        if step.flip:
            return np.ascontiguousarray(np.flip(batch, tuple(axis + 2 for axis in step.flip)))
        return batch

    def read_window(self, window: Window) -> np.ndarray:
        """One window (3, rows, columns) float32, preprocessed."""
        pixels = read_pixels(self.slide, self.sampling, window, self.tissue)
        tile = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)
        if not self.steps:
            return tile
        spacing = (self.slide.mpp * self.sampling.l0_per_pixel,) * 2
        volume, _ = run_steps(Volume.from_array(tile, spacing), self.steps, overwrite=True)
        return volume.array

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()

    def _read_batch(self, windows: tuple[Window, ...], share: Map = in_order) -> np.ndarray:
        """The batch of `windows`, read now, its windows shared out with `share`."""
        batch = np.empty((len(windows), self.channels, *self._patch), dtype=np.float32)

        def read(index: int) -> None:
            batch[index] = self.read_window(windows[index])

        share(read, range(len(windows)))
        return batch

    def _take(self, windows: tuple[Window, ...], share: Map = in_order) -> np.ndarray:
        """The batch of `windows`: the oldest read ahead where it is that one, else read now."""
        if self._pending and self._pending[0][0] == windows:
            _, future = self._pending.popleft()
            self._top_up()
            return future.result()
        return self._read_batch(windows, share)

    def _top_up(self) -> None:
        while self._pool is not None and len(self._pending) < self._ahead and self._next < len(self._batches):
            windows = self._batches[self._next]
            self._next += 1
            self._pending.append((windows, self._pool.submit(self._read_batch, windows)))
