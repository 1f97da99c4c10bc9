"""`export`: package models into versioned folders of a Triton model repository."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from runtime.errors import MedflowError

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(command: F) -> F:
    """Turn a project error into one `error: ...` line on stderr and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except MedflowError as exc:
            click.echo(f"error: {' '.join(str(exc).split())}", err=True)
            raise click.exceptions.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@click.group()
def main() -> None:
    """Package models into versioned folders of a Triton model repository."""


@main.command()
@click.option("--from-onnx", "onnx_path", required=True, type=click.Path(path_type=Path),
              help="The ONNX model to package (one image input [batch, channels, *spatial]).")
@click.option("--spec", "spec_path", required=True, type=click.Path(path_type=Path),
              help="YAML file describing the model: task, channels, classes, preprocessing, patch (docs/spec.md).")
@click.option("--repository", type=click.Path(path_type=Path), default=Path("model_repository"),
              show_default=True, help="Model repository; the model goes to <repository>/<name>/<version>/.")
@click.option("--name", default=None, help="Model name (folder in the repository); overrides the spec's name.")
@reports_errors
def build(onnx_path: Path, spec_path: Path, repository: Path, name: str | None) -> None:
    """Package an existing ONNX model as the next version of a model in the repository."""
    from export.package import build_from_onnx
    from export.spec import load_spec

    spec = load_spec(spec_path, name=name)
    folder = build_from_onnx(onnx_path, spec, repository)
    click.echo(str(folder))


if __name__ == "__main__":
    main()
