"""The ensemble graph: the mean of the folds' probabilities (and votes), run by onnxruntime and OpenVINO,
against the same computation in torch on the very folds it was built from."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.ensemble import ensemble_graph
from export.onnx_export import export_fold, parity_inputs
from runtime.backends import open_backend
from runtime.backends.openvino_backend import shared_core
from runtime.errors import ModelError
from trainer.models import ModelSpec, build_model

ATOL = 1e-5


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


class Folds:
    """Three (or `count`) tiny networks of one spec, seeds 0, 1, 2, ..., and their exported graphs."""

    def __init__(self, folder: Path, spec: ModelSpec, edge: int, count: int = 3) -> None:
        self.spec, self.edge = spec, edge
        self.models: list[torch.nn.Module] = []
        self.graphs: list[onnx.ModelProto] = []
        for seed in range(count):
            torch.manual_seed(seed)
            model = build_model(spec).eval()
            self.models.append(model)
            self.graphs.append(export_fold(model, torch.from_numpy(self.inputs(1)[0]), folder / f"fold{seed}.onnx"))

    def inputs(self, batch: int) -> list[np.ndarray]:
        return parity_inputs((batch, self.spec.in_channels, *[self.edge] * self.spec.dimensions), seed=3)


def make_folds(factory: pytest.TempPathFactory, edge: int, **spec: object) -> Folds:
    values: dict[str, object] = dict(in_channels=2, out_channels=3, base_filters=4, depth=2)
    values.update(spec)
    return Folds(factory.mktemp("folds"), ModelSpec(**values), edge)


@pytest.fixture(scope="module")
def unet3d(tmp_path_factory: pytest.TempPathFactory) -> Folds:
    return make_folds(tmp_path_factory, 16, architecture="unet", dimensions=3, task="segmentation")


@pytest.fixture(scope="module")
def resunet2d(tmp_path_factory: pytest.TempPathFactory) -> Folds:
    return make_folds(tmp_path_factory, 16, architecture="resunet", dimensions=2, task="segmentation")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Folds:
    return make_folds(tmp_path_factory, 32, architecture="vgg16", dimensions=2, task="classification",
                      out_channels=4, norm="none")


@pytest.fixture(scope="module")
def regressor(tmp_path_factory: pytest.TempPathFactory) -> Folds:
    # 20 per axis leaves 2 voxels before vgg16's last pooling; OpenVINO refuses to pool a single voxel
    return make_folds(tmp_path_factory, 20, architecture="vgg16", dimensions=3, task="regression", out_channels=1,
                      norm="batch")


def mean_of_torch_folds(models: Sequence[torch.nn.Module], x: torch.Tensor, activation: str) -> torch.Tensor:
    """The reference: each fold's output through `activation` (over axis 1 for softmax), averaged."""
    with torch.no_grad():
        outputs = [model.eval()(x) for model in models]
    if activation == "softmax":
        outputs = [output.softmax(dim=1) for output in outputs]
    elif activation == "sigmoid":
        outputs = [output.sigmoid() for output in outputs]
    return torch.stack(outputs).mean(dim=0)


def torch_votes(models: Sequence[torch.nn.Module], x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        winners = [model.eval()(x).argmax(dim=1) for model in models]
    classes = models[0](x).shape[1]
    return torch.stack([torch.nn.functional.one_hot(w, classes).float() for w in winners]).mean(dim=0).numpy()


def run_onnxruntime(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x})))


def run_openvino(path: Path, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    core = shared_core()  # one Core per process, as the runtime keeps it
    compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    assert len(compiled.outputs) == len(names)
    results = compiled.create_infer_request().infer({"input": x})
    return {name: np.array(results[compiled.output(name)]) for name in names}


def check_both_engines(model: onnx.ModelProto, folder: Path, x: np.ndarray,
                       expected: dict[str, np.ndarray]) -> None:
    path = folder / "ensemble.onnx"
    onnx.save(model, str(path))
    engines = {"onnxruntime": run_onnxruntime(model, x), "openvino": run_openvino(path, x, list(expected))}
    for engine, outputs in engines.items():
        assert sorted(outputs) == sorted(expected), engine
        for name, value in expected.items():
            assert outputs[name].shape == value.shape, (engine, name)
            np.testing.assert_allclose(outputs[name], value, rtol=0, atol=ATOL, err_msg=f"{engine} {name}")


def declared(entry: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in entry.type.tensor_type.shape.dim]


@pytest.mark.parametrize("fixture", ["unet3d", "resunet2d"])
def test_segmentation_softmax_mean(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    folds: Folds = request.getfixturevalue(fixture)
    model = ensemble_graph(folds.graphs, "segmentation")
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["output"]
    spatial = ["z", "y", "x"][3 - folds.spec.dimensions:]
    assert declared(model.graph.input[0]) == ["batch", 2, *spatial]
    assert declared(model.graph.output[0]) == ["batch", 3, *spatial]
    for x in folds.inputs(batch=2):
        expected = mean_of_torch_folds(folds.models, torch.from_numpy(x), "softmax").numpy()
        check_both_engines(model, tmp_path, x, {"output": expected})
        single = mean_of_torch_folds(folds.models[:1], torch.from_numpy(x), "softmax").numpy()
        assert np.abs(single - expected).max() > 1e-2  # the folds differ: the mean is not one fold


def test_segmentation_sigmoid_mean_through_the_runtime_backend(unet3d: Folds, tmp_path: Path) -> None:
    model = ensemble_graph(unet3d.graphs, "segmentation", activation="sigmoid")
    path = tmp_path / "ensemble.onnx"
    onnx.save(model, str(path))
    x = unet3d.inputs(batch=1)[1]
    expected = mean_of_torch_folds(unet3d.models, torch.from_numpy(x), "sigmoid").numpy()
    for device in ("cpu", "openvino"):
        backend = open_backend(path, "input", "output", device=device, threads=1, cache_dir=tmp_path / "cache")
        np.testing.assert_allclose(backend(x), expected, rtol=0, atol=ATOL, err_msg=device)


def test_classification_mean_and_vote(classifier: Folds, tmp_path: Path) -> None:
    model = ensemble_graph(classifier.graphs, "classification", rule="vote")
    assert declared(model.graph.output[1]) == ["batch", 4]
    scale, offset = np.linspace(0.2, 5, 8, dtype=np.float32), np.linspace(-3, 3, 8, dtype=np.float32)
    x = parity_inputs((8, 2, 32, 32), seed=11)[0] * scale[:, None, None, None] + offset[:, None, None, None]
    votes = torch_votes(classifier.models, torch.from_numpy(x))
    assert np.isclose(votes, 1 / 3).any()  # the folds disagree on some image
    assert len(np.unique(votes, axis=0)) > 1  # and the vote depends on the image
    np.testing.assert_allclose(votes.sum(axis=1), 1.0, rtol=0, atol=1e-6)
    expected = mean_of_torch_folds(classifier.models, torch.from_numpy(x), "softmax").numpy()
    check_both_engines(model, tmp_path, x, {"output": expected, "votes": votes})
    mean_only = ensemble_graph(classifier.graphs, "classification", rule="mean")
    assert [o.name for o in mean_only.graph.output] == ["output"]


def test_regression_mean_of_raw_values(regressor: Folds, tmp_path: Path) -> None:
    model = ensemble_graph(regressor.graphs, "regression", activation="none")
    assert declared(model.graph.output[0]) == ["batch", 1]
    for x in regressor.inputs(batch=3):
        expected = mean_of_torch_folds(regressor.models, torch.from_numpy(x), "none").numpy()
        assert np.abs(expected).max() > 1e-2
        check_both_engines(model, tmp_path, x, {"output": expected})


def test_a_single_fold_is_still_an_activated_graph(resunet2d: Folds, tmp_path: Path) -> None:
    model = ensemble_graph(resunet2d.graphs[:1], "segmentation", names=["0.1"])
    x = resunet2d.inputs(batch=1)[0]
    expected = mean_of_torch_folds(resunet2d.models[:1], torch.from_numpy(x), "softmax").numpy()
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, atol=1e-5)
    check_both_engines(model, tmp_path, x, {"output": expected})
    assert all(node.name.startswith(("0.1/", "ensemble/")) for node in model.graph.node)


def test_folds_with_fixed_patch_axes_give_a_fixed_patch_ensemble(tmp_path: Path) -> None:
    spec = ModelSpec(architecture="fcn", dimensions=2, in_channels=1, out_channels=2, task="segmentation",
                     base_filters=4, depth=2)
    models, graphs = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(build_model(spec).eval())
        graphs.append(export_fold(models[-1], torch.zeros(1, 1, 16, 24), tmp_path / f"f{seed}.onnx",
                                  dynamic_spatial=False))
    model = ensemble_graph(graphs, "segmentation")
    assert declared(model.graph.input[0]) == ["batch", 1, 16, 24]
    assert declared(model.graph.output[0]) == ["batch", 2, 16, 24]
    x = parity_inputs((3, 1, 16, 24))[1]
    expected = mean_of_torch_folds(models, torch.from_numpy(x), "softmax").numpy()
    check_both_engines(model, tmp_path, x, {"output": expected})


def test_names_prefix_every_fold_and_the_opset_is_kept(unet3d: Folds) -> None:
    model = ensemble_graph(unet3d.graphs, "segmentation", names=["0.1", "1.0", "2.0"])
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    weights = [tensor.name for tensor in model.graph.initializer]
    assert len(weights) == len(set(weights)) == 3 * len(unet3d.graphs[0].graph.initializer)
    assert {name.split("/")[0] for name in weights} == {"0.1", "1.0", "2.0"}
    assert dict((p.key, p.value) for p in model.metadata_props)["folds"] == "0.1,1.0,2.0"
    with pytest.raises(ValueError, match="distinct"):
        ensemble_graph(unet3d.graphs, "segmentation", names=["a", "a", "b"])
    with pytest.raises(ValueError, match="2 fold names given for 3 folds"):
        ensemble_graph(unet3d.graphs, "segmentation", names=["a", "b"])


def test_folds_of_another_opset_are_refused(resunet2d: Folds, tmp_path: Path) -> None:
    torch.manual_seed(7)
    old = export_fold(build_model(resunet2d.spec), torch.randn(1, 2, 16, 16), tmp_path / "old.onnx", opset=16)
    with pytest.raises(ValueError, match=r"fold 'fold1' imports opsets \{'': 16\} but fold 'fold0' imports \{'': 17\}"):
        ensemble_graph([resunet2d.graphs[0], old], "segmentation")


def test_folds_that_do_not_fit_together_are_refused(unet3d: Folds, resunet2d: Folds, classifier: Folds) -> None:
    two_d, three_d = r"\(\?, 2, \?, \?\)", r"\(\?, 2, \?, \?, \?\)"
    with pytest.raises(ValueError, match=f"fold 'fold1' maps {two_d} .* fold 'fold0' maps {three_d}"):
        ensemble_graph([unet3d.graphs[0], resunet2d.graphs[0]], "segmentation")
    with pytest.raises(ValueError, match="at least one fold"):
        ensemble_graph([], "segmentation")
    with pytest.raises(ValueError, match="vote rule is for classification"):
        ensemble_graph(unet3d.graphs, "segmentation", rule="vote")
    with pytest.raises(ValueError, match="regression ensemble averages raw values"):
        ensemble_graph(classifier.graphs, "regression", activation="softmax")
    with pytest.raises(ValueError, match=r"classification fold outputs \(batch, classes\)"):
        ensemble_graph(unet3d.graphs, "classification")
    with pytest.raises(ValueError, match="activation must be one of softmax, sigmoid, none"):
        ensemble_graph(unet3d.graphs, "segmentation", activation="relu")


def test_softmax_over_one_channel_is_refused(regressor: Folds) -> None:
    with pytest.raises(ValueError, match="single output channel"):
        ensemble_graph(regressor.graphs, "classification")


def test_a_graph_that_fails_the_checker_is_a_model_error(resunet2d: Folds) -> None:
    broken = onnx.ModelProto()
    broken.CopyFrom(resunet2d.graphs[0])
    broken.graph.node[0].op_type = "NoSuchOperator"
    with pytest.raises(ModelError, match="ensemble graph fails onnx.checker"):
        ensemble_graph([broken], "segmentation")
