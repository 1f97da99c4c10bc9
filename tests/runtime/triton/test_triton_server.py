"""A real Triton Inference Server serving the demo model folder through runtime/triton/model.py.

The server is `tritonserver` from `$TRITONSERVER`, else the one the `nvidia-pytriton` wheel ships
(with its Python-backend stub for this interpreter's Python version), else the one on PATH. The
test skips only where none is installed (outside CI; in CI it fails instead) and where
`tritonclient[http]` is missing.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from export.triton import python_backend_config
from runtime.digests import config_digests
from runtime.io import read_scan
from runtime.manifest import load_manifest
from runtime.predict import load_model, predict_scan
from runtime.errors import InputError
from runtime.triton import LABELS, PROBABILITIES, predict_arrays
from runtime.triton.server import TritonInstall, find_triton, server_environment, stop_server
from tests.conftest import DEMO, REPO, missing
from tests.modelkit import blob_volume, write_scan
from tests.tritonkit import free_ports

REQUEST_BUDGET = "64M"
NAME = DEMO.name
READY_TIMEOUT_S = 90
STOP_TIMEOUT_S = 20
SPACING_ZYX = (2.5, 1.25, 1.0)  # exact in float32, so the request's FP32 SPACING loses nothing


def _find_triton(work: Path) -> TritonInstall | None:
    try:
        return find_triton(work)
    except InputError:
        return None


def _model_repository(work: Path) -> Path:
    """A copy of the demo model folder on the CPU device, its version digest recorded and a memory budget
    per request, with the working tree's runtime beside it.

    The model folder is on the backend's sys.path (after site-packages), so `import runtime`
    finds this tree's package where no installed one exists.
    """
    repo = work / "models"
    model = repo / NAME
    shutil.copytree(DEMO, model)
    manifest, _ = load_manifest(model)
    config = python_backend_config(manifest, device="cpu", digests=config_digests(DEMO))
    budget = f'parameters: {{\n  key: "max_memory"\n  value: {{ string_value: "{REQUEST_BUDGET}" }}\n}}\n'
    (model / "config.pbtxt").write_text(config + budget)
    (model / "runtime").symlink_to(REPO / "runtime", target_is_directory=True)
    return repo


def _log_tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _wait_ready(client: object, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"tritonserver exited with {process.returncode}:\n{_log_tail(log)}")
        try:
            if client.is_server_ready() and client.is_model_ready(NAME):
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.2)
    pytest.fail(f"tritonserver not ready within {READY_TIMEOUT_S} s:\n{_log_tail(log)}")


@dataclass(frozen=True)
class Server:
    client: object
    process: subprocess.Popen
    log: Path
    metrics_port: int


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("triton")
    install = _find_triton(work)
    if install is None:
        missing("tritonserver is not installed: pip install --no-deps nvidia-pytriton, or set TRITONSERVER")
    if importlib.util.find_spec("tritonclient") is None:
        missing("tritonclient is not installed: pip install 'tritonclient[http]'")
    import tritonclient.http as http

    http_port, grpc_port, metrics_port = free_ports(3)
    command = [
        str(install.binary), f"--model-repository={_model_repository(work)}",
        "--http-address=127.0.0.1", f"--http-port={http_port}", "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc_port}", "--metrics-address=127.0.0.1", f"--metrics-port={metrics_port}",
        "--allow-gpu-metrics=false", "--exit-on-error=true", "--strict-readiness=true", "--exit-timeout-secs=5",
    ]
    if install.backends is not None:
        command.append(f"--backend-directory={install.backends}")
    log = work / "tritonserver.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=server_environment(install),
                                   start_new_session=True)
    client = http.InferenceServerClient(f"127.0.0.1:{http_port}", network_timeout=120.0)
    try:
        _wait_ready(client, process, log)
        yield Server(client=client, process=process, log=log, metrics_port=metrics_port)
    finally:
        client.close()
        stop_server(process, STOP_TIMEOUT_S)


def _infer(server: Server, image: np.ndarray, spacing_zyx: np.ndarray | None = None, **grid: object) -> object:
    import tritonclient.http as http

    inputs = []
    named = [("IMAGE", image), ("SPACING", spacing_zyx), *((key.upper(), np.asarray(v)) for key, v in grid.items())]
    for name, array in named:
        if array is not None:
            tensor = http.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.float32), binary_data=True)
            inputs.append(tensor)
    return server.client.infer(NAME, inputs)


@pytest.fixture(scope="module")
def local():
    return load_model(DEMO, device="cpu")


def _check_same(result: object, expected_labels: np.ndarray, expected_probabilities: np.ndarray) -> None:
    labels, probabilities = result.as_numpy("LABELS"), result.as_numpy("PROBABILITIES")
    assert labels.dtype == np.uint8 and probabilities.dtype == np.float32
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_allclose(probabilities, expected_probabilities, rtol=0, atol=1e-6)


def test_served_prediction_equals_the_runtime(server, local, tmp_path):
    array = blob_volume((20, 40, 36))
    path = write_scan(tmp_path / "scan.nii.gz", array, spacing_xyz=tuple(reversed(SPACING_ZYX)))
    expected = predict_scan(local, read_scan([path]))
    result = _infer(server, array[np.newaxis], np.array(SPACING_ZYX))
    _check_same(result, expected.labels_zyx, expected.probabilities_zyx)
    assert 0 < np.count_nonzero(expected.labels_zyx) < array.size / 4


def test_served_prediction_of_a_real_scan(server, local, data_dir):
    scan = read_scan([data_dir / "radiology" / "pyradiomics_breast1_image.nrrd"])
    spacing = np.array(scan.spacing_zyx, dtype=np.float32)  # what an FP32 SPACING carries
    expected = predict_scan(local, replace(scan, spacing_zyx=tuple(float(s) for s in spacing)))
    _check_same(_infer(server, scan.array_zyx, spacing), expected.labels_zyx, expected.probabilities_zyx)
    assert np.count_nonzero(expected.labels_zyx) > 100


def test_bad_requests_fail_alone_and_the_model_keeps_serving(server, local):
    from tritonclient.utils import InferenceServerException

    image = blob_volume((16, 24, 24))[np.newaxis]
    with_nan = image.copy()
    with_nan[0, 5, 5, 5] = np.nan
    bad = [(with_nan, None, "IMAGE holds 1 NaN or infinite voxel"),
           (np.zeros_like(image), None, "every voxel is 0"),
           (image, np.array([1.0, -1.0, 1.0]), "SPACING must be finite numbers of mm"),
           (image, np.array([1e30, 1.0, 1.0]), "SPACING must be finite numbers of mm"),
           (image, np.array([60.0, 45.0, 45.0]), "27000 times as many; the runtime enlarges a scan at most 64 times"),
           (np.ones((2, 8, 8, 8), np.float32), None, "unexpected shape for input 'IMAGE'"),
           (image, None, "no SPACING input, and model demo_bright_structures resamples to mm"),
           (blob_volume((96, 160, 160))[np.newaxis], np.ones(3), "more than the memory budget of 67.1 MB")]
    for array, spacing, message in bad:
        with pytest.raises(InferenceServerException, match=message) as caught:
            _infer(server, array, spacing)
        assert "400" in str(caught.value.status())
    one_mm = np.ones(3, dtype=np.float32)
    expected = predict_arrays(local, image, one_mm)
    _check_same(_infer(server, image, one_mm), expected[LABELS], expected[PROBABILITIES])
    assert server.process.poll() is None and server.client.is_model_ready(NAME)
    counted = _refused(server)                # the model's refusals; Triton refused the wrong shape itself
    assert counted == {"invalid_arg": len(bad) - 1, "internal": 0}, counted


def _refused(server: Server) -> dict[str, float]:
    """medflow_requests_refused of the served model, by code, from the server's metrics."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("medflow_requests_refused{") and f'model="{NAME}"' in line:
            code = line.split('code="')[1].split('"')[0]
            found[code] = found.get(code, 0) + float(line.rsplit(" ", 1)[1])
    return found


def test_an_encoded_scan_is_served_on_its_own_grid(server, local, tmp_path):
    import tritonclient.http as http

    path = write_scan(tmp_path / "scan.nii.gz", blob_volume((20, 40, 36)), spacing_xyz=(1.0, 1.25, 2.5),
                      direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0), origin=(10.0, -20.0, 5.0))
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    tensor = http.InferInput("SCAN", [data.size], "UINT8")
    tensor.set_data_from_numpy(data, binary_data=True)
    result = server.client.infer(NAME, [tensor])
    expected = predict_scan(local, read_scan([path]))
    _check_same(result, expected.labels_zyx, expected.probabilities_zyx)
    np.testing.assert_array_equal(result.as_numpy("ORIGIN"), [10.0, -20.0, 5.0])      # the file's grid comes back
    np.testing.assert_array_equal(result.as_numpy("DIRECTION"), [0, 1, 0, -1, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(result.as_numpy("SPACING"), [2.5, 1.25, 1.0])


def test_origin_and_direction_sent_with_an_image_come_back_with_its_outputs(server, local, tmp_path):
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    array = blob_volume((20, 40, 36))
    path = write_scan(tmp_path / "scan.nii.gz", array, spacing_xyz=tuple(reversed(SPACING_ZYX)), direction=direction,
                      origin=(10.0, -20.0, 5.0))
    expected = predict_scan(local, read_scan([path]))
    result = _infer(server, array[np.newaxis], np.array(SPACING_ZYX), origin=(10.0, -20.0, 5.0), direction=direction)
    _check_same(result, expected.labels_zyx, expected.probabilities_zyx)
    np.testing.assert_array_equal(result.as_numpy("ORIGIN"), [10.0, -20.0, 5.0])
    np.testing.assert_array_equal(result.as_numpy("DIRECTION"), direction)
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="DIRECTION must be an orthonormal matrix"):
        _infer(server, array[np.newaxis], np.array(SPACING_ZYX), direction=np.ones(9))


def test_the_server_log_holds_no_traceback(server):
    """Run last: every request above, good or bad, was answered without a Python traceback in the
    server's log (the backend's DLPack handover used to print one per output)."""
    text = server.log.read_text(errors="replace")
    assert "Traceback" not in text and "PyCapsule_GetPointer" not in text, _log_tail(server.log)
