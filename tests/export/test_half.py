"""Half precision: export's check that a model's labels survive float16, and the manifest's record of it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export import graphs
from export.half import LabelRule, fp16_check
from runtime.backends.onnx_runtime import TENSORRT, _provider_list
from runtime.commands.verify import smooth_field
from runtime.errors import InputError, ManifestError
from runtime.manifest import load_manifest
from runtime.predict import load_model
from tests.exportkit import base_spec, build, save_graph, write_spec


ARGMAX = LabelRule("segmentation", "softmax", "argmax", 0.5, 2)


def windows(channels: int) -> list[np.ndarray]:
    return [smooth_field(channels, (16, 16, 16), seed) for seed in range(2)]


def test_a_graph_whose_labels_survive_float16_is_allowed_with_its_figures(tmp_path: Path) -> None:
    path = save_graph(tmp_path, graphs.bright_structures(3), "bright.onnx")
    record = fp16_check(path, "input", "output", windows(1), ARGMAX)
    assert record["allowed"] is True
    assert record["label_agreement"] >= 0.999 and record["windows"] == 2
    assert 0 < record["max_abs_difference"] < 0.05


def nudged(path: Path) -> Path:
    """Two channels, relu(x) and relu(x) + 1e-4: float32 always picks the second; in float16 the
    nudge is lost wherever x is above about 0.25 (a tie, so the first wins)."""
    def value(name: str, channels: int) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["b", channels, "z", "y", "x"])

    nodes = [helper.make_node("Relu", ["input"], ["x"]), helper.make_node("Add", ["x", "tiny"], ["nudged"]),
             helper.make_node("Concat", ["x", "nudged"], ["output"], axis=1)]
    graph = helper.make_graph(nodes, "nudged", [value("input", 1)], [value("output", 2)],
                              [numpy_helper.from_array(np.array(1e-4, np.float32), "tiny")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_graph_whose_labels_flip_in_float16_is_refused_and_says_why(tmp_path: Path) -> None:
    record = fp16_check(nudged(tmp_path / "nudged.onnx"), "input", "output", windows(1), ARGMAX)
    assert record["allowed"] is False
    assert 0.5 < record["label_agreement"] < 0.999
    assert record["reason"].startswith("labels agree on ") and "under 99.9%" in record["reason"]


def test_labels_are_compared_by_the_models_own_rule_a_threshold_on_probabilities(tmp_path: Path) -> None:
    """One channel of probabilities, 0.5001 everywhere: over the 0.5 threshold in float32, exactly
    0.5 (not over it) in float16. Every label flips; a sign test would have seen none."""
    def value(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["b", 1, "z", "y", "x"])

    nodes = [helper.make_node("Mul", ["input", "zero"], ["nothing"]), helper.make_node("Add", ["nothing", "level"],
                                                                                         ["output"])]
    graph = helper.make_graph(nodes, "level", [value("input")], [value("output")],
                              [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
                               numpy_helper.from_array(np.array(0.5001, np.float32), "level")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "level.onnx"))
    rule = LabelRule("segmentation", "none", "threshold", 0.5, 2)
    record = fp16_check(tmp_path / "level.onnx", "input", "output", windows(1), rule)
    assert record["allowed"] is False and record["label_agreement"] == 0.0


def test_build_states_in_the_manifest_whether_fp16_is_allowed(tmp_path: Path) -> None:
    onnx_path = save_graph(tmp_path, graphs.bright_structures(3), "bright.onnx")
    result = build(onnx_path, write_spec(tmp_path, base_spec()), tmp_path / "repo")
    assert result.exit_code == 0, result.output
    manifest, folder = load_manifest(tmp_path / "repo" / "bright")
    assert manifest.onnx.fp16 is True
    check = manifest.provenance["fp16_check"]
    assert check["allowed"] is True and check["label_agreement"] >= 0.999 and check["windows"] == 4
    written = json.loads((folder / "manifest.json").read_text())
    assert written["onnx"]["fp16"] is True


def test_a_manifest_without_fp16_reads_as_not_allowed_and_a_wrong_value_is_refused(tmp_path: Path) -> None:
    onnx_path = save_graph(tmp_path, graphs.bright_structures(3), "bright.onnx")
    assert build(onnx_path, write_spec(tmp_path, base_spec()), tmp_path / "repo").exit_code == 0
    path = tmp_path / "repo" / "bright" / "1" / "manifest.json"
    data = json.loads(path.read_text())
    del data["onnx"]["fp16"]
    path.write_text(json.dumps(data))
    manifest = load_manifest(path.parent)[0]
    assert manifest.onnx.fp16 is False
    assert "fp16" not in manifest.to_dict()["onnx"]          # written only when true: earlier runtimes read it
    with pytest.raises(InputError, match="may not run in half precision"):
        load_model(path.parent, device="cpu", fp16=True)
    data["onnx"]["fp16"] = "yes"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="onnx.fp16"):
        load_manifest(path.parent)


@pytest.mark.parametrize("fp16", [True, False])
def test_tensorrt_builds_a_half_precision_engine_only_for_a_model_allowed_fp16(fp16: bool) -> None:
    providers = _provider_list("tensorrt", Path("/tmp/engines"), 0, fp16)
    options = next(options for name, options in providers if name == TENSORRT)
    assert options["trt_fp16_enable"] is fp16
