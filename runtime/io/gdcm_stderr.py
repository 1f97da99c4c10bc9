"""What GDCM prints to the process's stderr as it reads a series that is well: dropped.

GDCM's JPEG codec tries its 8-bit decoder on every JPEG frame first; on a 12-bit frame (JPEG
Extended, as many CT archives store) that decoder prints "Unsupported JPEG data precision 12"
straight to file descriptor 2, several times per slice, before the 12-bit decoder reads the frame.
A series of 500 slices printed thousands of such lines around the runtime's own. While GDCM reads,
descriptor 2 is caught in a temporary file; afterwards every caught line but those is written back
in order, so nothing else said in the meantime (a warning, another thread's log line) is lost.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from contextlib import contextmanager
from typing import IO, Iterator

NOISE = re.compile(rb"^Unsupported JPEG data precision \d+\r?$")


class _Caught:
    """One catch for the whole process, from the first entry to the last exit (threads read the
    slices of a series at once, and descriptor 2 is one for them all)."""
    lock = threading.Lock()
    depth = 0
    saved: int | None = None
    file: IO[bytes] | None = None


@contextmanager
def quiet_gdcm() -> Iterator[None]:
    """Descriptor 2 caught while GDCM reads, and written back without GDCM's `NOISE` lines."""
    with _Caught.lock:
        if _Caught.depth == 0:
            _start()
        _Caught.depth += 1
    try:
        yield
    finally:
        with _Caught.lock:
            _Caught.depth -= 1
            if _Caught.depth == 0:
                _stop()


def _start() -> None:
    try:
        sys.stderr.flush()
        caught = tempfile.TemporaryFile()
        saved = os.dup(2)
    except (OSError, ValueError):                 # no descriptor 2, or no room for a file: not caught
        return
    os.dup2(caught.fileno(), 2)
    _Caught.saved, _Caught.file = saved, caught


def _stop() -> None:
    saved, caught = _Caught.saved, _Caught.file
    if saved is None or caught is None:
        return
    _Caught.saved = _Caught.file = None
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(saved, 2)
    os.close(saved)
    with caught:
        caught.seek(0)
        kept = [line for line in caught.read().splitlines(keepends=True) if not NOISE.match(line.rstrip(b"\n"))]
    _write_all(b"".join(kept))


def _write_all(data: bytes) -> None:
    while data:
        try:
            written = os.write(2, data)
        except OSError:
            return
        data = data[written:]
