"""Progress bars for epochs and batches, on stderr, only on a terminal; and for whole-subject
validation, which can take minutes, a line now and then where there is no terminal (a log file)."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Protocol, Sequence, TypeVar

Item = TypeVar("Item")

import click


class Bar(Protocol):
    def update(self, n: int) -> None: ...


class _Silent:
    def update(self, n: int) -> None:
        pass


@contextmanager
def progress_bar(length: int, label: str, enabled: bool = True) -> Iterator[Bar]:
    if not (enabled and sys.stderr.isatty()):
        yield _Silent()
        return
    with click.progressbar(length=length, label=label, file=sys.stderr, show_pos=True) as bar:
        yield bar


# Seconds between the lines that say how far a long step has got, where no bar can be drawn.
HEARTBEAT_S = 30.0


class _Heartbeat:
    """Says `label: n/total <unit>, s s` through `say` when HEARTBEAT_S have passed since the last line."""

    def __init__(self, length: int, label: str, unit: str, say: Callable[[str], None]) -> None:
        self.length, self.label, self.unit, self.say = length, label, unit, say
        self.done = 0
        self.started = self.last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= HEARTBEAT_S and self.done < self.length:
            self.last = now
            self.say(f"{self.label}: {self.done}/{self.length} {self.unit}, {now - self.started:.0f} s")


@contextmanager
def step_progress(length: int, label: str, unit: str, say: Callable[[str], None],
                  enabled: bool = True) -> Iterator[Bar]:
    """A bar on a terminal; elsewhere a line through `say` every HEARTBEAT_S while the step lasts."""
    if not enabled:
        yield _Silent()
    elif sys.stderr.isatty():
        with progress_bar(length, label) as bar:
            yield bar
    else:
        yield _Heartbeat(length, label, unit, say)


class Ticking(Sequence[Item]):
    """`items`, each counted on `bar` once it has been taken and the next is asked for (or the
    iteration ends), and once only: a second pass (an evaluation handed from the GPU to the CPU)
    counts the items beyond those the first reached."""

    def __init__(self, items: Sequence[Item], bar: Bar) -> None:
        self.items, self.bar, self.counted = items, bar, 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):  # type: ignore[override]
        return self.items[index]

    def __iter__(self) -> Iterator[Item]:
        for index, item in enumerate(self.items):
            yield item
            if index >= self.counted:
                self.counted = index + 1
                self.bar.update(1)
