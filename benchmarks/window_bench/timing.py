"""Timing: contenders run once untimed, then in turns; each run's wall clock, the CPU seconds of
this process (and of those, the kernel's), and the CPU seconds the VM's host took meanwhile (steal)."""
from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

Labels = np.ndarray
LABEL_WIDTH = 54
Pair = tuple["Timed", "Timed"]


@dataclass(frozen=True)
class Timed:
    """One contender: its label, what one run does, and what its runs measured (appended to)."""

    label: str
    run: Callable[[], Labels | None]
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)      # CPU-s of this process's threads
    kernel: list[float] = field(default_factory=list)   # of which in the kernel (page faults, I/O)
    steal: list[float] = field(default_factory=list)    # CPU-s the host took meanwhile
    results: list[Labels] = field(default_factory=list)  # the last run's labels, where it gives them

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def labels(self) -> Labels | None:
        return self.results[-1] if self.results else None


def steal_seconds() -> float | None:
    """CPU time the VM's host has taken from this machine since boot (all CPUs, /proc/stat);
    None where the system does not say."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def time_once(timed: Timed) -> None:
    gc.collect()
    stolen, cpu, kernel, started = steal_seconds(), time.process_time(), os.times().system, time.perf_counter()
    result = timed.run()
    timed.seconds.append(time.perf_counter() - started)
    timed.cpu.append(time.process_time() - cpu)
    timed.kernel.append(os.times().system - kernel)
    stolen_after = steal_seconds()
    if stolen is not None and stolen_after is not None:
        timed.steal.append(stolen_after - stolen)
    if result is not None:
        timed.results[:] = [result]


def warm_up(contenders: Sequence[Timed]) -> None:
    """One untimed run of each contender first: every engine's first forward passes set up its
    kernels and memory (OpenVINO's streams about 0.25 s, torch its allocator), which the first
    timed turn would otherwise pay. The CLI row shows a whole cold process."""
    for timed in contenders:
        started = time.perf_counter()
        timed.run()
        seconds = time.perf_counter() - started
        print(f"  warm-up    {timed.label:<{LABEL_WIDTH}s} {seconds:8.2f} s (not counted)", flush=True)


def in_turns(contenders: Sequence[Timed], repeats: int, pairs: Sequence[Pair] = ()) -> None:
    """Time every contender `repeats` times, interleaved turn by turn.

    Each of the `pairs` (two contenders whose ratio matters most) runs back to back in every turn,
    in alternating order (x y, then y x, ...), the pairs first and the others after them: this
    VM's speed drifts over the tens of seconds the others take, and a pair timed side by side
    sees closer machine states, while alternating balances any effect of going first or second
    (exactly so over an even number of turns). Without pairs every turn runs them in order."""
    for round_index in range(repeats):
        for timed in turn_order(contenders, round_index, pairs):
            time_once(timed)
            steal = f", host took {timed.steal[-1]:.2f}" if timed.steal else ""
            print(f"  round {round_index + 1}/{repeats}  {timed.label:<{LABEL_WIDTH}s} {timed.seconds[-1]:8.2f} s"
                  f"  (CPU {timed.cpu[-1]:.2f} s{steal})", flush=True)


def turn_order(contenders: Sequence[Timed], round_index: int, pairs: Sequence[Pair] = ()) -> list[Timed]:
    """The contenders in the order of one turn: each pair (swapped in odd turns), then the rest."""
    first = [timed for pair in pairs for timed in (pair if round_index % 2 == 0 else reversed(pair))]
    return first + [timed for timed in contenders if all(timed is not paired for paired in first)]


def busy_seconds() -> tuple[float, float] | None:
    """(CPU seconds busy on the whole machine, CPU seconds used by this process and its children)
    so far, or None where /proc/stat cannot be read."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(value) for value in fields[:8]]
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    own = os.times()
    return busy, own.user + own.system + own.children_user + own.children_system


def others_text(start: tuple[float, float] | None, wall: float) -> str:
    """CPU time other processes took while this run went on, the benchmark's noise."""
    end = busy_seconds()
    if start is None or end is None:
        return "CPU use of other processes: unknown (no /proc/stat)"
    others = max(0.0, (end[0] - start[0]) - (end[1] - start[1]))
    share = 100.0 * others / (wall * (os.cpu_count() or 1))
    return f"CPU used by other processes during the run: {others:.0f} CPU-s, {share:.1f} % of the machine"


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


class Clock:
    """Laps of one run, in the order they were taken."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self.last
        self.last = now
