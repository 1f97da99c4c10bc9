"""`export`: package models into versioned folders of a Triton model repository."""
from __future__ import annotations

from pathlib import Path

import click

from runtime.cli import reports_errors

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
