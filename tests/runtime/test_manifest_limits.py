"""Hostile manifests: loose types, files too large or nested too deeply, and values that size an allocation
beyond runtime.limits are refused with the field named; the same bounds hold for a spec and a training config."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from export import graphs
from runtime import limits
from runtime.commands.cli import main as runtime_main
from runtime.errors import ManifestError
from runtime.manifest import MANIFEST_FILE, load_manifest, parse_manifest
from tests.exportkit import assert_one_error_line, base_spec, build, save_graph, write_spec
from tests.modelkit import make_model, manifest_dict, window
from tests.trainerkit import SEGMENTATION, changed, problems_of


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    return make_model(tmp_path, graphs.bright_structures(3))


def rewrite(model_dir: Path, **top: Any) -> Path:
    """Replace top-level keys of the model's written manifest.json (after it was made valid)."""
    path = model_dir / "1" / MANIFEST_FILE
    data = json.loads(path.read_text())
    data.update(top)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(("top", "message"), [
    ({"schema_version": True}, r"schema_version True; this runtime reads only schema 1"),
    ({"schema_version": 1.0}, r"schema_version 1\.0; this runtime reads only schema 1"),
    ({"dimensions": 3.0}, r"dimensions: must be 2 or 3, got 3\.0"),
    ({"version": 1.0}, r"version: must be an integer >= 1, got 1\.0"),
    ({"onnx": {"file": "model.onnx", "input": "input", "output": "output", "opset": 17.0}},
     r"onnx\.opset: must be an integer >= 7, got 17\.0"),
    ({"window": window(batch_size=2.0)}, r"window\.batch_size: must be an integer from 1 to 1024, got 2\.0"),
    ({"window": window(patch_size=[8.0, 16, 16])}, r"window\.patch_size: must be 3 positive integers"),
    ({"classes": [{"value": 0, "name": "background"}, {"value": 1.0, "name": "structure"}]},
     r"classes\[1\]\.value: must be an integer from 0 to 65535"),
    ({"classes": [{"value": 0, "name": "background"}, {"value": True, "name": "structure"}]},
     r"classes\[1\]\.value: must be an integer from 0 to 65535"),
])
def test_numbers_that_are_not_real_integers_are_refused(model_dir: Path, top: dict[str, Any], message: str) -> None:
    rewrite(model_dir, **top)
    with pytest.raises(ManifestError, match=message):
        load_manifest(model_dir)


def test_a_manifest_nested_100000_deep_is_refused_without_a_recursion_error(model_dir: Path) -> None:
    path = model_dir / "1" / MANIFEST_FILE
    path.write_text('{"provenance": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ManifestError, match=rf"{MANIFEST_FILE} nests lists or objects more than 64 deep"):
        load_manifest(model_dir)


def test_nesting_the_json_decoder_accepts_is_still_bounded(model_dir: Path) -> None:
    deep: Any = "leaf"
    for _ in range(limits.MAX_MANIFEST_DEPTH):
        deep = [deep]
    rewrite(model_dir, provenance={"deep": deep})
    with pytest.raises(ManifestError, match=r"nests lists or objects more than 64 deep"):
        load_manifest(model_dir)
    rewrite(model_dir, provenance={"deep": deep[0][0]})
    assert load_manifest(model_dir)[0].provenance["deep"]


def test_a_manifest_larger_than_the_cap_is_refused_unread(model_dir: Path) -> None:
    path = model_dir / "1" / MANIFEST_FILE
    with open(path, "r+b") as handle:          # sparse: 17 MiB of size, no data behind it
        handle.truncate(17 * 2**20)
    with pytest.raises(ManifestError, match=r"is larger than 16,777,216 bytes"):
        load_manifest(model_dir)


def test_a_pipe_in_place_of_the_manifest_is_refused_without_waiting_on_it(model_dir: Path) -> None:
    """As Triton's model adapter reads it (`read_manifest_data`, with no check of the folder first)."""
    import os

    from runtime.manifest import read_manifest_data

    path = model_dir / "1" / MANIFEST_FILE
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(ManifestError, match=r"manifest.json cannot be read \(not a regular file\); re-export"):
        read_manifest_data(model_dir / "1")


BOUND_PROBES = [
    ("patch_axis", {"window": window(patch_size=[1_000_000, 16, 16])},
     r"window\.patch_size: must be at most 4096 per axis, got \[1000000, 16, 16\]"),
    ("patch_voxels", {"window": window(patch_size=[4096, 4096, 16])},
     r"window\.patch_size: must hold at most 67,108,864 voxels per window, got 268,435,456"),
    ("batch", {"window": window(batch_size=10**9)},
     r"window\.batch_size: must be an integer from 1 to 1024, got 1000000000"),
    ("batch_values", {"window": window(patch_size=[256, 256, 256], batch_size=1024)},
     r"window\.batch_size: 1024 windows x 1 channel\(s\) x 16,777,216 voxels is 17,179,869,184 values per model call"),
    ("class_value", {"classes": [{"value": 0, "name": "background"}, {"value": 10**30, "name": "x"}]},
     r"classes\[1\]\.value: must be an integer from 0 to 65535 \(label maps are uint8 or uint16\), got 10{30}"),
    ("classes", {"classes": [{"value": v, "name": f"c{v}"} for v in range(limits.MAX_CLASSES + 1)]},
     r"classes: must list at most 1024 classes, got 1025"),
    ("channels", {"channels": [f"c{i}" for i in range(limits.MAX_CHANNELS + 1)]},
     r"channels: must list at most 256 channels, got 257"),
    ("resize", {"preprocessing": [{"name": "resize", "params": {"shape": [100_000, 100_000, 100_000]}}]},
     r"preprocessing\[0\] \(resize\): shape: must be at most 16384 per axis"),
    ("pad", {"preprocessing": [{"name": "pad", "params": {"shape": [10_000, 10_000, 100]}}]},
     r"preprocessing\[0\] \(pad\): shape: must hold at most 1,073,741,824 voxels, got 10,000,000,000"),
    ("spacing_small", {"preprocessing": [{"name": "resample", "params": {"spacing": [1e-9, 1.0, 1.0]}}]},
     r"preprocessing\[0\] \(resample\): spacing: must be numbers from 0\.0001 to 10000 \(mm\)"),
    ("spacing_large", {"preprocessing": [{"name": "resample", "params": {"spacing": [1.0, 1e30, 1.0]}}]},
     r"preprocessing\[0\] \(resample\): spacing: must be numbers from 0\.0001 to 10000 \(mm\)"),
]


@pytest.mark.parametrize(("case", "top", "message"), BOUND_PROBES, ids=[p[0] for p in BOUND_PROBES])
def test_values_that_size_an_allocation_are_bounded(model_dir: Path, case: str, top: dict[str, Any],
                                                    message: str) -> None:
    rewrite(model_dir, **top)
    with pytest.raises(ManifestError, match=message):
        load_manifest(model_dir)


def test_a_class_value_of_10_to_the_30_is_one_error_line_of_the_cli(model_dir: Path) -> None:
    rewrite(model_dir, classes=[{"value": 0, "name": "background"}, {"value": 10**30, "name": "x"}])
    result = CliRunner().invoke(runtime_main, ["info", str(model_dir)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert "classes[1].value: must be an integer from 0 to 65535" in result.stderr


@pytest.mark.parametrize(("dims", "patch", "batch", "channels"), [
    (2, [2048, 2048], 8, 3),                # a histology patch
    (3, [256, 256, 256], 8, 4),             # a large 3D patch of a four-channel MR model
])
def test_real_model_sizes_pass(dims: int, patch: list[int], batch: int, channels: int) -> None:
    data = manifest_dict(
        dimensions=dims, axis_order="zyx" if dims == 3 else "yx", channels=[f"c{i}" for i in range(channels)],
        window=window(patch_size=patch, batch_size=batch), files={"model.onnx": "0" * 64},
        preprocessing=[{"name": "resize", "params": {"shape": [1024] * dims}},
                       {"name": "resample", "params": {"spacing": [0.00025] * dims}}],
        classes=[{"value": v, "name": f"c{v}"} for v in (0, 65535)],
    )
    manifest = parse_manifest(data)
    assert manifest.window.patch_size == tuple(patch) and manifest.classes[-1].value == 65535


SPEC_PROBES = [
    ("patch", {"patch": {"size": [1_000_000, 16, 16]}}, r"patch\.size: must be at most 4096 per axis"),
    ("batch", {"window": {"batch_size": 10**9}}, r"window\.batch_size: must be an integer from 1 to 1024"),
    ("batch_values", {"patch": {"size": [256, 256, 256]}, "window": {"batch_size": 128},
                      "channels": [f"c{i}" for i in range(4)]},
     r"window\.batch_size: 128 windows x 4 channel\(s\) x 16,777,216 voxels"),
    ("class_value", {"classes": {0: "background", 10**30: "x"}},
     r"classes\.1000000000000000000000000000000: the value must be an integer from 0 to 65535"),
    ("resize", {"preprocessing": [{"resize": {"shape": [100_000, 100_000, 100_000]}}]},
     r"preprocessing\[0\] \(resize\): shape: must be at most 16384 per axis"),
    ("spacing", {"preprocessing": [{"resample": {"spacing": [0.0, 1.0, 1.0]}}]},
     r"preprocessing\[0\] \(resample\): spacing: must be 2 or 3 positive numbers"),
    ("channels", {"channels": [f"c{i}" for i in range(300)]}, r"channels: must list at most 256 channels, got 300"),
]


@pytest.mark.parametrize(("case", "changes", "message"), SPEC_PROBES, ids=[p[0] for p in SPEC_PROBES])
def test_a_spec_is_held_to_the_same_bounds(tmp_path: Path, case: str, changes: dict[str, Any], message: str) -> None:
    result = build(save_graph(tmp_path, graphs.bright_structures(3)), write_spec(tmp_path, base_spec(**changes)),
                   tmp_path / "repo")
    assert_one_error_line(result, message)


def test_a_training_config_is_held_to_the_same_bounds(tmp_path: Path) -> None:
    data = changed(SEGMENTATION, patch__size=[1_000_000, 16, 16], inference={"batch_size": 10**9},
                   preprocessing=[{"pad": {"shape": [100_000, 100_000, 100_000]}}],
                   data__classes={0: "background", 70000: "lesion"})
    found = problems_of(tmp_path, data)
    assert "patch.size: must be at most 4096 per axis, got [1000000, 16, 16]" in found
    assert "inference.batch_size: must be an integer from 1 to 1024, got 1000000000" in found
    assert any(p.startswith("preprocessing[0] (pad): shape: must be at most 16384 per axis") for p in found)
    assert any(p.startswith("data.classes.70000: the value must be an integer from 0 to 65535") for p in found)
