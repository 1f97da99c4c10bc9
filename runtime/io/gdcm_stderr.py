"""What GDCM prints to the process's stderr as it reads a JPEG series that is well: dropped.

GDCM's JPEG codec tries its 8-bit decoder on every JPEG frame first; on a 12-bit frame (JPEG
Extended, as many CT archives store) that decoder prints "Unsupported JPEG data precision 12"
straight to file descriptor 2, several times per slice, before the 12-bit decoder reads the frame.
A series of 500 slices printed thousands of such lines around the runtime's own. While GDCM reads
a file or series stored as JPEG (`is_jpeg`), descriptor 2 is a pipe whose lines a thread passes on
to the real stderr as they come, all but those: nothing else said meanwhile (a warning, another
thread's log line, a child process's) is held back or lost.
"""
from __future__ import annotations

import os
import re
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

NOISE = re.compile(rb"^Unsupported JPEG data precision \d+\r?$")
# The transfer syntaxes of JPEG baseline and extended (1.2.840.10008.1.2.4.50 and .51), as the file
# meta header at a DICOM file's start spells them; the file meta lies within its first bytes.
_JPEG_SYNTAX = re.compile(rb"1\.2\.840\.10008\.1\.2\.4\.5[01]\x00?")
_META_BYTES = 4096
# How long the end of a pipe is waited for, its last lines to be written before the reader goes on.
JOIN_SECONDS = 2.0


def is_jpeg(paths: Sequence[Path]) -> bool:
    """Whether the first of `paths` is a DICOM file whose pixel data are JPEG baseline or extended
    (the files of a series share their transfer syntax as a rule; one that does not only prints)."""
    try:
        with open(paths[0], "rb") as handle:
            return _JPEG_SYNTAX.search(handle.read(_META_BYTES)) is not None
    except (OSError, IndexError):
        return False


class _Passing:
    """One pipe for the whole process, from the first entry to the last exit (threads read the
    slices of a series at once, and descriptor 2 is one for them all)."""
    lock = threading.Lock()
    depth = 0
    saved: int | None = None
    thread: threading.Thread | None = None


@contextmanager
def quiet_gdcm(paths: Sequence[Path]) -> Iterator[None]:
    """Descriptor 2 passed on without GDCM's `NOISE` lines while GDCM reads `paths`, where they are
    JPEG (`is_jpeg`); nothing changed for any other file."""
    if not is_jpeg(paths):
        yield
        return
    with _Passing.lock:
        if _Passing.depth == 0:
            _start()
        _Passing.depth += 1
    try:
        yield
    finally:
        with _Passing.lock:
            _Passing.depth -= 1
            if _Passing.depth == 0:
                _stop()


def _start() -> None:
    try:
        sys.stderr.flush()
        read_end, write_end = os.pipe()
    except (OSError, ValueError):                 # no room for a pipe: nothing is filtered
        return
    try:
        saved, out = os.dup(2), os.dup(2)
    except OSError:                               # no descriptor 2: nothing to filter
        os.close(read_end)
        os.close(write_end)
        return
    thread = threading.Thread(target=_pass_on, args=(read_end, out), name="gdcm-stderr", daemon=True)
    thread.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    _Passing.saved, _Passing.thread = saved, thread


def _stop() -> None:
    saved = _Passing.saved
    if saved is None:
        return
    _Passing.saved = None
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(saved, 2)                             # the pipe's last writer here: its reader sees its end
    os.close(saved)
    if _Passing.thread is not None:               # what it still holds written before what follows
        _Passing.thread.join(timeout=JOIN_SECONDS)    # (a child process holding the pipe keeps it open)
        _Passing.thread = None


def _pass_on(read_end: int, out: int) -> None:
    """Every line read from the pipe written to `out` as it comes, GDCM's `NOISE` lines left out;
    both descriptors closed at the pipe's end (when no process holds its write end any more)."""
    pending = b""
    try:
        while True:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            _write_all(out, b"".join(line + b"\n" for line in lines if not NOISE.match(line)))
        if pending and not NOISE.match(pending):
            _write_all(out, pending)
    except OSError:
        pass
    finally:
        os.close(read_end)
        os.close(out)


def _write_all(out: int, data: bytes) -> None:
    while data:
        data = data[os.write(out, data):]
