"""The thread fan-outs behind whole-image work: every item once, errors reach the caller."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from runtime.parallel import for_each, in_slabs


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_for_each_calls_every_item_once(workers: int) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def work(item: int) -> None:
        with lock:
            seen.append(item)

    for_each(work, range(11), workers=workers)
    assert sorted(seen) == list(range(11))


def test_for_each_raises_the_first_error_of_its_work() -> None:
    def work(item: int) -> None:
        if item == 3:
            raise ValueError("item 3 is bad")

    with pytest.raises(ValueError, match="item 3 is bad"):
        for_each(work, range(6), workers=2)


@pytest.mark.parametrize("length, rows", [(1, 8), (17, 8), (16, 8), (5, 1)])
def test_in_slabs_covers_the_range_exactly_once(length: int, rows: int) -> None:
    counts = np.zeros(length, dtype=int)

    def work(slab: slice) -> None:
        counts[slab] += 1

    in_slabs(work, length, rows)
    np.testing.assert_array_equal(counts, 1)
