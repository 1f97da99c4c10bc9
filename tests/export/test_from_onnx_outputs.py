"""`export build --from-onnx` with graphs as other frameworks export them: one that ends in its own
softmax or sigmoid (a second activation made every voxel foreground), a deep-supervision graph whose
first output is at half resolution, a spec whose provenance would make a manifest too large, a YAML
document of aliases within aliases, and options that apply to a training run's build only."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from runtime.commands.cli import main as runtime_main
from tests.exportkit import assert_one_error_line, base_spec, build, save_graph, write_spec
from tests.modelkit import blob_volume, write_scan

WEIGHT = np.array([-1.0, 1.0, 2.0], np.float32)
BIAS = np.array([0.0, -1.0, -3.0], np.float32)


def voxel_graph(channels: int, ending: str | None, name: str = "voxels", extra_output: bool = False):
    """Per-voxel scores of `channels` classes from one channel (WEIGHT * x + BIAS, the first
    `channels`), ending in `ending` (Softmax, Sigmoid) or in the logits; `extra_output` puts a
    half-resolution output first, as deep-supervision graphs are exported."""
    weight = WEIGHT[:channels].reshape(channels, 1, 1, 1, 1)
    nodes = [helper.make_node("Conv", ["input", "weight", "bias"], ["logits" if ending else "output"],
                              kernel_shape=[1, 1, 1])]
    if ending:
        nodes.append(helper.make_node(ending, ["logits"], ["output"], **({"axis": 1} if ending == "Softmax" else {})))
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, channels, 8, 16, 16])]
    if extra_output:
        nodes.append(helper.make_node("MaxPool", ["output"], ["half"], kernel_shape=[2, 2, 2], strides=[2, 2, 2]))
        outputs.insert(0, helper.make_tensor_value_info("half", TensorProto.FLOAT, [1, channels, 4, 8, 8]))
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                          [1, 1, 8, 16, 16])], outputs,
                              [numpy_helper.from_array(weight, "weight"),
                               numpy_helper.from_array(BIAS[:channels], "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def spec_of(classes: dict[int, str], **output) -> dict:
    return base_spec(classes=classes, preprocessing=[{"normalize": {"mean": [30], "std": [20]}}],
                     window={"batch_size": 1, "skip_background": False}, **({"output": output} if output else {}))


def predict_labels(tmp_path: Path, model: Path, name: str) -> np.ndarray:
    scan = tmp_path / "scan.nii.gz"
    if not scan.exists():
        write_scan(scan, blob_volume((12, 24, 20)))
    out = tmp_path / f"{name}.nii.gz"
    result = CliRunner().invoke(runtime_main, ["predict", str(scan), "--model", str(model), "--output", str(out),
                                               "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out)))


@pytest.mark.parametrize("ending, channels, classes, default, fixed", [
    ("Softmax", 3, {0: "background", 1: "a", 2: "b"}, "softmax", {"activation": "none"}),
    ("Sigmoid", 1, {0: "background", 1: "a"}, "sigmoid", {"activation": "none", "label_rule": "threshold"}),
    ("Sigmoid", 2, {0: "background", 1: "a", 2: "b"}, "softmax", {"activation": "none", "label_rule": "threshold"}),
])
def test_a_graph_that_ends_in_its_own_activation_is_read_as_its_logits_graph_is(tmp_path, ending, channels, classes,
                                                                               default, fixed):
    activated = save_graph(tmp_path, voxel_graph(channels, ending), "activated.onnx")
    result = build(activated, write_spec(tmp_path, spec_of(classes)), tmp_path / "repo")
    assert_one_error_line(result, f"comes from a {ending} node, so it holds probabilities already, and "
                                  f"output.activation {default} would apply a second activation")
    assert not (tmp_path / "repo").exists()

    result = build(activated, write_spec(tmp_path, spec_of(classes, **fixed)), tmp_path / "repo")
    assert result.exit_code == 0, result.output
    logits = save_graph(tmp_path, voxel_graph(channels, None), "logits.onnx")
    reading = {"activation": ending.lower(), **({"label_rule": "threshold"} if ending == "Sigmoid" else {})}
    result = build(logits, write_spec(tmp_path, {**spec_of(classes, **reading), "name": "logits"}), tmp_path / "repo")
    assert result.exit_code == 0, result.output
    own = predict_labels(tmp_path, tmp_path / "repo" / "bright", "own")
    expected = predict_labels(tmp_path, tmp_path / "repo" / "logits", "logits")
    assert len(np.unique(expected)) == len(classes)
    np.testing.assert_array_equal(own, expected)


@pytest.mark.parametrize("ending, channels, classes, output", [
    ("Softmax", 3, {0: "background", 1: "a", 2: "b"}, {"activation": "none", "probabilities": "softmax"}),
    ("Sigmoid", 1, {0: "background", 1: "a"}, {"activation": "none", "probabilities": "sigmoid"}),
])
def test_probabilities_of_a_graph_that_ends_in_its_own_activation_are_refused(tmp_path, ending, channels, classes,
                                                                              output):
    """Its values are probabilities: their softmax or sigmoid would be a second activation (a
    sigmoid of probabilities is over 0.5 everywhere, an all-foreground fractional SEG)."""
    activated = save_graph(tmp_path, voxel_graph(channels, ending), "activated.onnx")
    result = build(activated, write_spec(tmp_path, spec_of(classes, **output)), tmp_path / "repo")
    assert_one_error_line(result, f"comes from a {ending} node, so it holds probabilities already, and "
                                  f"output.probabilities {output['probabilities']} would take the")
    assert not (tmp_path / "repo").exists()


def test_logits_whose_probabilities_are_their_sigmoid_are_read_by_threshold_0_unless_told(tmp_path):
    """The threshold is on the logits: 0 is the sigmoid's 0.5, where 0.5 would be its 0.62."""
    import json

    logits = save_graph(tmp_path, voxel_graph(2, None), "logits.onnx")
    classes = {0: "background", 1: "a", 2: "b"}
    result = build(logits, write_spec(tmp_path, spec_of(classes, activation="none", probabilities="sigmoid")),
                   tmp_path / "repo")
    assert result.exit_code == 0, result.output
    output = json.loads((tmp_path / "repo" / "bright" / "1" / "manifest.json").read_text())["output"]
    assert output == {"activation": "none", "label_rule": "threshold", "threshold": 0.0, "ensemble": "mean",
                      "probabilities": "sigmoid"}
    sigmoid = save_graph(tmp_path, voxel_graph(2, None), "sigmoid.onnx")
    result = build(sigmoid, write_spec(tmp_path, {**spec_of(classes, activation="sigmoid", label_rule="threshold"),
                                                  "name": "sigmoid"}), tmp_path / "repo")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(predict_labels(tmp_path, tmp_path / "repo" / "bright", "logits"),
                                  predict_labels(tmp_path, tmp_path / "repo" / "sigmoid", "sigmoid"))


def test_a_half_resolution_first_output_is_refused_with_the_output_to_name(tmp_path):
    graph = save_graph(tmp_path, voxel_graph(3, None, extra_output=True))
    result = build(graph, write_spec(tmp_path, spec_of({0: "background", 1: "a", 2: "b"})), tmp_path / "repo")
    assert_one_error_line(result, r"output 'half' has spatial size \[4, 8, 8\], not the patch's \[8, 16, 16\].* "
                                  r"name the full-size one in onnx.output")
    spec = {**spec_of({0: "background", 1: "a", 2: "b"}), "onnx": {"output": "output"}}
    assert build(graph, write_spec(tmp_path, spec), tmp_path / "repo").exit_code == 0


def declared(model, output: str, dims: list[int | str]):
    """`model` with its output `output` declared of `dims` (a name: a dynamic axis), whatever it gives."""
    [value] = [value for value in model.graph.output if value.name == output]
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for size in dims:
        axis = shape.dim.add()
        if isinstance(size, str):
            axis.dim_param = size
        else:
            axis.dim_value = size
    return model


@pytest.mark.parametrize("case", ["half size, declared dynamic", "three channels, declared dynamic"])
def test_an_output_of_another_shape_than_the_spec_promises_is_refused_though_its_axes_are_dynamic(tmp_path, case):
    """The sample window's output is held to the spec's shape, as every prediction holds it."""
    if case.startswith("half"):
        graph = declared(voxel_graph(3, None, extra_output=True), "half", ["n", 3, "z", "y", "x"])
        spec = {**spec_of({0: "background", 1: "a", 2: "b"}), "onnx": {"output": "half"}}
        expected = r"it gives an output of shape \(1, 3, 4, 8, 8\), but .* gives \(1, 3, 8, 16, 16\)"
    else:
        graph = declared(voxel_graph(3, None), "output", [1, "classes", 8, 16, 16])
        spec = spec_of({0: "background", 1: "a", 2: "b", 3: "c"})
        expected = (r"it gives an output of shape \(1, 3, 8, 16, 16\), but a segmentation model of 4 classes read "
                    r"by softmax")
    result = build(save_graph(tmp_path, graph), write_spec(tmp_path, spec), tmp_path / "repo")
    assert_one_error_line(result, r"does not fit spec .*: for a window of shape \(1, 1, 8, 16, 16\) " + expected)
    assert not (tmp_path / "repo").exists()


def test_a_graph_that_gives_nan_is_refused_before_its_half_precision_is_checked(tmp_path):
    graph = voxel_graph(1, None)
    graph.graph.node.append(helper.make_node("Log", ["output"], ["logged"]))
    graph.graph.output[0].name = "logged"
    spec = spec_of({0: "background", 1: "a"}, activation="sigmoid", label_rule="threshold")
    result = build(save_graph(tmp_path, graph), write_spec(tmp_path, spec), tmp_path / "repo")
    assert_one_error_line(result, r"ONNX model .* gives non-finite values \(NaN or infinity\) in [\d,]+ of the 2,048 "
                                  r"values of its output for sample input 0; .*a log, square root or division")
    assert not (tmp_path / "repo").exists()


def test_a_manifest_too_large_is_refused_and_leaves_no_version(tmp_path):
    spec = spec_of({0: "background", 1: "a", 2: "b"})
    spec["provenance"] = {**spec["provenance"], "description": "x" * (17 * 2**20)}
    result = build(save_graph(tmp_path, voxel_graph(3, None)), write_spec(tmp_path, spec), tmp_path / "repo")
    assert_one_error_line(result, "more than the 16,777,216 a manifest may hold: its provenance")
    assert not (tmp_path / "repo" / "bright" / "1").exists()


def test_a_spec_of_aliases_within_aliases_is_refused_at_once(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text("\n".join(lines) + "\n")
    result = build(save_graph(tmp_path, voxel_graph(3, None)), spec_path, tmp_path / "repo")
    assert_one_error_line(result, "expands to more than 1,000,000 values")


def test_options_of_a_run_build_are_refused_with_from_onnx(tmp_path):
    graph = save_graph(tmp_path, voxel_graph(3, None))
    spec_path = write_spec(tmp_path, spec_of({0: "background", 1: "a", 2: "b"}))
    result = build(graph, spec_path, tmp_path / "repo", "--sample", str(graph), "--tolerance", "0.1")
    assert_one_error_line(result, r"--sample, --tolerance apply to a training run's build")


def batch_mixing_graph():
    """The bright-structures graph plus its output less that output's mean over the batch: alone, a
    window's output is the graph's; in a batch it is pulled toward its neighbours' (as a BatchNorm
    exported in training mode does)."""
    from export import graphs

    model = graphs.bright_structures(3)
    model.graph.node[0].output[0] = "logits"
    model.graph.node.extend([helper.make_node("ReduceMean", ["logits"], ["batch_mean"], axes=[0], keepdims=1),
                             helper.make_node("Sub", ["logits", "batch_mean"], ["apart"]),
                             helper.make_node("Add", ["logits", "apart"], ["output"])])
    return model


def test_a_graph_that_mixes_the_windows_of_a_batch_is_refused_by_export_and_by_verify(tmp_path):
    """Each window's labels would depend on which windows share its batch: export build runs a
    window alone and in a batch of two, and so does `runtime verify` for a version made by hand,
    where the windows are run in batches (window.batch_size over 1; a histology model's tiles,
    which Triton batches across requests, whatever it is)."""
    from runtime.commands.verify import runs_batches
    from tests.modelkit import make_model, run_failing, window

    spec = base_spec(window={"batch_size": 2, "skip_background": False})
    result = build(save_graph(tmp_path, batch_mixing_graph()), write_spec(tmp_path, spec), tmp_path / "repo")
    assert_one_error_line(result, r"gives a window an output that differs by [\d.e+-]+ in a batch beside another "
                                  r"window from the one it gives it alone: its graph mixes the windows of a batch")
    assert not (tmp_path / "repo").exists()
    model = make_model(tmp_path / "by_hand", batch_mixing_graph(), window=window(batch_size=2))
    run_failing(["verify", str(model)], "its graph mixes the windows of a batch",
                "export the model in eval mode, or with a batch axis fixed at 1")
    one = make_model(tmp_path / "one_at_a_time", batch_mixing_graph(), window=window(batch_size=1))
    assert CliRunner().invoke(runtime_main, ["verify", str(one)]).exit_code == 0      # never batched: it runs right
    assert runs_batches("histology", "sliding", 1) and not runs_batches("radiology", "sliding", 1)


def test_a_graph_that_runs_one_window_but_not_two_is_refused_for_batches_by_what_it_is(tmp_path):
    """A dynamic batch axis whose graph fixes the batch at 1 inside (a Reshape): said to fail on a
    batch of 2, not sent to check its patch size; with window.batch_size 1 it builds and runs."""
    from export import graphs

    model = graphs.bright_structures(3)
    model.graph.node[0].output[0] = "logits"
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, 2, 8, 16, 16], np.int64), "one"))
    model.graph.node.append(helper.make_node("Reshape", ["logits", "one"], ["output"]))
    for batch_size, folder in ((2, tmp_path / "two"), (1, tmp_path / "one")):
        folder.mkdir()
        spec = base_spec(window={"batch_size": batch_size, "skip_background": False},
                         preprocessing=[{"zscore": {"region": "nonzero"}}])
        result = build(save_graph(folder, model), write_spec(folder, spec), folder / "repo")
        if batch_size == 2:
            assert_one_error_line(result, r"runs one window but not a batch of 2 \(.*\), and its windows are run "
                                          r"in batches; export it with a batch axis that takes any size")
        else:
            assert result.exit_code == 0, result.output
