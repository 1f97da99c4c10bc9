"""How every command of the three packages reports a project error: one line, exit code 1; and how
it stops on Ctrl-C, SIGTERM or SIGHUP: once its cleanups ran (`runtime.stopping`), with one line
and exit code 128 + the signal's number (130 for Ctrl-C)."""
from __future__ import annotations

import functools
import signal
from typing import Any, Callable, TypeVar

import click

from runtime.errors import MedflowError
from runtime.stopping import Stopped, stops_as_errors

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(command: F) -> F:
    """Turn a project error into one `error: ...` line on stderr and exit code 1, never a traceback;
    a stop signal into one line and exit code 128 + its number, once the command's cleanups ran."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with stops_as_errors():
                return command(*args, **kwargs)
        except MedflowError as exc:
            click.echo(f"error: {' '.join(str(exc).split())}", err=True)
            raise click.exceptions.Exit(1) from None
        except Stopped as stop:
            _say_interrupted(stop)
            click.echo(f"error: stopped by {stop} before the command finished", err=True)
            raise click.exceptions.Exit(128 + stop.signum) from None
        except KeyboardInterrupt as stop:
            _say_interrupted(stop)
            click.echo("error: stopped by SIGINT (Ctrl-C) before the command finished", err=True)
            raise click.exceptions.Exit(128 + signal.SIGINT) from None

    return wrapper  # type: ignore[return-value]


def _say_interrupted(stop: BaseException) -> None:
    """The project error a held stop was raised in place of (a publish that failed while the stop
    waited, which may name where earlier files were kept), as its own `error:` line."""
    if isinstance(stop.__context__, MedflowError):
        click.echo(f"error: {' '.join(str(stop.__context__).split())}", err=True)
