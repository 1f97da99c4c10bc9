"""How every command of the three packages reports a project error: one line, exit code 1; and how
it stops on Ctrl-C, SIGTERM or SIGHUP: once its cleanups ran (`runtime.stopping`), with one line
and exit code 128 + the signal's number (130 for Ctrl-C)."""
from __future__ import annotations

import functools
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import click

from runtime.errors import MedflowError
from runtime.stopping import Stopped, stops_as_errors

if TYPE_CHECKING:
    from runtime.manifest import Manifest

F = TypeVar("F", bound=Callable[..., Any])


class LogLines(logging.Formatter):
    """A log record as the commands' own lines read: `warning: <message>` (grep-able alike with
    their `warning:` lines), and below a warning `info: <logger>: <message>` (-v)."""

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        line = f"{level}: {record.getMessage()}" if record.levelno >= logging.WARNING else \
            f"{level}: {record.name}: {record.getMessage()}"
        return f"{line}\n{self.formatException(record.exc_info)}" if record.exc_info else line


def log_lines(level: int) -> None:
    """Log records from `level` up to stderr as `LogLines`."""
    handler = logging.StreamHandler()
    handler.setFormatter(LogLines())
    logging.basicConfig(level=level, handlers=[handler])


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


def taken_version(model_path: Path, expect_digest: str | None = None) -> tuple[Manifest, Path]:
    """The model version a command runs, its manifest and folder (a model folder's newest version),
    once its pins pass (`check_pins`); a warning where a model folder's newest version, taken for
    it, is an int8 one, whose numbers are close to its float version's, not equal."""
    from runtime.digests import check_pins, load_as_exported, unrecorded
    from runtime.manifest import checked_backends, float_version

    manifest, version_dir = load_as_exported(model_path, verify=False)
    check_pins(version_dir, expect_digest)
    said = None if expect_digest else unrecorded(model_path, version_dir)     # a version pinned by its digest
    if said:
        click.echo(f"warning: {said}", err=True)
    if checked_backends(manifest) is not None and Path(model_path).resolve() != version_dir.resolve():
        made_from = float_version(manifest, version_dir)
        runs_float = f"; --model {made_from} runs its float version" if made_from else ""
        click.echo(f"warning: model {manifest.name}: its newest version, v{manifest.version}, is an int8 version, "
                   f"which runs{runs_float}", err=True)
    return manifest, version_dir
