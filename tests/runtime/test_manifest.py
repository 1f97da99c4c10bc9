"""The manifest contract: load_manifest refuses anything but a complete, current, untampered manifest."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest

from export import graphs
from runtime.errors import ManifestError
from runtime.manifest import MANIFEST_FILE, load_manifest, resolve_version_dir, sha256_of, write_manifest
from tests.conftest import REPO
from tests.modelkit import make_manifest


def write_version(model_dir: Path, version: int) -> Path:
    folder = model_dir / str(version)
    folder.mkdir(parents=True)
    onnx_path = graphs.save(graphs.bright_structures(3), folder / "model.onnx")
    write_manifest(make_manifest(sha256_of(onnx_path), version), folder)
    return folder


@pytest.fixture()
def version_dir(tmp_path: Path) -> Path:
    return write_version(tmp_path / "tiny", 1)


def edit_manifest(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = folder / MANIFEST_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_write_manifest_round_trips(version_dir: Path) -> None:
    manifest, folder = load_manifest(version_dir.parent)
    assert folder == version_dir
    assert manifest == make_manifest(sha256_of(version_dir / "model.onnx"))
    assert manifest.window.patch_size == (8, 16, 16)
    assert manifest.preprocessing[0].params == {"spacing": [2.0, 1.5, 1.5]}


def test_write_manifest_refuses_an_invalid_manifest_and_writes_nothing(tmp_path: Path) -> None:
    bad = make_manifest("0" * 64)
    bad = replace(bad, window=replace(bad.window, overlap=1.5))
    with pytest.raises(ManifestError, match=r"window\.overlap: must be a number in \[0, 1\), got 1\.5"):
        write_manifest(bad, tmp_path)
    assert list(tmp_path.iterdir()) == []


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


@pytest.mark.parametrize(("change", "message"), [
    (_set(("colour",), "red"), r"colour: unknown key"),
    (lambda d: d.pop("window"), r"window: missing"),
    (lambda d: d["output"].pop("threshold"), r"output\.threshold: missing"),
    (_set(("window", "overlap"), 1.5), r"window\.overlap: must be a number in \[0, 1\), got 1\.5"),
    (_set(("task",), "detection"), r"task: must be one of segmentation, classification, regression, got 'detection'"),
    (_set(("window", "patch_size"), [16, 16]), r"window\.patch_size: must be 3 positive integers, got \[16, 16\]"),
    (_set(("classes",), [{"value": 0, "name": "a"}, {"value": 0, "name": "b"}]), r"classes: values must be distinct"),
    (_set(("classes",), [{"value": 1, "name": "bright"}, {"value": 0, "name": "background"}]),
     r"classes: the first class is the background and must have value 0, got 1"),
    (_set(("preprocessing", 0, "params"), {"spacing": [2.0, 1.5]}),
     r"preprocessing\[0\] \(resample\)\.spacing: must give one value per spatial axis \(3\)"),
    (_set(("preprocessing",), [{"name": "blur", "params": {}}]), r"preprocessing\[0\] \(blur\): unknown step 'blur'"),
    (_set(("preprocessing", 1, "params"), {"region": "everywhere"}), r"preprocessing\[1\] \(zscore\): region"),
    (_set(("onnx", "file"), "../model.onnx"), r"onnx\.file: must be a file name inside the version folder"),
    (_set(("files",), {"other.onnx": "0" * 64}), r"must list the ONNX file 'model\.onnx'"),
])
def test_load_manifest_refuses_a_malformed_manifest(version_dir: Path, change: Callable[[dict[str, Any]], None],
                                                    message: str) -> None:
    edit_manifest(version_dir, change)
    with pytest.raises(ManifestError, match=message) as caught:
        load_manifest(version_dir)
    assert "Re-export the model" in str(caught.value)


def test_every_shipped_model_keeps_the_contract() -> None:
    from runtime.manifest import is_windows_companion

    folders = sorted(p for p in (REPO / "model_repository").iterdir() if p.is_dir())
    models = [p for p in folders if not is_windows_companion(p)]
    assert models and len(folders) - len(models) == 1           # the slide demo's <name>_windows companion
    for model in models:
        for version in sorted(p for p in model.iterdir() if p.is_dir() and p.name.isdigit()):
            assert load_manifest(version)[0].name == model.name


def test_load_manifest_refuses_another_schema_version(version_dir: Path) -> None:
    edit_manifest(version_dir, _set(("schema_version",), 2))
    with pytest.raises(ManifestError, match=r"schema_version 2; this runtime reads only schema 1"):
        load_manifest(version_dir)


def test_load_manifest_refuses_a_changed_onnx_file(version_dir: Path) -> None:
    onnx_path = version_dir / "model.onnx"
    onnx_path.write_bytes(graphs.scaled(1, 3, 2.0).SerializeToString())
    recorded = load_manifest(version_dir, verify=False)[0].files["model.onnx"]
    with pytest.raises(ManifestError, match=rf"model\.onnx does not match the sha256 manifest\.json records for it "
                                            rf"\({recorded}\): the file was changed or damaged") as caught:
        load_manifest(version_dir)
    assert sha256_of(onnx_path)[:8] not in str(caught.value)
    manifest, _ = load_manifest(version_dir, verify=False)
    assert manifest.name == "tiny"


def test_a_graph_whose_weights_lie_in_another_file_is_refused_though_its_checksum_matches(tmp_path: Path) -> None:
    """The weights file is no file the checksums cover: changed, the model would run changed."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    folder = tmp_path / "tiny" / "1"
    folder.mkdir(parents=True)
    graph = graphs.bright_structures(3)
    convert_model_to_external_data(graph, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    onnx.save(graph, folder / "model.onnx")
    write_manifest(make_manifest(sha256_of(folder / "model.onnx"), 1), folder)
    assert (folder / "weights.bin").is_file()
    with pytest.raises(ManifestError, match=r"model\.onnx keeps the values of 2 tensor\(s\) \(weight, bias\) in "
                                            r"another file, which manifest\.json's checksums do not cover"):
        load_manifest(folder)
    (folder / "model.onnx").rename(folder / "model.bin")               # the graph under another name
    manifest = make_manifest(sha256_of(folder / "model.bin"), 1)
    write_manifest(replace(manifest, onnx=replace(manifest.onnx, file="model.bin"),
                           files={"model.bin": sha256_of(folder / "model.bin")}), folder)
    with pytest.raises(ManifestError, match=r"model\.bin keeps the values of 2 tensor"):
        load_manifest(folder)
    (folder / "model.bin").unlink()
    (folder / "model.onnx").write_bytes(b"\x0a\xff\xff\xff\xff\x0f" + b"\0" * 10)   # a length past the end
    write_manifest(make_manifest(sha256_of(folder / "model.onnx"), 1), folder)
    with pytest.raises(ManifestError, match=r"model\.onnx is not an ONNX graph the runtime can read"):
        load_manifest(folder)


def test_load_manifest_refuses_a_missing_onnx_file(version_dir: Path) -> None:
    (version_dir / "model.onnx").unlink()
    with pytest.raises(ManifestError, match=r"model\.onnx is listed in manifest\.json but missing"):
        load_manifest(version_dir)


def test_load_manifest_refuses_json_that_does_not_parse(version_dir: Path) -> None:
    (version_dir / MANIFEST_FILE).write_text("{\"name\": ")
    with pytest.raises(ManifestError, match=r"cannot be read as JSON"):
        load_manifest(version_dir)


def test_a_model_folder_without_versions_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty_model" / "not_a_version").mkdir(parents=True)
    with pytest.raises(ManifestError, match=r"holds no manifest\.json and no version folder"):
        load_manifest(tmp_path / "empty_model")
    with pytest.raises(ManifestError, match=r"does not exist"):
        load_manifest(tmp_path / "no_such_model")


def test_a_version_without_manifest_is_refused_and_a_window_model_points_to_its_model(tmp_path: Path) -> None:
    from tests.conftest import REPO

    for name in ("lost", "lost_windows"):                  # a user's own <name>_windows: no `serves` in its config
        (tmp_path / name / "1").mkdir(parents=True)
        with pytest.raises(ManifestError, match=rf"{name}/1 has no manifest\.json; re-export this version"):
            load_manifest(tmp_path / name)
    windows = REPO / "model_repository" / "demo_stain_regions_windows"
    with pytest.raises(ManifestError, match=r"is the Triton model that serves the windows of model demo_stain_regions, "
                                            r"beside it; run --model .*model_repository/demo_stain_regions\.$"):
        load_manifest(windows)


def test_resolve_version_dir_picks_the_highest_integer_version(tmp_path: Path) -> None:
    model_dir = tmp_path / "tiny"
    for version in (1, 2, 10):
        write_version(model_dir, version)
    (model_dir / "latest").mkdir()
    (model_dir / ".11.building-1-abcd").mkdir()
    assert resolve_version_dir(model_dir) == model_dir / "10"
    assert resolve_version_dir(model_dir / "2") == model_dir / "2"
    assert resolve_version_dir(model_dir / "2" / MANIFEST_FILE) == model_dir / "2"
    manifest, folder = load_manifest(model_dir)
    assert (manifest.version, folder) == (10, model_dir / "10")


def test_the_newest_version_without_a_manifest_is_refused(tmp_path: Path) -> None:
    model_dir = tmp_path / "tiny"
    write_version(model_dir, 1)
    (model_dir / "2").mkdir()
    with pytest.raises(ManifestError, match=r"2 has no manifest\.json"):
        resolve_version_dir(model_dir)


def test_a_manifest_in_another_versions_folder_is_refused(tmp_path):
    import shutil

    from tests.conftest import DEMO

    model = tmp_path / "demo"
    shutil.copytree(DEMO / "1", model / "7")                     # version 1's files in folder 7
    shutil.copyfile(DEMO / "config.pbtxt", model / "config.pbtxt")
    with pytest.raises(ManifestError, match=r"version is 1, but it lies in the version folder 7/"):
        load_manifest(model / "7", verify=False)
    with pytest.raises(ManifestError, match="version folder 7/"):
        load_manifest(model)                                     # the newest version folder
    (model / "config.pbtxt").unlink()                            # a folder of one's own, named by date: no version
    shutil.copytree(model / "7", tmp_path / "mine" / "20240101")
    assert load_manifest(tmp_path / "mine" / "20240101", verify=False)[0].version == 1
    with pytest.raises(ManifestError, match="version folder 20240101/"):
        load_manifest(tmp_path / "mine", verify=False)           # taken as the newest version of a model folder


def test_a_folder_named_by_a_digit_that_is_no_ascii_number_is_no_version(tmp_path):
    import shutil

    from tests.conftest import DEMO

    model = tmp_path / "demo"
    shutil.copytree(DEMO / "1", model / "1")
    (model / "²").mkdir()                                        # str.isdigit() holds, int() refuses
    assert load_manifest(model, verify=False)[1] == model / "1"


def _ending_in(op: str) -> Any:
    """The bright-structure graph with its logits passed through `op` (Softmax over the classes, or
    Sigmoid) and an Identity, as a graph exported with its activation inside ends."""
    from onnx import helper

    graph = graphs.bright_structures(3)
    maker = next(node for node in graph.graph.node if "output" in node.output)
    maker.output[list(maker.output).index("output")] = "logits"
    extra = {"axis": 1} if op == "Softmax" else {}
    graph.graph.node.extend([helper.make_node(op, ["logits"], ["activated"], **extra),
                             helper.make_node("Identity", ["activated"], ["output"])])
    return graph


@pytest.mark.parametrize(("op", "output", "remedy"), [
    ("Softmax", {}, "set output: {activation: none}"),
    ("Sigmoid", {"activation": "sigmoid", "label_rule": "threshold"}, "{activation: none, label_rule: threshold}"),
    ("Softmax", {"activation": "none", "probabilities": "softmax"}, "leave output.probabilities out")])
def test_a_graph_that_activates_its_own_output_under_an_output_section_that_activates_again_is_refused(
        tmp_path, op, output, remedy):
    """Made by hand, not by export build: a second sigmoid put every voxel over 0.5."""
    from tests.modelkit import make_model

    manifest_output = {"activation": "softmax", "label_rule": "argmax", "threshold": 0.5, "ensemble": "mean",
                       **output}
    model = make_model(tmp_path / "repo", _ending_in(op), output=manifest_output)
    with pytest.raises(ManifestError, match=rf"output 'output' comes from a {op} node, so it holds probabilities "
                                            rf"already.*{re.escape(remedy)}"):
        load_manifest(model)
    honest = make_model(tmp_path / "honest", _ending_in(op), output={**manifest_output, "activation": "none",
                                                                       "probabilities": None})
    assert load_manifest(honest)[0].output.activation == "none"
