"""Small real models for tests: tiny ONNX graphs packaged with a manifest, and scans on disk."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import SimpleITK as sitk
from click.testing import CliRunner

from runtime.manifest import (
    ClassSpec, Manifest, OnnxSpec, OutputSpec, Step, WindowSection, parse_manifest, sha256_of,
)


def manifest_dict(**overrides: Any) -> dict[str, Any]:
    """A valid 3D segmentation manifest; keyword arguments replace whole top-level sections."""
    data: dict[str, Any] = {
        "schema_version": 1, "name": "test_model", "version": 1, "task": "segmentation",
        "modality": "radiology", "dimensions": 3, "axis_order": "zyx", "channels": ["image"],
        "classes": [{"value": 0, "name": "background"}, {"value": 1, "name": "structure"}],
        "preprocessing": [],
        "window": {"mode": "sliding", "patch_size": [8, 16, 16], "overlap": 0.5, "blending": "gaussian",
                   "batch_size": 2, "mirror_axes": [], "skip_background": False},
        "output": {"activation": "softmax", "label_rule": "argmax", "threshold": 0.5, "ensemble": "mean"},
        "onnx": {"file": "model.onnx", "input": "input", "output": "output", "opset": 17},
        "files": {}, "provenance": {"description": "test model"},
    }
    data.update(overrides)
    return data


def make_manifest(onnx_sha256: str, version: int = 1) -> Manifest:
    """A complete Manifest object of a tiny 3D segmentation model whose model.onnx has `onnx_sha256`."""
    return Manifest(
        schema_version=1, name="tiny", version=version, task="segmentation", modality="radiology",
        dimensions=3, axis_order="zyx", channels=("image",),
        classes=(ClassSpec(0, "background"), ClassSpec(1, "bright")),
        preprocessing=(Step("resample", {"spacing": [2.0, 1.5, 1.5]}), Step("zscore", {"region": "nonzero"})),
        window=WindowSection(mode="sliding", patch_size=(8, 16, 16), overlap=0.5, blending="gaussian",
                             batch_size=2, mirror_axes=(0, 2), skip_background=True),
        output=OutputSpec(activation="softmax", label_rule="argmax", threshold=0.5, ensemble="mean"),
        onnx=OnnxSpec(file="model.onnx", input="input", output="output", opset=17),
        files={"model.onnx": onnx_sha256},
        provenance={"description": "test model", "authors": ["a", "b"]},
    )


def window(**changes: Any) -> dict[str, Any]:
    base = manifest_dict()["window"]
    base.update(changes)
    return base


def make_model(folder: Path, graph: onnx.ModelProto, **overrides: Any) -> Path:
    """Write graph + manifest into folder/<name>/1/ and return the model folder."""
    data = manifest_dict(**overrides)
    version_dir = folder / data["name"] / str(data["version"])
    version_dir.mkdir(parents=True)
    onnx.save(graph, str(version_dir / "model.onnx"))
    data["files"] = {"model.onnx": sha256_of(version_dir / "model.onnx")}
    parse_manifest(data)
    (version_dir / "manifest.json").write_text(json.dumps(data, indent=2))
    return folder / data["name"]


def write_scan(path: Path, array_zyx: np.ndarray, spacing_xyz: tuple[float, ...] = (1.0, 1.0, 1.0),
               direction: tuple[float, ...] | None = None, origin: tuple[float, ...] | None = None) -> Path:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(spacing_xyz)
    if direction is not None:
        image.SetDirection(direction)
    if origin is not None:
        image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return path


def blob_volume(shape_zyx: tuple[int, ...] = (20, 40, 36), seed: int = 0) -> np.ndarray:
    """A smooth positive volume with a bright blob, zero outside a central box (a 'body')."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_zyx], indexing="ij")
    radius = sum(g ** 2 for g in grids)
    array = (50 + 100 * np.exp(-radius / 0.1) + rng.normal(0, 2, shape_zyx)).astype(np.float32)
    body = np.ones(shape_zyx, dtype=bool)
    for axis, n in enumerate(shape_zyx):
        index = [slice(None)] * len(shape_zyx)
        index[axis] = slice(0, max(1, n // 8))
        body[tuple(index)] = False
    array[~body] = 0
    return array


def bright_model(repository: Path) -> Path:
    """A small real 3D segmentation model (bright voxels are class 1) in `repository`, patch 8×16×16."""
    from export import graphs

    return make_model(repository, graphs.bright_structures(3),
                      preprocessing=[{"name": "zscore", "params": {"region": "nonzero"}}],
                      window=window(patch_size=[8, 16, 16]))


def bone_model(repository: Path, **codes: Any) -> Path:
    """The demo's bright-structure filter on CT numbers / 100: bone (above about 300 HU) is class 1,
    its class carrying the coded concepts `codes` (category, type) where given."""
    from export import graphs

    return make_model(repository, graphs.bright_structures(3), name="bone",
                      classes=[{"value": 0, "name": "background"}, {"value": 1, "name": "bone", **codes}],
                      preprocessing=[{"name": "normalize", "params": {"mean": [0], "std": [100]}}])


def run_failing(args: list[str], *expected: str) -> str:
    """Run `runtime ARGS`: exit code 1 and one `error:` line holding every `expected` text, no traceback."""
    from runtime.commands.cli import main

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]
