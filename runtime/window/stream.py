"""A blending merger that hands its result on a slab of rows at a time, as soon as no later pass
reaches them, and holds only the rows still open.

A plan lays its windows with the first spatial axis slowest, so after each pass the rows of the
first axis that no later pass reaches are final. `RowMerger` keeps the weighted sums and weights of
the open rows only (about a window's extent along the first axis, times the rest of the output),
divides each final slab by its weights and lends it to a `sink(first, rows)`, (K, n, *rest)
float32, in order, once: the rows are the merger's buffers, valid during the call only, so a
sink copies what it keeps. What the sink keeps is the caller's: a label map, say, so that a
whole-body CT's K class maps never exist at once. A plan in another order is still merged
correctly; its open rows are then more of the output.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from runtime.window.grid import Window
from runtime.window.merger import MemoryMerger, background_vector, check_finite
from runtime.window.plan import Pass, Plan
from runtime.window.source import Map, in_order

Sink = Callable[[int, np.ndarray], None]


class RowMerger(MemoryMerger):
    """Blends a plan's outputs like `MemoryMerger`, over the open rows only, and gives each final
    slab of rows, divided by its weights and checked, to `sink`. Voxels no window covered get
    `background` (K,), or ModelError when it is None. With `normalise` False it keeps no weights
    and hands on the undivided sums (their argmax is the blend's wherever a window ran; uncovered
    voxels hold 0). `finish` gives the rows handed on."""

    def __init__(self, plan: Plan, sink: Sink, background: np.ndarray | None = None, normalise: bool = True) -> None:
        super().__init__(plan, normalise=normalise)
        self.sink = sink
        self.background = None if background is None else np.asarray(background, dtype=np.float32).reshape(-1)
        self.rows = plan.output_shape[0]
        self.final_after, self.capacity = _row_schedule(plan)
        self.base = 0            # the first open row: every row before it was handed on
        self._taken = 0

    def make(self, channels: int) -> None:
        rest = self.plan.output_shape[1:]
        self._sum = np.zeros((channels, self.capacity, *rest), dtype=np.float32)
        self._weight = np.zeros((self.capacity, *rest) if self.normalise else (0,), dtype=np.float32)

    def add_rows(self, window: Window, prediction: np.ndarray, factor: np.ndarray | None,
                 weights: np.ndarray | None, rows: slice) -> None:
        """As `MemoryMerger.add_rows`, into the buffers' rows: row r of the output lives at row
        r % capacity, so handing rows on moves nothing; a window whose rows wrap is added in two."""
        start = window[0].start
        for piece in self._pieces(start + rows.start, start + rows.stop):
            at = piece.start % self.capacity
            shifted = (slice(at - (piece.start - start), at - (piece.start - start) + window[0].stop - start),
                       *window[1:])
            super().add_rows(shifted, prediction, factor, weights, slice(piece.start - start, piece.stop - start))

    def _pieces(self, first: int, stop: int) -> list[slice]:
        """Rows [first, stop) of the output cut where their buffer rows wrap."""
        wrap = first + self.capacity - first % self.capacity
        return [slice(first, stop)] if stop <= wrap else [slice(first, wrap), slice(wrap, stop)]

    def take(self, step: Pass, output: np.ndarray, share: Map = in_order, parts: int = 1) -> None:
        super().take(step, output, share, parts)
        final = self.final_after[self._taken]
        self._taken += 1
        if final > self.base:
            self._hand_on(final, share)

    def finish(self, background: np.ndarray | None = None, share: Map = in_order) -> int:
        """Hand on the rows still open; returns the rows handed on in all (the output's first axis)."""
        if self.background is None and background is not None:
            self.background = np.asarray(background, dtype=np.float32).reshape(-1)
        self._start_finish(self.background)
        self._hand_on(self.rows, share)
        return self.base

    def _hand_on(self, stop: int, share: Map) -> None:
        """Rows [base, stop), as many at a time as lie in a row of the buffers without wrapping:
        divided by their weights in place (rows no window reached are all background), checked,
        lent to the sink, and cleared for the rows to come."""
        while self.base < stop:
            at = self.base % self.capacity
            count = min(stop - self.base, self.capacity - at)
            ring = slice(at, at + count)
            sums = self._sum[:, ring]
            if self.normalise:
                self._divide(sums, self._weight[ring])
                self._weight[ring] = 0
            check_finite(sums, share)
            self.sink(self.base, sums)
            sums[...] = 0
            self.base += count

    def _divide(self, sums: np.ndarray, weight: np.ndarray) -> None:
        covered = weight > 0
        if covered.all():
            np.divide(sums, weight, out=sums)
            return
        missing = int(covered.size - np.count_nonzero(covered))
        fill = background_vector(self.background, sums.shape[0], missing, int(covered.size))
        np.divide(sums, weight, out=sums, where=covered)
        sums[:, ~covered] = fill[:, None]


def _row_schedule(plan: Plan) -> tuple[list[int], int]:
    """After each pass, the row before which every row is final (no later pass reaches it), and
    the most rows open at once (the buffers' first axis)."""
    passes = plan.passes
    rows = plan.output_shape[0]
    final_after = [rows] * len(passes)
    lowest = rows
    for number in range(len(passes) - 1, -1, -1):
        final_after[number] = lowest
        lowest = min([lowest, *(target[0].start for target in passes[number].targets)])
    capacity, base, reach = 1, 0, 0
    for number, step in enumerate(passes):
        reach = max([reach, *(target[0].stop for target in step.targets)])
        capacity = max(capacity, reach - base)
        base = max(base, final_after[number])
    return final_after, min(capacity, rows)
