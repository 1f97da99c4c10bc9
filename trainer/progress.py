"""Progress bars for epochs and batches, on stderr, only on a terminal."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, Protocol

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
