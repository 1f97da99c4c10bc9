"""`export build --from-onnx`: packaging an existing ONNX model, and the tiny graphs tests build on."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from export import graphs
from runtime.errors import OutputError
from runtime.manifest import load_manifest, sha256_of, version_digest
from tests.conftest import REPO
from tests.exportkit import assert_one_error_line, base_spec, build, save_graph, write_spec


def run_graph(model: onnx.ModelProto, array: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": array})[0]


def printed(output: str, folder: Path) -> bool:
    """Whether a build printed `folder` and, on the next line, that version's digest."""
    return output.splitlines() == [str(folder), f"digest {version_digest(folder)}"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_build_writes_version_1_then_2_and_never_touches_1(tmp_path: Path) -> None:
    onnx_path = save_graph(tmp_path, graphs.bright_structures(3), "bright.onnx")
    spec_path = write_spec(tmp_path, base_spec())
    repository = tmp_path / "repo"
    first = build(onnx_path, spec_path, repository)
    assert first.exit_code == 0, first.output
    assert printed(first.stdout, repository / "bright" / "1")
    version_1 = snapshot(repository / "bright" / "1")
    assert sorted(version_1) == sorted(["manifest.json", "model.onnx", "model.py", "samples/input_0.npy",
                                        "samples/output_0.npy", importlib.util.cache_from_source("model.py")])
    assert version_1["model.onnx"] == onnx_path.read_bytes()

    second = build(onnx_path, spec_path, repository)
    assert second.exit_code == 0, second.output
    assert printed(second.stdout, repository / "bright" / "2")
    assert snapshot(repository / "bright" / "1") == version_1
    assert sorted(p.name for p in (repository / "bright").iterdir()) == [".build.lock", "1", "2", "config.pbtxt"]
    manifest, folder = load_manifest(repository / "bright")
    assert (manifest.version, folder) == (2, repository / "bright" / "2")


def test_a_bare_graph_with_no_room_is_refused_before_the_version_is_built(tmp_path: Path) -> None:
    """--triton-onnx writes `<name>_onnx`: where that is another model, or has the version already,
    the build is refused first and writes nothing."""
    onnx_path = save_graph(tmp_path, graphs.bright_structures(3), "bright.onnx")
    spec_path, repository = write_spec(tmp_path, base_spec()), tmp_path / "repo"
    assert build(onnx_path, spec_path, repository, "--name", "x_onnx").exit_code == 0
    before = snapshot(repository)
    result = build(onnx_path, spec_path, repository, "--name", "x", "--triton-onnx")
    assert_one_error_line(result, r"--triton-onnx writes the bare graph as model x_onnx, but .*x_onnx is another "
                                  r"model; build this one under another --name")
    assert snapshot(repository) == before and not (repository / "x").exists()
    (repository / "z_onnx").write_text("a file")
    result = build(onnx_path, spec_path, repository, "--name", "z", "--triton-onnx")
    assert_one_error_line(result, r"z_onnx is a file; build this one under another --name")
    assert not (repository / "z").exists()
    for version in ("1", "2"):
        result = build(onnx_path, spec_path, repository, "--name", "y", "--triton-onnx")
        assert result.exit_code == 0 and f"Triton onnxruntime model: {repository / 'y_onnx' / version}" in \
            result.output, result.output
        if version == "1":                  # an operator's edits, which the next build keeps
            config = repository / "y_onnx" / "config.pbtxt"
            edited = f"# two CPU instances\n{config.read_text()}instance_group [{{ count: 2, kind: KIND_CPU }}]\n"
            edited = edited.replace('backend: "onnxruntime"', 'backend: "onnxruntime"  # not "python"')
            config.write_text(edited)
    assert "instance_group [{ count: 2, kind: KIND_CPU }]" in (repository / "y_onnx" / "config.pbtxt").read_text()
    import shutil

    shutil.rmtree(repository / "y" / "2")
    before = snapshot(repository)
    result = build(onnx_path, spec_path, repository, "--name", "y", "--triton-onnx")
    assert_one_error_line(result, r"y_onnx/2 already exists, and version 2 of y would write its bare graph there")
    assert snapshot(repository) == before


def test_python_m_export_runs_the_command_a_shell_would_shadow(tmp_path: Path) -> None:
    """`export` is a shell builtin, so the documented way to call the command is `python -m export`."""
    onnx_path = save_graph(tmp_path, graphs.bright_structures(3), "bright.onnx")
    spec_path = write_spec(tmp_path, base_spec())
    command = [sys.executable, "-m", "export", "build", "--from-onnx", str(onnx_path), "--spec", str(spec_path),
               "--repository", str(tmp_path / "repo")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert printed(done.stdout, tmp_path / "repo" / "bright" / "1")
    assert load_manifest(tmp_path / "repo" / "bright")[0].name == "bright"

    wrong = subprocess.run([sys.executable, "-m", "export", "build", "--from-onnx", str(onnx_path)],
                           capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert wrong.returncode == 1 and wrong.stdout == ""
    assert wrong.stderr.strip().splitlines() == [
        "error: --from-onnx takes --spec and no RUN_DIR: python -m export build --from-onnx model.onnx --spec spec.yaml"]
    usage = subprocess.run([sys.executable, "-m", "export", "--help"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 0 and usage.stdout.startswith("Usage: python -m export ")


def test_the_manifest_records_spec_graph_and_provenance(tmp_path: Path) -> None:
    onnx_path = save_graph(tmp_path, graphs.bright_structures(3), "bright.onnx")
    result = build(onnx_path, write_spec(tmp_path, base_spec()), tmp_path / "repo")
    assert result.exit_code == 0, result.output
    manifest, folder = load_manifest(tmp_path / "repo" / "bright")
    assert (manifest.name, manifest.version, manifest.task, manifest.axis_order) == ("bright", 1, "segmentation", "zyx")
    assert [(c.value, c.name) for c in manifest.classes] == [(0, "background"), (1, "bright")]
    assert [(s.name, dict(s.params)) for s in manifest.preprocessing] == [
        ("resample", {"spacing": [2.0, 1.5, 1.5]}), ("zscore", {"region": "nonzero"})]
    assert manifest.window.patch_size == (8, 16, 16)
    assert (manifest.window.mode, manifest.window.overlap, manifest.window.blending) == ("sliding", 0.5, "gaussian")
    assert (manifest.window.batch_size, manifest.window.mirror_axes, manifest.window.skip_background) == (1, (), True)
    assert (manifest.output.activation, manifest.output.label_rule) == ("softmax", "argmax")
    assert (manifest.onnx.file, manifest.onnx.input, manifest.onnx.output, manifest.onnx.opset) == (
        "model.onnx", "input", "output", 17)
    digest = sha256_of(onnx_path)
    assert manifest.files == {name: sha256_of(folder / name) for name in (
        "model.onnx", "model.py", "samples/input_0.npy", "samples/output_0.npy")}
    assert manifest.files["model.onnx"] == digest
    assert (folder / "model.py").read_bytes() == (REPO / "runtime" / "triton" / "model.py").read_bytes()
    provenance = manifest.provenance
    assert provenance["description"] == "fixed test model"
    assert (provenance["source_onnx"], provenance["source_sha256"]) == ("bright.onnx", digest)
    assert provenance["tool"].startswith("medflow export ")
    assert provenance["created"].endswith("+00:00")
    assert json.loads((folder / "manifest.json").read_text())["classes"][1] == {"value": 1, "name": "bright"}


@pytest.mark.parametrize(("task", "model", "classes", "expected"), [
    ("segmentation", graphs.scaled(1, 3, 1.0), {0: "background", 1: "lesion"}, ("sigmoid", "threshold")),
    ("classification", graphs.channel_classifier(1, 3, 3), {0: "a", 1: "b", 2: "c"}, ("softmax", "argmax")),
    ("regression", graphs.mean_regressor(1, 3), {0: "volume"}, ("none", "argmax")),
])
def test_output_defaults_follow_the_task_and_the_output_channels(
        tmp_path: Path, task: str, model: onnx.ModelProto, classes: dict[int, str], expected: tuple[str, str]) -> None:
    spec_path = write_spec(tmp_path, base_spec(task=task, classes=classes))
    result = build(save_graph(tmp_path, model), spec_path, tmp_path / "repo")
    assert result.exit_code == 0, result.output
    manifest, _ = load_manifest(tmp_path / "repo" / "bright")
    assert (manifest.output.activation, manifest.output.label_rule) == expected


def test_a_version_of_another_kind_than_the_models_newest_is_refused_before_anything_is_written(
        tmp_path: Path) -> None:
    bright = save_graph(tmp_path, graphs.bright_structures(3), "bright.onnx")
    assert build(bright, write_spec(tmp_path, base_spec()), tmp_path / "repo").exit_code == 0
    classifier = save_graph(tmp_path, graphs.channel_classifier(1, 3, 3), "classifier.onnx")
    result = build(classifier, write_spec(tmp_path, base_spec(task="classification", classes={0: "a", 1: "b", 2: "c"})),
                   tmp_path / "repo")
    assert_one_error_line(result, r"repo/bright version 1 is a model of another kind than this build \(task "
                                  r"'segmentation' -> 'classification'\).*give this model another name \(--name\)")
    renamed = build(bright, write_spec(tmp_path, base_spec(channels=["ct"])), tmp_path / "repo")
    assert_one_error_line(renamed, r"channels \['image'\] -> \['ct'\]")
    assert sorted(p.name for p in (tmp_path / "repo" / "bright").iterdir()) == [".build.lock", "1", "config.pbtxt"]
    assert build(bright, write_spec(tmp_path, base_spec()), tmp_path / "repo").exit_code == 0       # same kind: 2


def test_name_option_overrides_the_spec_name(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, base_spec())
    result = build(save_graph(tmp_path, graphs.bright_structures(3)), spec_path, tmp_path / "repo", "--name", "other-1")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["other-1"]
    manifest, _ = load_manifest(tmp_path / "repo" / "other-1")
    assert manifest.name == "other-1"
    unnamed = write_spec(tmp_path, {k: v for k, v in base_spec().items() if k != "name"})
    result = build(tmp_path / "model.onnx", unnamed, tmp_path / "repo", "--name", "other-1")
    assert result.exit_code == 0, result.output
    assert printed(result.stdout, tmp_path / "repo" / "other-1" / "2")


def with_static_spatial_size(model: onnx.ModelProto, size: list[int]) -> onnx.ModelProto:
    for value in (model.graph.input[0], model.graph.output[0]):
        for dim, length in zip(value.type.tensor_type.shape.dim[2:], size):
            dim.dim_value = length
    return model


GRAPH_ERRORS = [
    ("missing_onnx", None, {}, r"ONNX file .*missing_onnx\.onnx does not exist"),
    ("not_onnx", b"this is not a protobuf", {}, r"is not a valid ONNX model"),
    ("rank", graphs.bright_structures(2), {},
     r"input 'input' has rank 4 \[batch, 1, y, x\], but a 3D model takes rank 5"),
    ("channels", graphs.identity(2, 3), {},
     r"input 'input' has a channel axis of 2, but the spec lists 1 channels \(image\)"),
    ("classes", graphs.bright_structures(3), {"classes": {0: "bg", 1: "a", 2: "b"}},
     r"output 'output' has a channel axis of 2, but the spec lists 3 classes"),
    ("patch", with_static_spatial_size(graphs.identity(1, 3), [8, 32, 32]), {},
     r"ONNX model .* does not fit spec .*: input 'input' has a fixed spatial size \[8, 32, 32\] \(zyx\), "
     r"so patch.size must match it, got \[8, 16, 16\]"),
    ("input_name", graphs.bright_structures(3), {"onnx": {"input": "image"}},
     r"has no input named 'image'; its inputs are 'input'"),
    ("output_name", graphs.bright_structures(3), {"onnx": {"output": "logits"}},
     r"has no output named 'logits'; its outputs are 'output'"),
    ("softmax_one_channel", graphs.scaled(1, 3, 1.0), {"output": {"activation": "softmax"}},
     r"output.activation: softmax over the graph's single output channel is always 1"),
    ("regression_rank", graphs.identity(1, 3), {"task": "regression", "classes": {0: "v"}},
     r"output 'output' has rank 5 .* but a regression model gives rank 2"),
    ("regression_targets", graphs.channel_classifier(1, 3, 3), {"task": "regression", "classes": {0: "a", 2: "c"},
                                                                  "output": {"activation": "none"}},
     r"output 'output' gives 3 values, but classes lists 2 target\(s\): a regression model gives one value per "
     r"target"),
]


@pytest.mark.parametrize(("case", "graph", "changes", "message"), GRAPH_ERRORS, ids=[c[0] for c in GRAPH_ERRORS])
def test_a_graph_that_does_not_fit_is_refused(tmp_path: Path, case: str, graph: onnx.ModelProto | bytes | None,
                                              changes: dict[str, Any], message: str) -> None:
    onnx_path = tmp_path / f"{case}.onnx"
    if isinstance(graph, bytes):
        onnx_path.write_bytes(graph)
    elif graph is not None:
        graphs.save(graph, onnx_path)
    result = build(onnx_path, write_spec(tmp_path, base_spec(**changes)), tmp_path / "repo")
    assert_one_error_line(result, message)
    assert not (tmp_path / "repo").exists()


def _window(**values: Any) -> dict[str, Any]:
    return {"window": values}


SPEC_ERRORS = [
    ("unknown_key", base_spec(colour="red"), r"colour: unknown key; known keys are name, task"),
    ("missing_key", {k: v for k, v in base_spec().items() if k != "channels"}, r"channels: missing"),
    ("overlap", base_spec(**_window(overlap=2)), r"window\.overlap: must be a number in \[0, 1\), got 2"),
    ("window_key", base_spec(**_window(overlpa=0.5)), r"window\.overlpa: unknown key"),
    ("task", base_spec(task="detection"), r"task: must be one of segmentation, classification, regression"),
    ("axis_order", base_spec(axis_order="yx"), r"axis_order: must be one of zyx, xyz, got 'yx'"),
    ("patch", base_spec(patch={"size": [16, 16]}), r"patch\.size: must be 3 positive integers"),
    ("name", base_spec(name="my model"), r"name: must be letters, digits, _ and - only"),
    ("background", base_spec(classes={1: "lesion", 0: "background"}), r"first class is the background"),
    ("step", base_spec(preprocessing=[{"zscore": {"region": "nonzero"}}, {"blur": {"sigma": 1}}]),
     r"preprocessing\[1\] \(blur\): unknown step 'blur'"),
    ("step_param", base_spec(preprocessing=[{"zscore": {"region": "everywhere"}}]),
     r"preprocessing\[0\] \(zscore\): region: must be one of whole, nonzero, mask"),
    ("step_axes", base_spec(preprocessing=[{"resample": {"spacing": [1.0, 1.0]}}]),
     r"preprocessing\[0\] \(resample\)\.spacing: must give one value per spatial axis \(3\)"),
    ("threshold_softmax", base_spec(output={"activation": "softmax", "label_rule": "threshold"}),
     r"output\.label_rule: threshold needs activation sigmoid or none"),
    ("reserved_provenance", base_spec(provenance={"created": "yesterday"}),
     r"provenance\.created: is recorded by export"),
    ("table_columns", base_spec(provenance={"table_columns": {"subject": "case", "labels": "mask"}}),
     r"provenance\.table_columns: is not a mapping of subject and label to the training table's column names"),
]


@pytest.mark.parametrize(("case", "spec", "message"), SPEC_ERRORS, ids=[c[0] for c in SPEC_ERRORS])
def test_an_invalid_spec_is_refused_with_its_location(tmp_path: Path, case: str, spec: dict[str, Any],
                                                      message: str) -> None:
    onnx_path = save_graph(tmp_path, graphs.bright_structures(3))
    result = build(onnx_path, write_spec(tmp_path, spec), tmp_path / "repo")
    assert_one_error_line(result, message)
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(("text", "message"), [
    (None, r"spec file .*spec\.yaml does not exist"),
    ("name: [unclosed\n", r"is not valid YAML: .* at line 2"),
    ("name: a\nname: b\n", r"key 'name' is given twice at line 2"),
    ("", r"spec: must be a mapping of keys, got None"),
])
def test_an_unreadable_spec_file_is_refused(tmp_path: Path, text: str | None, message: str) -> None:
    spec_path = tmp_path / "spec.yaml"
    if text is not None:
        spec_path.write_text(text)
    result = build(save_graph(tmp_path, graphs.bright_structures(3)), spec_path, tmp_path / "repo")
    assert_one_error_line(result, message)


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from export import package
    from export.spec import parse_spec

    def disk_full(manifest: Any, folder: Path) -> Path:
        (folder / "manifest.json").write_text("{")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(package, "write_manifest", disk_full)
    onnx_path = save_graph(tmp_path, graphs.bright_structures(3))
    with pytest.raises(OutputError, match=r"cannot write the model version .*1: No space left on device"):
        package.build_from_onnx(onnx_path, parse_spec(base_spec()), tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_bright_structures_computes_scaled_smoothed_logits() -> None:
    image = np.random.default_rng(1).normal(size=(1, 1, 6, 7, 8)).astype(np.float32)
    logits = run_graph(graphs.bright_structures(3), image)
    padded = np.pad(image[0, 0], 1)
    shifts = [(dz, dy, dx) for dz in range(3) for dy in range(3) for dx in range(3)]
    smoothed = sum(padded[dz:dz + 6, dy:dy + 7, dx:dx + 8] for dz, dy, dx in shifts) / 27
    assert logits.shape == (1, 2, 6, 7, 8)
    np.testing.assert_array_equal(logits[0, 0], 0)
    np.testing.assert_allclose(logits[0, 1], graphs.BRIGHT_GAIN * (smoothed - graphs.BRIGHT_THRESHOLD), atol=1e-5)


def test_bright_structures_finds_a_bright_cube() -> None:
    image = np.zeros((1, 1, 12, 12, 12), dtype=np.float32)
    image[0, 0, 4:8, 4:8, 4:8] = 2 * graphs.BRIGHT_THRESHOLD
    labels = run_graph(graphs.bright_structures(3), image).argmax(axis=1)[0]
    assert labels[5:7, 5:7, 5:7].all() and labels.sum() > 8
    assert not labels[:2].any() and not labels[10:].any()


def test_small_graphs_compute_what_they_say() -> None:
    image = np.random.default_rng(2).normal(size=(3, 2, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(run_graph(graphs.identity(2, 2), image), image)
    np.testing.assert_allclose(run_graph(graphs.scaled(2, 2, -0.5), image), -0.5 * image, rtol=1e-6)
    weight, bias = graphs.classifier_weights(2, 3)
    expected = image.mean(axis=(2, 3)) @ weight.T + bias
    np.testing.assert_allclose(run_graph(graphs.channel_classifier(2, 2, 3), image), expected, atol=1e-5)
    np.testing.assert_allclose(run_graph(graphs.mean_regressor(2, 2), image), image[:, :1].mean(axis=(2, 3)),
                               atol=1e-6)


def test_the_committed_demo_model_is_the_bright_structures_graph() -> None:
    manifest, folder = load_manifest(REPO / "model_repository" / "demo_bright_structures")
    assert onnx.load(str(folder / "model.onnx")).graph == graphs.bright_structures(3).graph
    spec = yaml.safe_load((REPO / "export" / "demo_spec.yaml").read_text())
    assert manifest.name == spec["name"] == "demo_bright_structures"
    assert manifest.window.patch_size == (32, 64, 64) and manifest.window.batch_size == 2
    assert [s.name for s in manifest.preprocessing] == ["resample", "zscore"]


def test_the_documented_example_spec_is_valid() -> None:
    from export.spec import parse_spec

    text = (REPO / "docs" / "spec.md").read_text(encoding="utf-8")
    example = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert example is not None
    spec = parse_spec(yaml.safe_load(example.group(1)), "docs/spec.md")
    assert (spec.name, spec.axis_order, spec.channels) == ("brain_tumour", "xyz", ("t1", "t1ce", "t2", "flair"))
    assert spec.window.patch_size == (96, 96, 96) and spec.output.activation == "softmax"


def test_a_multi_label_sigmoid_graph_gives_one_channel_per_class_after_the_background_and_runs(tmp_path: Path) -> None:
    """Three sigmoid channels for four classes (BraTS's regions): packaged, run, labelled by
    threshold with later classes winning; three channels for three classes with `sigmoid` alone is
    refused at export, not at the first prediction."""
    from click.testing import CliRunner

    from runtime.commands.cli import main
    from tests.modelkit import write_scan

    spec = base_spec(channels=["wt", "tc", "et"], classes={0: "background", 1: "wt", 2: "tc", 3: "et"},
                     preprocessing=[], output={"activation": "sigmoid"})
    result = build(save_graph(tmp_path, graphs.scaled(3, 3, 1.0)), write_spec(tmp_path, spec), tmp_path / "repo")
    assert result.exit_code == 0, result.output
    manifest, _ = load_manifest(tmp_path / "repo" / "bright")
    assert (manifest.output.activation, manifest.output.label_rule) == ("sigmoid", "threshold")
    volumes = [np.full((8, 20, 20), -2.0, dtype=np.float32) for _ in range(3)]
    volumes[0][:, 2:18, 2:18] = 2.0                                      # the regions nest, as BraTS's do
    volumes[1][:, 5:15, 4:12] = 2.0
    volumes[2][:, 8:12, 6:9] = 2.0
    paths = [str(write_scan(tmp_path / f"c{index}.nii.gz", volume)) for index, volume in enumerate(volumes)]
    result = CliRunner().invoke(main, ["predict", *paths, "--model", str(tmp_path / "repo" / "bright"),
                                       "--output", str(tmp_path / "labels.nii.gz"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    import SimpleITK as sitk

    expected = np.zeros(volumes[0].shape, dtype=np.uint8)
    for value, volume in enumerate(volumes, start=1):
        expected[volume > 0] = value
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.nii.gz")))
    np.testing.assert_array_equal(labels, expected)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    three = base_spec(channels=["wt", "tc", "et"], classes={0: "wt", 1: "tc", 2: "et"}, preprocessing=[],
                      output={"activation": "sigmoid"})
    result = build(save_graph(tmp_path, graphs.scaled(3, 3, 1.0)), write_spec(tmp_path, three), tmp_path / "repo2")
    assert_one_error_line(result, r"has a channel axis of 3, but the spec lists 3 classes: a segmentation model read "
                                  r"by sigmoid and threshold returns 2, one per class after the first")


def test_a_binary_classifier_of_one_sigmoid_channel_predicts_its_positive_class_by_threshold(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from runtime.commands.cli import main
    from tests.modelkit import nearly_flat, write_scan

    spec = base_spec(task="classification", classes={0: "negative", 1: "positive"}, preprocessing=[
        {"resize": {"shape": [8, 16, 16]}}], patch={"size": [8, 16, 16]}, window={"mode": "whole"})
    result = build(save_graph(tmp_path, graphs.channel_classifier(1, 3, 1)), write_spec(tmp_path, spec),
                   tmp_path / "repo")
    assert result.exit_code == 0, result.output
    weight, bias = graphs.classifier_weights(1, 1)
    for name, level in (("low", -5.0), ("high", 5.0)):
        scan = write_scan(tmp_path / f"{name}.nii.gz", nearly_flat((8, 16, 16), level))
        result = CliRunner().invoke(main, ["predict", str(scan), "--model", str(tmp_path / "repo" / "bright"),
                                           "--device", "cpu"])
        assert result.exit_code == 0, result.output
        probability = 1 / (1 + np.exp(-(weight[0, 0] * level + bias[0])))
        predicted = "1 (positive)" if probability > 0.5 else "0 (negative)"
        printed = dict(re.findall(r"(probability_\w+)=([-0-9.e]+)", result.output))
        assert f"predicted={predicted}, probability_positive=" in result.output, result.output
        assert float(printed["probability_positive"]) == pytest.approx(probability, rel=1e-5)


def test_a_patch_size_the_network_cannot_take_is_named_as_the_specs_patch_size(tmp_path: Path) -> None:
    """A network that halves its input and doubles it back takes even sides only: a spec's odd
    patch.size is refused in the spec's own words, naming the file given, not the version being made."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("MaxPool", ["input"], ["half"], kernel_shape=[2, 2, 2], strides=[2, 2, 2]),
             helper.make_node("Resize", ["half", "", "scales"], ["back"], mode="nearest"),
             helper.make_node("Add", ["input", "back"], ["sum"]),
             helper.make_node("Concat", ["sum", "sum"], ["output"], axis=1)]
    graph = helper.make_graph(nodes, "halving", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                              ["n", 1, "z", "y", "x"])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 2, "z", "y", "x"])],
                              initializer=[numpy_helper.from_array(np.array([1, 1, 2, 2, 2], np.float32), "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx_path = save_graph(tmp_path, model, "halving.onnx")
    spec = write_spec(tmp_path, base_spec(patch={"size": [9, 16, 16]}, preprocessing=[]))
    result = build(onnx_path, spec, tmp_path / "repo")
    assert_one_error_line(result, r"ONNX model .*halving\.onnx does not fit spec .*spec\.yaml: it fails on a "
                                  r"window of patch\.size \[9, 16, 16\] with 1 channel\(s\)")
    assert "building" not in result.stderr and "window.patch_size" not in result.stderr
    assert build(onnx_path, write_spec(tmp_path, base_spec(preprocessing=[])), tmp_path / "repo").exit_code == 0


def test_a_sigmoid_classifier_of_one_channel_per_class_still_packages_and_runs(tmp_path: Path) -> None:
    """A classifier read by sigmoid and threshold with a channel for every class, as such models were
    packaged at first: accepted, run, its threshold read on the classes after the first, and its
    Triton config leaves the channel count open."""
    from click.testing import CliRunner

    from runtime.commands.cli import main
    from tests.modelkit import nearly_flat, write_scan

    spec = base_spec(task="classification", classes={0: "negative", 1: "positive"}, preprocessing=[
        {"resize": {"shape": [8, 16, 16]}}], patch={"size": [8, 16, 16]}, window={"mode": "whole"},
        output={"activation": "sigmoid", "label_rule": "threshold", "threshold": 0.5})
    result = build(save_graph(tmp_path, graphs.channel_classifier(1, 3, 2)), write_spec(tmp_path, spec),
                   tmp_path / "repo")
    assert result.exit_code == 0, result.output
    scan = write_scan(tmp_path / "s.nii.gz", nearly_flat((8, 16, 16), 2.0))
    result = CliRunner().invoke(main, ["predict", str(scan), "--model", str(tmp_path / "repo" / "bright"),
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    weight, bias = graphs.classifier_weights(1, 2)
    probabilities = 1 / (1 + np.exp(-(weight[:, 0] * 2.0 + bias)))
    predicted = "1 (positive)" if probabilities[1] > 0.5 else "0 (negative)"
    printed = dict(re.findall(r"(probability_\w+)=([-0-9.e]+)", result.output))
    assert f"predicted={predicted}, probability_negative=" in result.output, result.output
    assert [float(printed["probability_negative"]), float(printed["probability_positive"])] == \
        pytest.approx(probabilities, rel=1e-5)
    config = (tmp_path / "repo" / "bright" / "config.pbtxt").read_text()
    assert re.search(r'name: "SCORES"\s+data_type: TYPE_FP32\s+dims: \[ -1 \]', config), config


def test_a_whole_image_model_whose_preprocessing_resizes_to_no_patch_is_built_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """It runs only on images that preprocess to its patch exactly, as a classifier of 224×224
    photographs may; the warning names the resize step that makes it run on any image."""
    onnx_path = save_graph(tmp_path, graphs.channel_classifier(1, 3, 2))
    resize, pad = {"resize": {"shape": [4, 8, 8]}}, {"pad": {"shape": [8, 16, 16]}}
    cases = (("unsized", []), ("resized", [{"resize": {"shape": [8, 16, 16]}}]), ("padded", [resize, pad]),
             ("resampled", [{"resize": {"shape": [8, 16, 16]}}, {"resample": {"spacing": [1.0, 1.0, 1.0]}}]))
    for name, steps in cases:
        spec = base_spec(name=name, task="classification", classes={0: "a", 1: "b"}, preprocessing=steps,
                         window={"mode": "whole"})
        caplog.clear()
        result = build(onnx_path, write_spec(tmp_path, spec), tmp_path / "repo")
        assert result.exit_code == 0, result.output
        warned = [record.getMessage() for record in caplog.records if "window.mode whole" in record.getMessage()]
        assert warned == ([] if name in ("resized", "padded") else [
            f"{name} takes the whole image (window.mode whole) at [8, 16, 16], and its preprocessing does not end at "
            "that shape whatever the image: it runs only on images that preprocess to exactly [8, 16, 16]; end the "
            "spec's preprocessing with `- resize: {shape: [8, 16, 16]}` to run it on any image."])
