"""Helpers for the export tests: a valid model spec, and `export build --from-onnx` run as a user runs it."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import onnx
import yaml
from click.testing import CliRunner, Result

from export import graphs
from export.cli import main


def base_spec(**changes: Any) -> dict[str, Any]:
    """A valid spec for the bright-structures graph; keyword arguments replace whole top-level keys."""
    spec: dict[str, Any] = {
        "name": "bright",
        "task": "segmentation",
        "modality": "radiology",
        "dimensions": 3,
        "axis_order": "zyx",
        "channels": ["image"],
        "classes": {0: "background", 1: "bright"},
        "preprocessing": [{"resample": {"spacing": [2.0, 1.5, 1.5]}}, {"zscore": {"region": "nonzero"}}],
        "patch": {"size": [8, 16, 16]},
        "provenance": {"description": "fixed test model", "license": "Apache-2.0"},
    }
    spec.update(changes)
    return spec


def write_spec(folder: Path, spec: dict[str, Any]) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def save_graph(folder: Path, model: onnx.ModelProto, name: str = "model.onnx") -> Path:
    return graphs.save(model, folder / name)


def build(onnx_path: Path, spec_path: Path, repository: Path, *extra: str) -> Result:
    args = ["build", "--from-onnx", str(onnx_path), "--spec", str(spec_path), "--repository", str(repository)]
    return CliRunner().invoke(main, [*args, *extra])


def assert_one_error_line(result: Result, message: str) -> None:
    """Exit code 1, nothing on stdout, and one `error:` line on stderr that matches the regex `message`."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert result.stdout == ""
