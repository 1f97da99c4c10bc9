"""How every command of the three packages reports a project error: one line, exit code 1; and how
it stops on SIGTERM or SIGHUP (a batch system's or a container's stop): as on Ctrl-C, every
cleanup runs (staged outputs and scratch folders are removed), then one line and exit code
128 + the signal's number."""
from __future__ import annotations

import functools
import signal
import threading
from types import FrameType
from typing import Any, Callable, TypeVar

import click

from runtime.errors import MedflowError

F = TypeVar("F", bound=Callable[..., Any])

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(BaseException):
    """A stop signal, raised in the main thread where the command runs (not an Exception, so that
    no `except Exception` takes it for an error to recover from)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


def reports_errors(command: F) -> F:
    """Turn a project error into one `error: ...` line on stderr and exit code 1, never a traceback;
    a stop signal into one line and exit code 128 + its number, once the command's cleanups ran."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        main = threading.current_thread() is threading.main_thread()
        previous = {signum: signal.signal(signum, _stop) for signum in STOP_SIGNALS} if main else {}
        try:
            return command(*args, **kwargs)
        except MedflowError as exc:
            click.echo(f"error: {' '.join(str(exc).split())}", err=True)
            raise click.exceptions.Exit(1) from None
        except Stopped as stop:
            click.echo(f"error: stopped by {stop}; unfinished outputs were removed", err=True)
            raise click.exceptions.Exit(128 + stop.signum) from None
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    return wrapper  # type: ignore[return-value]
