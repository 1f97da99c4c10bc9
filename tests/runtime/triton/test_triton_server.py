"""A real Triton Inference Server serving the demo model folder through runtime/triton/model.py.

The server is `tritonserver` from `$TRITONSERVER`, else the one the `nvidia-pytriton` wheel ships
(with its Python-backend stub for this interpreter's Python version), else the one on PATH. The
test skips only where none is installed (outside CI; in CI it fails instead) and where
`tritonclient[http]` is missing.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
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
from runtime.triton import LABELS, PROBABILITIES, predict_arrays
from tests.conftest import DEMO, REPO, missing
from tests.modelkit import blob_volume, write_scan

REQUEST_BUDGET = "64M"
NAME = DEMO.name
READY_TIMEOUT_S = 90
STOP_TIMEOUT_S = 20
SPACING_ZYX = (2.5, 1.25, 1.0)  # exact in float32, so the request's FP32 SPACING loses nothing


@dataclass(frozen=True)
class TritonInstall:
    """A tritonserver binary, the backend folder to pass it (None: its own) and libraries it needs."""

    binary: Path
    backends: Path | None
    library_path: tuple[str, ...]


def _pytriton_install(work: Path) -> TritonInstall | None:
    """The server in the nvidia-pytriton wheel, with a backend folder holding this Python's stub.

    The wheel keeps one Python-backend stub per Python version beside the backend; the backend
    looks for its stub in its own folder, so a folder of links puts the right one there.
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(spec.submodule_search_locations[0]) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        pytest.fail(f"nvidia-pytriton at {root} has no Python-backend stub for Python {version}")
    python = work / "backends" / "python"
    python.mkdir(parents=True)
    for source in (root / "backends" / "python" / "libtriton_python.so",
                   root / "backends" / "python" / "triton_python_backend_utils.py", stub):
        (python / source.name).symlink_to(source)
    libs = str(root.parents[1] / "nvidia_pytriton.libs")
    return TritonInstall(binary=root / "bin" / "tritonserver", backends=python.parent, library_path=(libs,))


def _find_triton(work: Path) -> TritonInstall | None:
    explicit = os.environ.get("TRITONSERVER")
    if explicit:
        return TritonInstall(binary=Path(explicit), backends=None, library_path=())
    found = _pytriton_install(work)
    if found is not None:
        return found
    on_path = shutil.which("tritonserver")
    return None if on_path is None else TritonInstall(binary=Path(on_path), backends=None, library_path=())


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _server_env(install: TritonInstall) -> dict[str, str]:
    """The environment under which the backend's embedded Python sees this interpreter's packages.

    The stub runs Python in isolated mode (PYTHONPATH is ignored) and takes its prefix from the
    `python3` it finds on PATH: this interpreter's folder first makes it read this environment's
    site-packages (a venv's pyvenv.cfg included). LD_LIBRARY_PATH points the stub at this
    interpreter's libpython and at the libraries the wheel ships.
    """
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    paths = [*install.library_path, libdir, env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in paths if p)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


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


def _stop(process: subprocess.Popen) -> None:
    """Terminate the server by its PID; kill its process group if it does not stop in time."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass(frozen=True)
class Server:
    client: object
    process: subprocess.Popen
    log: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("triton")
    install = _find_triton(work)
    if install is None:
        missing("tritonserver is not installed: pip install --no-deps nvidia-pytriton, or set TRITONSERVER")
    if importlib.util.find_spec("tritonclient") is None:
        missing("tritonclient is not installed: pip install 'tritonclient[http]'")
    import tritonclient.http as http

    http_port, grpc_port, metrics_port = _free_ports(3)
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
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_server_env(install),
                                   start_new_session=True)
    client = http.InferenceServerClient(f"127.0.0.1:{http_port}", network_timeout=120.0)
    try:
        _wait_ready(client, process, log)
        yield Server(client=client, process=process, log=log)
    finally:
        client.close()
        _stop(process)


def _infer(server: Server, image: np.ndarray, spacing_zyx: np.ndarray | None = None) -> object:
    import tritonclient.http as http

    inputs = []
    for name, array in (("IMAGE", image), ("SPACING", spacing_zyx)):
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


def test_the_server_log_holds_no_traceback(server):
    """Run last: every request above, good or bad, was answered without a Python traceback in the
    server's log (the backend's DLPack handover used to print one per output)."""
    text = server.log.read_text(errors="replace")
    assert "Traceback" not in text and "PyCapsule_GetPointer" not in text, _log_tail(server.log)
