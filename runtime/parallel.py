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


def for_each(work: Callable[[Item], object], items: Iterable[Item], workers: int | None = None) -> None:
    """Call work(item) for every item, on up to `workers` threads (default: one per core).

    The first exception raised by `work` reaches the caller once every call has ended.
    """
    items = list(items)
    count = min(workers or physical_cores(), len(items))
    if count < 2:
        for item in items:
            work(item)
        return
    with ThreadPoolExecutor(count, thread_name_prefix="medflow") as pool:
        list(pool.map(work, items))


def in_slabs(work: Callable[[slice], object], length: int, rows: int) -> None:
    """Call work(slab) for consecutive slabs of `rows` rows of range(length), one thread per core."""
    for_each(work, [slice(start, min(start + rows, length)) for start in range(0, length, rows)])
