"""Stopping on SIGTERM or SIGHUP (a batch system's, a container's or a closed terminal's stop) as on
Ctrl-C: the signal becomes `Stopped`, raised in the main thread, so every cleanup runs.

`stops_as_errors()` installs the handler for the length of a command, only where a signal has its
default action (a run under `nohup`, which ignores SIGHUP, keeps ignoring it). Once one stop is
raised, later ones are ignored, so that no second signal cuts the cleanup short. A process forked
from the command (a data loader's worker) that inherited the handler takes the signal's default
action instead. `stops_held()` defers a stop, and Ctrl-C, until a short section that must not be
cut in two (publishing a job's outputs, one rename after another) has ended.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(BaseException):
    """A stop signal (not an Exception, so that no `except Exception` takes it for an error to
    recover from)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    pid = 0                        # the process that installed the handler
    held = 0                       # depth of stops_held() sections
    pending: int | None = None     # a stop that arrived while held
    installed: tuple[int, ...] = ()


def _stop(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _State.pid:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _State.held:
        _State.pending = _State.pending or signum
        return
    _raise(signum)


def _raise(signum: int) -> None:
    for installed in _State.installed:
        signal.signal(installed, signal.SIG_IGN)
    raise Stopped(signum)


@contextmanager
def stops_as_errors() -> Iterator[None]:
    """Within: SIGTERM and SIGHUP, where they have their default action, raise `Stopped` in the
    main thread; their handlers are as before afterwards. Nothing is installed off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    mine = tuple(signum for signum, handler in previous.items() if handler is signal.SIG_DFL)
    outer = (_State.pid, _State.installed)
    _State.pid, _State.installed = os.getpid(), mine
    for signum in mine:
        signal.signal(signum, _stop)
    try:
        yield
    finally:
        restore({signum: previous[signum] for signum in mine})
        _State.pid, _State.installed = outer


@contextmanager
def stops_held() -> Iterator[None]:
    """Within: a stop waits, Ctrl-C too (in the main thread, where Python's own handler is in place);
    it is raised as the outermost section ends, in place of an error the section raised (a batch
    that goes on past a failed job must still stop)."""
    interrupt = None
    try:
        _State.held += 1
        if (_State.held == 1 and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            interrupt = signal.signal(signal.SIGINT, _hold)
        yield
    finally:
        _State.held -= 1
        if interrupt is not None:
            signal.signal(signal.SIGINT, interrupt)
        if not _State.held and _State.pending is not None:     # raised even where the section raised: it wins
            signum, _State.pending = _State.pending, None
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            _raise(signum)


def _hold(signum: int, frame: FrameType | None) -> None:
    _State.pending = _State.pending or signum


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def interrupt_on_stops() -> dict[int, object]:
    """From now on SIGTERM and SIGHUP raise KeyboardInterrupt, so that a server's loop stops on them
    as on Ctrl-C, except where a signal is ignored (under `nohup`); returns the handlers before,
    for `restore`."""
    previous: dict[int, object] = {}
    for signum in STOP_SIGNALS:
        handler = signal.getsignal(signum)
        if handler is not signal.SIG_IGN and handler is not None:
            previous[signum] = signal.signal(signum, _interrupt)
    return previous


def restore(previous: dict[int, object]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)  # type: ignore[arg-type]


@contextmanager
def stops_ignored() -> Iterator[None]:
    """Within: SIGTERM and SIGHUP are ignored (a shutdown that a second signal must not cut short)."""
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        restore({signum: handler for signum, handler in previous.items() if handler is not None})
