"""The row merger: the in-memory blend handed on a slab of rows at a time, holding the open rows only."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import ModelError
from runtime.window import MemoryMerger, plan
from runtime.window.stream import RowMerger
from tests.windowkit import merge, spec


class Rows:
    """A sink that keeps what it is given, and checks it comes in order, each row once."""

    def __init__(self) -> None:
        self.slabs: list[np.ndarray] = []
        self.next = 0

    def __call__(self, first: int, rows: np.ndarray) -> None:
        assert first == self.next and rows.shape[1] >= 1
        self.slabs.append(rows.copy())
        self.next += rows.shape[1]

    def whole(self) -> np.ndarray:
        return np.concatenate(self.slabs, axis=1)


@pytest.mark.parametrize("shape,patch,mirrors,batch", [
    ((37, 29), (8, 6), (), 1), ((37, 29), (8, 6), (0,), 2), ((13, 11, 9), (5, 4, 3), (0, 2), 2),
    ((40, 12, 12), (6, 12, 12), (), 3), ((9, 9), (9, 9), (), 1),
])
@pytest.mark.parametrize("blending", ["gaussian", "constant"])
def test_the_row_merger_hands_on_the_in_memory_result_row_by_row(shape, patch, mirrors, batch, blending) -> None:
    planned = plan(shape, spec(patch, blending=blending, batch_size=batch, mirror_axes=mirrors, overlap=0.4))
    rows = Rows()
    streamed, in_memory = RowMerger(planned, rows), MemoryMerger(planned)
    merge(streamed, planned)
    merge(in_memory, planned)
    handed_before_finish = rows.next
    assert streamed.finish() == shape[0] == rows.next
    np.testing.assert_allclose(rows.whole(), in_memory.finish(), rtol=1e-6, atol=1e-6)
    if shape[0] >= 3 * patch[0]:
        assert handed_before_finish >= shape[0] // 2                  # rows went on while passes came
        assert streamed.capacity < shape[0] // 2                       # and only open rows were held


def test_rows_no_window_reached_come_as_the_background_and_without_one_are_refused() -> None:
    foreground = np.zeros((60, 20), dtype=bool)
    foreground[10:18] = True
    foreground[45:50] = True
    planned = plan((60, 20), spec((8, 8), skip_empty=True, batch_size=2), foreground)
    background = np.array([2.0, -2.0], np.float32)
    rows, in_memory = Rows(), MemoryMerger(planned)
    streamed = RowMerger(planned, rows, background)
    merge(streamed, planned, channels=2)
    merge(in_memory, planned, channels=2)
    streamed.finish()
    np.testing.assert_allclose(rows.whole(), in_memory.finish(background), rtol=1e-6, atol=1e-6)
    refused = RowMerger(planned, Rows())
    with pytest.raises(ModelError, match="covered by no window"):
        merge(refused, planned, channels=2)
        refused.finish()


def test_a_non_finite_output_is_refused_before_its_rows_are_handed_on() -> None:
    planned = plan((30, 10), spec((6, 10)))
    rows = Rows()
    merger = RowMerger(planned, rows)
    first = planned.passes[0]
    output = np.ones((len(first.windows), 2, *planned.spec.output_patch), np.float32)
    output[0, 1, 0, 0] = np.nan
    with pytest.raises(ModelError, match="NaN or infinite"):
        for step in planned.passes:
            merger.take(step, merger.check(output, len(step.windows)))
    assert rows.next == 0
