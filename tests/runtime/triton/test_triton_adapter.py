"""The Triton adapter without Triton: request arrays -> the runtime's prediction; the configs export writes."""
from __future__ import annotations

import importlib.util
import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from export import graphs
from export.triton import onnx_backend_config, python_backend_config, write_triton_files
from runtime.backends import CPU_BACKENDS, openvino_available
from runtime.errors import InputError, ModelError, OutputError
from runtime.io import read_scan
from runtime.manifest import load_manifest, parse_manifest, version_digest, write_manifest
from runtime.predict import load_model, predict_scan
from runtime.triton import (
    LABELS, PROBABILITIES, SCORES, choose_device, label_dtype, predict_arrays, scan_from_arrays,
)
from runtime.triton.adapter import choose_budget, version_cpu_devices
from tests.conftest import DEMO, REPO
from tests.modelkit import blob_volume, make_model, manifest_dict, window, write_scan
from tests.tritonkit import model_config_pb2

# The bytecode written beside each version's model.py, which the Python backend's stub then finds.
BYTECODE = Path(importlib.util.cache_from_source("model.py"))

CLASSIFIER = dict(
    task="classification",
    classes=[{"value": 0, "name": "low"}, {"value": 1, "name": "mid"}, {"value": 2, "name": "high"}],
    preprocessing=[{"name": "rescale", "params": {"out_min": 0, "out_max": 1}},
                   {"name": "resize", "params": {"shape": [8, 16, 16]}}],
    window=window(mode="whole", patch_size=[8, 16, 16]),
)
REGRESSOR = dict(task="regression", classes=[{"value": 0, "name": "age"}],
                 output={"activation": "none", "label_rule": "argmax", "threshold": 0.5, "ensemble": "mean"},
                 window=window(mode="whole", patch_size=[10, 20, 20]))


@pytest.fixture(scope="module")
def demo():
    return load_model(DEMO, device="cpu")


def test_adapter_equals_predict_scan_on_a_file_with_the_same_array_and_spacing(demo, tmp_path):
    array = blob_volume((20, 40, 36))
    path = write_scan(tmp_path / "scan.nii.gz", array, spacing_xyz=(1.0, 1.25, 2.5))
    expected = predict_scan(demo, read_scan([path]))
    outputs = predict_arrays(demo, array[np.newaxis], np.array([2.5, 1.25, 1.0], dtype=np.float32))
    assert set(outputs) == {PROBABILITIES, LABELS, "SPACING", "ORIGIN", "DIRECTION"}
    assert outputs[LABELS].dtype == np.uint8 and outputs[PROBABILITIES].dtype == np.float32
    np.testing.assert_array_equal(outputs[LABELS], expected.labels_zyx)
    np.testing.assert_array_equal(outputs[PROBABILITIES], expected.probabilities_zyx)
    assert 0 < np.count_nonzero(outputs[LABELS]) < array.size / 4


def test_adapter_equals_predict_scan_on_a_real_scan(demo, data_dir):
    scan = read_scan([data_dir / "radiology" / "pyradiomics_breast1_image.nrrd"])
    expected = predict_scan(demo, scan)
    outputs = predict_arrays(demo, scan.array_zyx.copy(), np.array(scan.spacing_zyx))
    np.testing.assert_array_equal(outputs[LABELS], expected.labels_zyx)
    np.testing.assert_array_equal(outputs[PROBABILITIES], expected.probabilities_zyx)
    assert np.count_nonzero(outputs[LABELS]) > 100


def test_a_model_that_resamples_needs_spacing_and_its_answer_depends_on_it(demo):
    image = blob_volume((20, 40, 36))[np.newaxis]
    with pytest.raises(InputError, match="no SPACING input, and model demo_bright_structures resamples to mm"):
        scan_from_arrays(demo.manifest, image)
    coarse = scan_from_arrays(demo.manifest, image, np.array([3.0, 2.0, 1.5], dtype=np.float32))
    assert coarse.reference.GetSpacing() == (1.5, 2.0, 3.0)
    one_mm, three_mm = predict_arrays(demo, image, [1.0, 1.0, 1.0]), predict_arrays(demo, image, [3.0, 2.0, 1.5])
    assert one_mm[LABELS].shape == three_mm[LABELS].shape == image.shape[1:]
    assert not np.array_equal(one_mm[PROBABILITIES], three_mm[PROBABILITIES])


def test_a_model_that_does_not_resample_takes_one_mm_without_spacing(demo):
    import dataclasses

    steps = tuple(step for step in demo.manifest.preprocessing if step.name != "resample")
    plain = dataclasses.replace(demo.manifest, preprocessing=steps)
    image = blob_volume((20, 40, 36))[np.newaxis]
    scan = scan_from_arrays(plain, image)
    assert scan.spacing_zyx == (1.0, 1.0, 1.0) and scan.reference.GetSize() == (36, 40, 20)
    model = dataclasses.replace(demo, manifest=plain)
    np.testing.assert_array_equal(predict_arrays(model, image)[LABELS], predict_arrays(model, image, [3.0, 2.0, 1.5])[LABELS])


def _with_nan(shape: tuple[int, ...]) -> np.ndarray:
    array = blob_volume(shape[1:])[np.newaxis]
    array[0, 2, 3, 4] = np.nan
    return array


BAD_IMAGES = [
    (blob_volume((10, 12))[np.newaxis], "takes \\(C, z, y, x\\)"),
    (blob_volume((10, 12, 12)), "takes \\(C, z, y, x\\)"),
    (np.ones((1, 1, 2, 3, 4, 5), np.float32), "takes \\(C, z, y, x\\)"),
    (np.ones((2, 8, 8, 8), np.float32), "2 channel\\(s\\).*expects 1 \\(image\\)"),
    (np.ones((1, 0, 8, 8), np.float32), "at least one voxel"),
    (_with_nan((1, 10, 12, 12)), "1 NaN or infinite"),
    (np.full((1, 4, 4, 4), np.inf, np.float32), "64 NaN or infinite"),
    (np.zeros((1, 6, 6, 6), np.float32), "every voxel is 0"),
    (np.full((1, 6, 6, 6), -1024, np.float32), "every voxel is -1024"),
    (np.array([["a"]]), "numeric array"),
    ([[[[1.0]]]], "numeric array"),
]


@pytest.mark.parametrize("image, message", BAD_IMAGES)
def test_bad_images_raise_input_error(demo, image, message):
    with pytest.raises(InputError, match=message):
        predict_arrays(demo, image)


@pytest.mark.parametrize("spacing, message", [
    (np.array([1.0, 1.0], np.float32), "must be 3 numbers"),
    (np.ones((1, 3), np.float32), "must be 3 numbers"),
    (np.array(["1", "1", "1"]), "must be 3 numbers"),
    (np.array([1.0, 0.0, 1.0], np.float32), "finite numbers of mm between"),
    (np.array([1.0, np.nan, 1.0], np.float32), "finite numbers of mm between"),
    (np.array([1.0, 1e30, 1.0], np.float32), "finite numbers of mm between"),
])
def test_bad_spacing_raises_input_error(demo, spacing, message):
    with pytest.raises(InputError, match=message):
        predict_arrays(demo, blob_volume((8, 10, 10))[np.newaxis], spacing)


def test_scores_of_classification_and_regression_equal_predict_scan(tmp_path):
    array = blob_volume((10, 20, 20))
    path = write_scan(tmp_path / "scan.nii.gz", array)
    for name, graph, overrides in [("clf", graphs.channel_classifier(1, 3, 3), CLASSIFIER),
                                   ("reg", graphs.mean_regressor(1, 3), REGRESSOR)]:
        model = load_model(make_model(tmp_path / name, graph, **overrides), device="cpu")
        outputs = predict_arrays(model, array[np.newaxis])
        expected = predict_scan(model, read_scan([path])).scores
        assert set(outputs) == {SCORES} and outputs[SCORES].dtype == np.float32
        np.testing.assert_array_equal(outputs[SCORES], expected)
    assert outputs[SCORES].shape == (1,) and outputs[SCORES][0] == pytest.approx(array.mean(), rel=1e-5)


def test_label_type_widens_past_255():
    files = {"model.onnx": "0" * 64}
    wide = parse_manifest(manifest_dict(classes=[{"value": 0, "name": "bg"}, {"value": 300, "name": "x"}], files=files))
    assert label_dtype(wide) is np.uint16
    assert label_dtype(parse_manifest(manifest_dict(files=files))) is np.uint8
    assert re.search(r'name: "LABELS"\s+data_type: TYPE_UINT16', python_backend_config(wide))
    assert re.search(r'name: "LABELS"\s+data_type: TYPE_UINT8', python_backend_config(parse_manifest(manifest_dict(files=files))))


FASTEST_CPU = "openvino" if openvino_available() else "cpu"


@pytest.mark.parametrize("config, kind, device_id, expected", [
    ({}, "MODEL", "0", ("auto", None, 0)),
    ({"parameters": {"device": {"string_value": "cpu"}}}, "MODEL", "0", ("cpu", None, 0)),
    ({"parameters": {"device": {"string_value": "auto"}}}, "GPU", "0", ("cuda", None, 0)),
    ({}, "GPU", "3", ("cuda", None, 3)),  # `gpus: [3]` in the instance group: that GPU, not GPU 0
    ({"parameters": {"device": {"string_value": "tensorrt"}}}, "GPU", "1", ("tensorrt", None, 1)),
    ({}, "CPU", "0", (FASTEST_CPU, None, 0)),  # KIND_CPU never lands on a GPU
    ({}, "CPU", "2", (FASTEST_CPU, None, 0)),
    ({}, "MODEL", "3", ("auto", None, 0)),  # the runtime places a KIND_MODEL instance itself
    ({"parameters": {"device": {"string_value": "openvino"}, "threads": {"string_value": "2"}}}, "GPU", "2",
     ("openvino", 2, 2)),
])
def test_choose_device(config, kind, device_id, expected):
    assert choose_device(config, kind, device_id) == expected


@pytest.mark.parametrize("checked, expected", [
    (["onnxruntime[CPUExecutionProvider]"], "cpu"),
    (["openvino[CPU]", "onnxruntime[CPUExecutionProvider]"], FASTEST_CPU),
])
def test_a_cpu_instance_of_an_int8_version_runs_on_a_backend_it_was_checked_on(tmp_path, checked, expected):
    """KIND_CPU with device auto takes the fastest CPU backend the int8 version's labels were
    checked on, not the fastest installed, which load_model would refuse."""
    model_dir = tmp_path / DEMO.name
    shutil.copytree(DEMO, model_dir)
    manifest, folder = load_manifest(model_dir / "1")
    record = {"method": "int8 post-training quantization (NNCF)", "backends": {name: {} for name in checked}}
    write_manifest(dataclasses.replace(manifest, provenance={**manifest.provenance, "quantization": record}), folder)
    spec = importlib.util.spec_from_file_location("triton_model_int8", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    instance = module.TritonPythonModel()
    instance.initialize({"model_config": json.dumps({"parameters": {}}), "model_repository": str(model_dir),
                         "model_version": "1", "model_instance_kind": "CPU", "model_instance_device_id": "0"})
    assert instance.model.backend.name == CPU_BACKENDS[expected]
    assert choose_device({}, "CPU", "0", version_cpu_devices(folder)) == (expected, None, 0)
    assert version_cpu_devices(DEMO / "1") is None


@pytest.mark.parametrize("device_id", ["gpu0", "²", "-1", ""])
def test_choose_device_refuses_a_gpu_id_that_is_not_a_number(device_id):
    with pytest.raises(InputError, match="device id"):
        choose_device({}, "GPU", device_id)


@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_choose_device_refuses_a_gpu_device_on_a_cpu_instance(device):
    with pytest.raises(InputError, match=f"device='{device}' asks for a GPU, but the instance group is KIND_CPU"):
        choose_device({"parameters": {"device": {"string_value": device}}}, "CPU", "0")


def test_model_py_places_each_instance_where_triton_says(monkeypatch):
    spec = importlib.util.spec_from_file_location("triton_model_placed", DEMO / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = {"model_config": json.dumps({"parameters": {}}), "model_repository": str(DEMO), "model_version": "1"}
    cpu_instance = module.TritonPythonModel()
    cpu_instance.initialize({**args, "model_instance_kind": "CPU", "model_instance_device_id": "0"})
    assert cpu_instance.model.backend.on_cpu
    placed = []
    monkeypatch.setattr(module, "load_model", lambda folder, **how: placed.append(how) or cpu_instance.model)
    for kind, device_id in (("GPU", "1"), ("CPU", "0"), ("MODEL", "0")):
        module.TritonPythonModel().initialize({**args, "model_instance_kind": kind, "model_instance_device_id": device_id})
    assert placed == [{"device": "cuda", "threads": None, "gpu": 1},
                      {"device": FASTEST_CPU, "threads": None, "gpu": 0},
                      {"device": "auto", "threads": None, "gpu": 0}]


def test_a_config_whose_max_batch_size_the_model_cannot_serve_fails_its_load_not_every_request():
    from runtime.triton.adapter import check_batching

    spec = importlib.util.spec_from_file_location("triton_model_batched", DEMO / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = {"name": "demo_bright_structures", "max_batch_size": 4, "parameters": {}}
    args = {"model_config": json.dumps(config), "model_repository": str(DEMO), "model_version": "1"}
    with pytest.raises(ModelError, match="demo_bright_structures sets max_batch_size 4, but it must be 0"):
        module.TritonPythonModel().initialize(args)
    companion = {"name": "tiles_windows", "parameters": {"serves": {"string_value": "tiles"}}}
    with pytest.raises(ModelError, match="tiles_windows sets max_batch_size 0, but it must be at least 1"):
        check_batching({**companion, "max_batch_size": 0})
    check_batching({**companion, "max_batch_size": 64})
    check_batching({**config, "max_batch_size": 0})


@pytest.mark.parametrize("parameters, message", [
    ({"device": {"string_value": "tpu"}}, "device='tpu' is not a device"),
    ({"threads": {"string_value": "two"}}, "threads='two' must be a positive integer"),
    ({"threads": {"string_value": "0"}}, "must be a positive integer"),
])
def test_choose_device_refuses_bad_parameters(parameters, message):
    with pytest.raises(InputError, match=message):
        choose_device({"parameters": parameters})


def test_model_py_imports_without_triton():
    spec = importlib.util.spec_from_file_location("triton_model_under_test", DEMO / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.pb_utils is None
    assert all(callable(getattr(module.TritonPythonModel, m)) for m in ("initialize", "execute", "finalize"))


# --- configs ---------------------------------------------------------------------------------------


def _tensors(text: str, section: str) -> list[dict[str, str]]:
    """The {name, data_type, dims, optional} of each tensor in an input [...] or output [...] block."""
    block = re.search(rf"^{section} \[\n(.*?)\n\]", text, re.S | re.M).group(1)
    found = []
    for entry in re.findall(r"\{(.*?)\}", block, re.S):
        fields = dict(re.findall(r"(\w+): (\"[^\"]*\"|\[[^\]]*\]|\w+)", entry))
        fields["dims"] = re.sub(r"\s", "", fields["dims"])
        found.append(fields)
    return found


def _manifests(tmp_path: Path) -> dict[str, object]:
    return {
        "segmentation": load_manifest(DEMO)[0],
        "classification": load_manifest(make_model(tmp_path / "c", graphs.channel_classifier(1, 3, 3),
                                                   **CLASSIFIER))[0],
        "regression": load_manifest(make_model(tmp_path / "r", graphs.mean_regressor(2, 2),
                                               **{**REGRESSOR, "window": window(patch_size=[16, 16])},
                                               dimensions=2, axis_order="yx", channels=["t1", "t2"],
                                               name="age_2d"))[0],
    }


MANIFEST_OUT = {"name": '"MANIFEST_JSON"', "data_type": "TYPE_UINT8", "dims": "[-1]"}
EXPECTED_OUTPUTS = {
    "segmentation": [{"name": '"PROBABILITIES"', "data_type": "TYPE_FP32", "dims": "[2,-1,-1,-1]"},
                     {"name": '"LABELS"', "data_type": "TYPE_UINT8", "dims": "[-1,-1,-1]"},
                     *({"name": f'"{name}"', "data_type": "TYPE_FP32", "dims": "[-1]"}
                       for name in ("SPACING", "ORIGIN", "DIRECTION")),
                     {"name": '"WINDOW_OUTPUTS"', "data_type": "TYPE_FP32", "dims": "[-1,2,-1,-1,-1]"}, MANIFEST_OUT],
    "classification": [{"name": '"SCORES"', "data_type": "TYPE_FP32", "dims": "[3]"}, MANIFEST_OUT],
    "regression": [{"name": '"SCORES"', "data_type": "TYPE_FP32", "dims": "[1]"},      # a tile model: sliding windows
                   {"name": '"WINDOW_OUTPUTS"', "data_type": "TYPE_FP32", "dims": "[-1,1]"}, MANIFEST_OUT],
}


def test_python_backend_config_fields_per_task(tmp_path):
    for task, manifest in _manifests(tmp_path).items():
        text = python_backend_config(manifest, device="cpu")
        spatial = ",".join(["-1"] * manifest.dimensions)
        assert re.search(rf'^name: "{manifest.name}"$', text, re.M)
        assert re.search(r'^backend: "python"$', text, re.M) and re.search(r"^max_batch_size: 0$", text, re.M)
        windows = [{"name": '"WINDOWS"', "data_type": "TYPE_FP32", "dims": f"[-1,{len(manifest.channels)},{spatial}]",
                    "optional": "true"}] if manifest.window.mode == "sliding" else []
        assert _tensors(text, "input") == [
            {"name": '"IMAGE"', "data_type": "TYPE_FP32", "dims": f"[{len(manifest.channels)},{spatial}]",
             "optional": "true"},
            {"name": '"SPACING"', "data_type": "TYPE_FP32", "dims": f"[{manifest.dimensions}]", "optional": "true"},
            {"name": '"ORIGIN"', "data_type": "TYPE_FP32", "dims": "[-1]", "optional": "true"},
            {"name": '"DIRECTION"', "data_type": "TYPE_FP32", "dims": "[-1]", "optional": "true"},
            {"name": '"SCAN"', "data_type": "TYPE_UINT8", "dims": "[-1]", "optional": "true"},
            *windows,
            {"name": '"MANIFEST"', "data_type": "TYPE_UINT8", "dims": "[1]", "optional": "true"},
        ]
        assert _tensors(text, "output") == EXPECTED_OUTPUTS[task], task
        assert "kind: KIND_MODEL" in text
        assert re.search(r'key: "device"\n  value: \{ string_value: "cpu" \}', text)


def test_configs_parse_as_triton_model_config(tmp_path):
    pb2 = model_config_pb2()
    from google.protobuf import text_format

    manifests = _manifests(tmp_path)
    for task, manifest in manifests.items():
        config = text_format.Parse(python_backend_config(manifest), pb2.ModelConfig())
        assert (config.name, config.backend, config.max_batch_size) == (manifest.name, "python", 0)
        assert [(t.name, list(t.dims), t.optional) for t in config.input][1] == ("SPACING", [manifest.dimensions], True)
        assert [t.name for t in config.output] == [o["name"].strip('"') for o in EXPECTED_OUTPUTS[task]]
        assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_MODEL
        assert config.parameters["device"].string_value == "auto"
    onnx = text_format.Parse(onnx_backend_config(manifests["segmentation"], "demo_windows"), pb2.ModelConfig())
    assert (onnx.backend, onnx.max_batch_size, onnx.HasField("dynamic_batching")) == ("onnxruntime", 8, True)
    assert list(onnx.input[0].dims) == [1, 32, 64, 64] and list(onnx.output[0].dims) == [2, 32, 64, 64]


def test_onnx_backend_config_windows_and_batching(tmp_path):
    manifests = _manifests(tmp_path)
    seg = onnx_backend_config(manifests["segmentation"], "demo_windows", max_batch_size=4)
    assert re.search(r'^name: "demo_windows"$', seg, re.M) and 'backend: "onnxruntime"' in seg
    assert "max_batch_size: 4" in seg and "dynamic_batching { }" in seg
    assert 'default_model_filename: "model.onnx"' in seg
    assert _tensors(seg, "input") == [{"name": '"input"', "data_type": "TYPE_FP32", "dims": "[1,32,64,64]"}]
    assert _tensors(seg, "output") == [{"name": '"output"', "data_type": "TYPE_FP32", "dims": "[2,32,64,64]"}]
    unbatched = onnx_backend_config(manifests["regression"], "age_windows", max_batch_size=0)
    assert "dynamic_batching" not in unbatched
    assert _tensors(unbatched, "input")[0]["dims"] == "[-1,2,16,16]"
    assert _tensors(unbatched, "output")[0]["dims"] == "[-1,1]"
    for bad in (-1, 2.5, True):
        with pytest.raises(InputError, match="max_batch_size"):
            onnx_backend_config(manifests["segmentation"], "x", max_batch_size=bad)


def test_write_triton_files(tmp_path):
    manifest, folder = load_manifest(DEMO)
    model_dir = tmp_path / manifest.name
    (model_dir / "1").mkdir(parents=True)
    config, model_py = write_triton_files(model_dir, manifest, model_dir / "1")
    assert config.read_text() == python_backend_config(manifest)
    assert model_py.read_bytes() == (REPO / "runtime" / "triton" / "model.py").read_bytes()
    assert sorted(p.name for p in model_dir.rglob("*")) == sorted(["1", "config.pbtxt", "model.py", *BYTECODE.parts])
    with pytest.raises(OutputError, match="folder of the same name"):
        write_triton_files(tmp_path / "other", manifest, model_dir / "1")
    with pytest.raises(OutputError, match="does not exist"):
        write_triton_files(model_dir, manifest, model_dir / "2")


def test_committed_demo_triton_files_are_current():
    manifest, folder = load_manifest(DEMO)
    digests = {manifest.version: version_digest(folder)}
    assert (DEMO / "config.pbtxt").read_text() == python_backend_config(manifest, digests=digests)
    assert (folder / "model.py").read_bytes() == (REPO / "runtime" / "triton" / "model.py").read_bytes()
    from export.triton import windows_backend_config

    slides = REPO / "model_repository" / "demo_stain_regions"
    manifest, folder = load_manifest(slides)
    digests = {manifest.version: version_digest(folder)}
    assert (slides / "config.pbtxt").read_text() == python_backend_config(manifest, digests=digests)
    companion = REPO / "model_repository" / "demo_stain_regions_windows"
    assert (companion / "config.pbtxt").read_text() == windows_backend_config(manifest, digests=digests)
    for model_py in (folder / "model.py", companion / "1" / "model.py"):
        assert model_py.read_bytes() == (REPO / "runtime" / "triton" / "model.py").read_bytes()


def test_a_request_over_its_memory_budget_is_refused_before_any_work(demo):
    image = blob_volume((16, 24, 24))[np.newaxis]
    config = {"parameters": {"max_memory": {"string_value": "64K"}}}
    budget = choose_budget(config)
    assert budget == 64 * 1024 and choose_budget({}) is None
    with pytest.raises(InputError, match=r"predicting IMAGE \(a 16×24×24 grid, 32×64×64 after preprocessing\) needs "
                                         r"about .* more than the memory budget of 65.5 KB"):
        predict_arrays(demo, image, np.array([2.0, 1.5, 1.5], np.float32), budget=budget)
    assert predict_arrays(demo, image, np.array([2.0, 1.5, 1.5], np.float32))[LABELS].shape == (16, 24, 24)
    with pytest.raises(InputError, match="config parameter max_memory must be a positive size"):
        choose_budget({"parameters": {"max_memory": {"string_value": "lots"}}})


def test_an_encoded_scan_is_read_with_every_check_and_predicted_on_its_own_grid(demo, tmp_path):
    from runtime.io import read_scan
    from runtime.triton import SCAN, predict_request, scan_from_bytes

    array = blob_volume((20, 40, 36))
    path = write_scan(tmp_path / "scan.nii.gz", array, spacing_xyz=(1.0, 1.25, 2.5),
                      direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0), origin=(10.0, -20.0, 5.0))
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    decoded = scan_from_bytes(data)
    on_disk = read_scan([path])
    np.testing.assert_array_equal(decoded.array_zyx, on_disk.array_zyx)
    assert decoded.spacing_zyx == on_disk.spacing_zyx and decoded.sources == (SCAN,)
    expected = predict_scan(demo, on_disk)
    answer = predict_request(demo, scan=data)
    np.testing.assert_array_equal(answer[LABELS], expected.labels_zyx)
    with pytest.raises(InputError, match="SCAN .*truncated"):
        scan_from_bytes(data[: data.size // 2])
    with pytest.raises(InputError, match="exactly one of IMAGE"):
        predict_request(demo, image=array[np.newaxis], spacing_zyx=[1.0, 1.0, 1.0], scan=data)
    with pytest.raises(InputError, match="exactly one of IMAGE"):
        predict_request(demo)
    with pytest.raises(InputError, match="must be the bytes of a NIfTI file"):
        scan_from_bytes(np.zeros(8, np.float32))


def test_windows_are_answered_with_the_models_raw_output_and_a_manifest_request_with_its_bytes(tmp_path):
    from runtime.manifest import decode_manifest, manifest_digest, read_manifest_data
    from runtime.triton.adapter import MANIFEST, MANIFEST_JSON, SPACING, WINDOW_OUTPUTS, WINDOWS, answer
    from tests.slidekit import stain_logits, stain_model

    model = load_model(stain_model(tmp_path / "stain", patch=32), device="cpu")
    manifest_json = json.dumps(read_manifest_data(model.folder)).encode()
    rgb = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    windows = np.ascontiguousarray(rgb.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
    out = answer(model, {WINDOWS: windows}, manifest_json, requested={WINDOW_OUTPUTS})
    assert list(out) == [WINDOW_OUTPUTS] and out[WINDOW_OUTPUTS].shape == (3, 3, 32, 32)
    np.testing.assert_allclose(out[WINDOW_OUTPUTS], np.stack([stain_logits(t) for t in rgb]), atol=1e-5)
    raw = answer(model, {MANIFEST: np.ones(1, np.uint8)}, manifest_json)[MANIFEST_JSON]
    assert raw.dtype == np.uint8 and raw.flags.writeable
    assert manifest_digest(decode_manifest(raw.tobytes(), "answer")) == version_digest(model.folder)
    refused = [({WINDOWS: windows[:, :, :16]}, "takes (N, 3, 32, 32)"),
               ({WINDOWS: windows[:0]}, "takes (N, 3, 32, 32)"),
               ({WINDOWS: windows.astype(np.float64)}, "must be FP32"),
               ({WINDOWS: np.full_like(windows, np.nan)}, "NaN or infinite"),
               ({WINDOWS: windows, MANIFEST: np.ones(1, np.uint8)}, "holds WINDOWS, MANIFEST"),
               ({}, "holds none of them"),
               ({WINDOWS: windows, SPACING: np.ones(2, np.float32)}, "SPACING goes with IMAGE only")]
    for inputs, said in refused:
        with pytest.raises(InputError, match=re.escape(said)):
            answer(model, inputs, manifest_json)
    with pytest.raises(InputError, match="answered with WINDOW_OUTPUTS, not LABELS"):
        answer(model, {WINDOWS: windows}, manifest_json, requested={LABELS})


def test_a_model_on_whole_images_takes_no_windows(tmp_path):
    from runtime.triton.adapter import WINDOWS, run_windows

    model = load_model(make_model(tmp_path / "c", graphs.channel_classifier(1, 3, 3), **CLASSIFIER), device="cpu")
    with pytest.raises(InputError, match="takes whole images"):
        run_windows(model, np.zeros((1, 1, 8, 16, 16), np.float32))
    assert "WINDOWS" not in python_backend_config(model.manifest) and WINDOWS == "WINDOWS"


def test_origin_and_direction_place_the_image_and_come_back_with_the_outputs(demo, tmp_path):
    from runtime.triton.adapter import DIRECTION, ORIGIN, SPACING, answer

    array = blob_volume((20, 40, 36))
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    path = write_scan(tmp_path / "scan.nii.gz", array, spacing_xyz=(1.0, 1.25, 2.5), direction=direction,
                      origin=(10.0, -20.0, 5.0))
    expected = predict_scan(demo, read_scan([path]))
    inputs = {"IMAGE": array[np.newaxis], SPACING: np.array([2.5, 1.25, 1.0], np.float32),
              ORIGIN: np.array([10.0, -20.0, 5.0], np.float32), DIRECTION: np.array(direction, np.float32)}
    out = answer(demo, inputs, b"")
    np.testing.assert_array_equal(out[LABELS], expected.labels_zyx)
    np.testing.assert_array_equal(out[ORIGIN], [10.0, -20.0, 5.0])
    np.testing.assert_array_equal(out[DIRECTION], direction)
    np.testing.assert_array_equal(out[SPACING], [2.5, 1.25, 1.0])
    plain = answer(demo, {"IMAGE": array[np.newaxis], SPACING: inputs[SPACING]}, b"")
    np.testing.assert_array_equal(plain[ORIGIN], [0, 0, 0])
    np.testing.assert_array_equal(plain[DIRECTION], np.eye(3).ravel())
    refused = [(ORIGIN, np.zeros(2, np.float32), "ORIGIN must be 3 numbers"),
               (ORIGIN, np.array([0, np.inf, 0], np.float32), "ORIGIN must be finite"),
               (DIRECTION, np.ones(9, np.float32), "DIRECTION must be an orthonormal matrix"),
               (DIRECTION, np.eye(3, dtype=np.float32)[:2].ravel(), "DIRECTION must be 9 numbers")]
    for name, value, said in refused:
        with pytest.raises(InputError, match=said):
            answer(demo, {**inputs, name: value}, b"")
    with pytest.raises(InputError, match="ORIGIN goes with IMAGE only"):
        answer(demo, {"SCAN": np.frombuffer(path.read_bytes(), np.uint8), ORIGIN: inputs[ORIGIN]}, b"")


def test_a_tile_model_gets_a_windows_companion_that_batches_and_serves_its_versions(tmp_path):
    import yaml

    from export.listing import describe_repository
    from export.package import build_from_onnx
    from export.spec import parse_spec
    from export.triton import batches_windows, windows_backend_config
    from runtime.manifest import is_windows_companion
    from runtime.triton.adapter import served_version_dir

    spec = yaml.safe_load((REPO / "export" / "demo_slide_spec.yaml").read_text(encoding="utf-8"))
    onnx_path = graphs.save(graphs.stain_classes(), tmp_path / "stain.onnx")
    repository = tmp_path / "repo"
    version = build_from_onnx(onnx_path, parse_spec(spec, "slide spec"), repository)
    manifest, _ = load_manifest(version)
    companion = repository / "demo_stain_regions_windows"
    assert batches_windows(manifest) and not batches_windows(load_manifest(DEMO)[0])
    assert sorted(p.name for p in companion.rglob("*")) == sorted(["1", "config.pbtxt", "model.py", *BYTECODE.parts])
    assert (companion / "1" / "model.py").read_bytes() == (REPO / "runtime" / "triton" / "model.py").read_bytes()
    text = (companion / "config.pbtxt").read_text()
    assert text == windows_backend_config(manifest, digests={1: version_digest(version)})
    assert is_windows_companion(companion) and not is_windows_companion(repository / "demo_stain_regions")
    assert "_windows" not in describe_repository(repository)
    config = {"parameters": {"serves": {"string_value": "demo_stain_regions"}}}
    assert served_version_dir(config, companion, "1") == version
    assert served_version_dir({}, companion, "1") == companion / "1"
    for bad in ("../elsewhere", "..", "a/b", ""):
        with pytest.raises(InputError, match="is not a model folder name"):
            served_version_dir({"parameters": {"serves": {"string_value": bad or "/"}}}, companion, "1")
    pb2 = model_config_pb2()
    from google.protobuf import text_format

    parsed = text_format.Parse(text, pb2.ModelConfig())
    assert (parsed.backend, parsed.max_batch_size, parsed.HasField("dynamic_batching")) == ("python", 64, True)
    assert [(t.name, list(t.dims)) for t in parsed.input] == [("WINDOWS", [3, -1, -1])]
    assert [(t.name, list(t.dims)) for t in parsed.output] == [("WINDOW_OUTPUTS", [3, -1, -1])]
    assert parsed.parameters["serves"].string_value == "demo_stain_regions"


def test_window_requests_batched_together_answer_as_each_alone_and_a_bad_one_fails_alone(tmp_path):
    from runtime.errors import MedflowError
    from runtime.triton.adapter import run_window_requests, run_windows
    from tests.slidekit import stain_model

    model = load_model(stain_model(tmp_path / "stain", patch=32), device="cpu")
    rng = np.random.default_rng(1)
    requests = [rng.random((count, 3, 32, 32), dtype=np.float32) for count in (2, 1, 3)]
    requests.insert(1, np.zeros((2, 3, 16, 16), np.float32))
    results = run_window_requests(model, requests)
    assert isinstance(results[1], InputError) and "takes (N, 3, 32, 32)" in str(results[1])
    for request, result in zip(requests[::2] + requests[3:], results[::2] + results[3:]):
        assert not isinstance(result, MedflowError)
        np.testing.assert_allclose(result, run_windows(model, request), atol=1e-6)
        assert result.shape == (len(request), 3, 32, 32)
    assert run_window_requests(model, [None])[0].__class__ is InputError
