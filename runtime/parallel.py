"""CPU counts and the small thread fan-outs that whole-image numpy work uses (numpy releases
the GIL in its array loops, so a few threads share out a volume's passes)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, TypeVar

Item = TypeVar("Item")


def physical_cores() -> int:
    """Number of distinct physical cores among the CPUs this process may run on."""
    cpus = allowed_cpus()
    cores = {_core_of(cpu) for cpu in cpus}
    if None in cores:
        return max(1, len(cpus))
    return max(1, len(cores))


def allowed_cpus() -> set[int]:
    """The logical CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def _core_of(cpu: int) -> tuple[str, str] | None:
    """(package id, core id) of one logical CPU, or None where the topology is not readable."""
    topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
    try:
        package = (topology / "physical_package_id").read_text().strip()
        core = (topology / "core_id").read_text().strip()
    except OSError:
        return None
    return package, core


class Workers:
    """A few threads kept for many small fan-outs: `map(work, items)` shares the items between the
    pool and the calling thread, which takes a share too. Use as a context manager."""

    def __init__(self, count: int | None = None) -> None:
        self.count = max(1, count or physical_cores())
        self._pool = ThreadPoolExecutor(self.count - 1, thread_name_prefix="medflow") if self.count > 1 else None

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def map(self, work: Callable[[Item], object], items: Iterable[Item]) -> None:
        """Call work(item) for every item; every call has ended when this returns or raises, and
        the first exception (in item order) reaches the caller."""
        items = list(items)
        if self._pool is None or len(items) < 2:
            for item in items:
                work(item)
            return
        share = -(-len(items) // self.count)
        futures = [self._pool.submit(_each, work, items[start:start + share])
                   for start in range(share, len(items), share)]
        errors: list[BaseException] = []
        try:
            _each(work, items[:share])
        except BaseException as error:  # noqa: BLE001 - raised below, after the other shares end
            errors.append(error)
        for future in futures:
            error = future.exception()
            if error is not None:
                errors.append(error)
        if errors:
            raise errors[0]


def _each(work: Callable[[Item], object], items: list[Item]) -> None:
    for item in items:
        work(item)


def for_each(work: Callable[[Item], object], items: Iterable[Item], workers: int | None = None) -> None:
    """Call work(item) for every item, on up to `workers` threads (default: one per core).

    The first exception raised by `work` reaches the caller once every call has ended.
    """
    items = list(items)
    with Workers(min(workers or physical_cores(), max(1, len(items)))) as pool:
        pool.map(work, items)


def in_slabs(work: Callable[[slice], object], length: int, rows: int) -> None:
    """Call work(slab) for consecutive slabs of `rows` rows of range(length), one thread per core."""
    for_each(work, [slice(start, min(start + rows, length)) for start in range(0, length, rows)])
