"""The memory budget: the most memory one job (a scan, a request) may plan to use.

Every allocation whose size comes from a file or a request — the voxels a header promises, the
grid a resample makes, the maps the sliding window stitches — is checked against the budget
before it is made, so a 10 KB file claiming 16 GB of voxels is refused from its header instead of
driving the machine out of memory.

The budget is `MEDFLOW_MAX_MEMORY` when set (bytes, or a number with K, M, G or T: "8G",
"512M"), else three quarters of the memory this process may use: the machine's RAM, or the
container's cgroup limit when that is lower.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from runtime.errors import InputError

ENV = "MEDFLOW_MAX_MEMORY"
MACHINE_SHARE = 0.75
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def parse_size(text: str, where: str) -> int:
    """Bytes from "8G", "512M", "1.5G" or a plain number of bytes; InputError naming `where` if not."""
    match = _SIZE.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise InputError(f"{where} must be a positive size such as 8G, 512M or a number of bytes, got {text!r}.")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def show_size(nbytes: float) -> str:
    """A byte count for people: 16.2 GB, 512 MB, 3 KB."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} bytes"


def machine_memory() -> int:
    """The memory this process may use: physical RAM, or a lower cgroup limit."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def memory_budget() -> int:
    """`MEDFLOW_MAX_MEMORY`, else three quarters of machine_memory()."""
    text = os.environ.get(ENV)
    if text:
        return parse_size(text, ENV)
    return int(machine_memory() * MACHINE_SHARE)


def budget_source(budget: int | None) -> tuple[int, str]:
    """The budget to use and how a user changes it."""
    if budget is not None:
        return budget, "the budget set for this job"
    if os.environ.get(ENV):
        return memory_budget(), f"{ENV}"
    return memory_budget(), f"{MACHINE_SHARE:.0%} of this machine's memory; set {ENV} to change it"


def check_memory(nbytes: int, what: str, remedy: str, budget: int | None = None) -> None:
    """Refuse work that would need more than the budget: `what` says which work and for which
    file or field, `remedy` what the user can do about it."""
    limit, source = budget_source(budget)
    if nbytes > limit:
        raise InputError(f"{what} needs about {show_size(nbytes)}, more than the memory budget of "
                         f"{show_size(limit)} ({source}); {remedy}")
