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


def nearly_flat(shape: tuple[int, ...], level: float, dtype: Any = np.float32) -> np.ndarray:
    """An image of mean `level`, its voxels within a ten-thousandth of it (a ramp): a scan whose
    every voxel holds one value is refused as no image."""
    spread = 1e-4 * max(abs(level), 1.0)
    ramp = np.linspace(-spread, spread, int(np.prod(shape))).reshape(shape)
    return (level + ramp).astype(dtype)


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


def skip_connection_graph(features: int = 4, seed: int = 0, through: str | None = None) -> onnx.ModelProto:
    """A 3D segmentation network with a skip connection, as a UNet has: a = PReLU(conv(input)),
    b = PReLU(conv(a)), logits = 1x1 conv(concat(a, b)), the concatenation passed through an
    operator `through` first where given (Identity, MaxPool: one without weights); positive
    smoothing weights (seeded), so class 1 is where both smoothings of the z-scored image exceed
    about 1. Layers named smooth, smoother and head."""
    from onnx import TensorProto, helper, numpy_helper

    from export import graphs

    rng = np.random.default_rng(seed)
    kernel, pads = [3, 3, 3], [1] * 6
    weights = {"w1": np.abs(rng.normal(size=(features, 1, *kernel))) / 27,
               "w2": np.abs(rng.normal(size=(features, features, *kernel))) / (27 * features),
               "w3": np.zeros((2, 2 * features, 1, 1, 1)), "b3": np.array([0.0, -8.0]),
               "slope": np.full((features, 1, 1, 1), 0.1)}
    weights["w3"][1] = 8.0 / (2 * features)
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], kernel_shape=kernel, pads=pads, name="smooth"),
             helper.make_node("PRelu", ["c1", "slope"], ["a"], name="act1"),
             helper.make_node("Conv", ["a", "w2"], ["c2"], kernel_shape=kernel, pads=pads, name="smoother"),
             helper.make_node("PRelu", ["c2", "slope"], ["b"], name="act2"),
             helper.make_node("Concat", ["a", "b"], ["ab"], axis=1, name="skip"),
             helper.make_node("Conv", ["ab", "w3", "b3"], ["output"], kernel_shape=[1, 1, 1], name="head")]
    if through is not None:
        extra = {"kernel_shape": [1, 1, 1]} if through == "MaxPool" else {}
        nodes[-1:-1] = [helper.make_node(through, ["ab"], ["passed"], name="through", **extra)]
        nodes[-1].input[0] = "passed"

    def image(name: str, channels: int) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [graphs.BATCH, channels, "z", "y", "x"])

    graph = helper.make_graph(
        nodes, "skip_connection", [image("input", 1)], [image("output", 2)],
        initializer=[numpy_helper.from_array(array.astype(np.float32), name) for name, array in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", graphs.OPSET)])
    model.ir_version = graphs.IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def bright_model(repository: Path) -> Path:
    """A small real 3D segmentation model (bright voxels are class 1) in `repository`, patch 8×16×16."""
    from export import graphs

    return make_model(repository, graphs.bright_structures(3),
                      preprocessing=[{"name": "zscore", "params": {"region": "nonzero"}}],
                      window=window(patch_size=[8, 16, 16]))


def bone_model(repository: Path, profile: dict[str, Any] | None = None, **codes: Any) -> Path:
    """The demo's bright-structure filter on CT numbers / 100: bone (above about 300 HU) is class 1,
    its class carrying the coded concepts `codes` (category, type) where given; with the input
    `profile` of its training subjects (runtime.profile) where given."""
    from export import graphs

    extra = {} if profile is None else {"provenance": {"description": "test model", "input_profile": profile}}
    return make_model(repository, graphs.bright_structures(3), name="bone",
                      classes=[{"value": 0, "name": "background"}, {"value": 1, "name": "bone", **codes}],
                      preprocessing=[{"name": "normalize", "params": {"mean": [0], "std": [100]}}], **extra)


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


def density_classifier(repository: Path, **first_class: Any) -> Path:
    """A small real 3D classification model of a CT's mean density (CT numbers / 100, resized to
    3×16×16): classes low, mid and high, the first carrying `first_class` (coded concepts) where given."""
    from export import graphs

    return make_model(repository, graphs.channel_classifier(1, 3, 3), task="classification", name="density",
                      classes=[{"value": 0, "name": "low", **first_class}, {"value": 1, "name": "mid"},
                               {"value": 2, "name": "high"}],
                      preprocessing=[{"name": "normalize", "params": {"mean": [0], "std": [100]}},
                                     {"name": "resize", "params": {"shape": [3, 16, 16]}}],
                      window=window(mode="whole", patch_size=[3, 16, 16]))


HOUNSFIELD = {"scheme": "UCUM", "value": "[hnsf'U]", "meaning": "Hounsfield unit"}


def mean_density_model(repository: Path) -> Path:
    """A small real 3D regression model: the mean CT number of the scan resized to 3×16×16, in
    Hounsfield units."""
    from export import graphs

    return make_model(repository, graphs.mean_regressor(1, 3), task="regression", name="mean_density",
                      classes=[{"value": 0, "name": "mean density", "unit": HOUNSFIELD}],
                      output={"activation": "none", "label_rule": "argmax", "threshold": 0.5, "ensemble": "mean"},
                      preprocessing=[{"name": "resize", "params": {"shape": [3, 16, 16]}}],
                      window=window(mode="whole", patch_size=[3, 16, 16]))
