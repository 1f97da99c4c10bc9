"""How every command of the three packages reports a project error: one line, exit code 1."""
from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import click

from runtime.errors import MedflowError

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(command: F) -> F:
    """Turn a project error into one `error: ...` line on stderr and exit code 1, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except MedflowError as exc:
            click.echo(f"error: {' '.join(str(exc).split())}", err=True)
            raise click.exceptions.Exit(1) from None

    return wrapper  # type: ignore[return-value]
