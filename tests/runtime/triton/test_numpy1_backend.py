"""The Triton backend with numpy 1.26 in its environment: `runtime serve` run from `.venv-numpy1`
(made by the README's test command), answers equal to this environment's, and no traceback."""
from __future__ import annotations

import signal
import subprocess

import numpy as np

from runtime.predict import load_model
from runtime.triton import LABELS, PROBABILITIES, predict_arrays
from tests.conftest import REPO, missing
from tests.modelkit import blob_volume
from tests.tritonkit import free_ports, kill, need_triton, read_until, start_serve

ENVIRONMENT = REPO / ".venv-numpy1"


def test_the_backend_serves_with_numpy_1(tmp_path):
    need_triton("http")
    python = ENVIRONMENT / "bin" / "python"
    if not python.is_file():
        missing(f"{ENVIRONMENT} is missing: python3 -m venv .venv-numpy1 && .venv-numpy1/bin/pip install "
                "numpy==1.26.4 -e . && .venv-numpy1/bin/pip install --no-deps nvidia-pytriton==0.7.0")
    version = subprocess.run([str(python), "-c", "import numpy; print(numpy.__version__)"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert version.startswith("1."), version
    import tritonclient.http as http

    ports = free_ports(3)
    log = tmp_path / "tritonserver.log"
    process = start_serve(REPO / "model_repository", ports, "--log", str(log), python=str(python))
    try:
        read_until(process, "ready:")
        image = blob_volume((20, 40, 36))[np.newaxis]
        spacing = np.array([2.5, 1.25, 1.0], np.float32)
        client = http.InferenceServerClient(f"127.0.0.1:{ports[0]}", network_timeout=120.0)
        for _ in range(20):
            inputs = []
            for name, value in (("IMAGE", image), ("SPACING", spacing)):
                tensor = http.InferInput(name, list(value.shape), "FP32")
                tensor.set_data_from_numpy(np.ascontiguousarray(value, dtype=np.float32), binary_data=True)
                inputs.append(tensor)
            result = client.infer("demo_bright_structures", inputs)
        client.close()
        local = predict_arrays(load_model(REPO / "model_repository" / "demo_bright_structures", device="cpu"),
                               image, spacing)
        np.testing.assert_array_equal(result.as_numpy(LABELS), local[LABELS])
        np.testing.assert_allclose(result.as_numpy(PROBABILITIES), local[PROBABILITIES], atol=1e-5)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
        text = log.read_text(errors="replace")
        assert "Traceback" not in text and "not healthy" not in text, text[-2000:]
    finally:
        kill(process)
