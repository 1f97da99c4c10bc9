"""Where a benchmark runs: the machine it names, the shared test data it reads, a process's own
peak memory, and SIGTERM ending a run as an exit does (its `finally` blocks run)."""
from __future__ import annotations

import os
import platform
import signal
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_text() -> str:
    """The CPU, how many of its logical CPUs this process may use, the system and its release."""
    return (f"{cpu_name()}, {usable_cpus()} of {os.cpu_count()} logical CPUs usable, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def print_machine() -> None:
    print(f"machine: {machine_text()}", flush=True)


def data_root() -> Path:
    """The shared test data: `$TEST_DATA_DIR`, else `../shared/data` beside the repository (as
    the tests find it)."""
    return Path(os.environ.get("TEST_DATA_DIR") or REPO.parent / "shared" / "data")


def own_peak_mb() -> float:
    """This process's own peak resident memory in MB: VmHWM, which starts again at exec, where
    `ru_maxrss` keeps the peak of the process that forked it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise OSError("VmHWM not found in /proc/self/status")


def exit_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so that a run stopped that way still ends the processes it
    started and removes its temporary folders."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
