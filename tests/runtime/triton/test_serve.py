"""`runtime serve`: a real Triton Inference Server on 127.0.0.1 started, answering, and stopped by
SIGTERM; and what it refuses before starting one."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.predict import load_model, predict_scan
from runtime.triton.server import check_models
from tests.conftest import REPO
from tests.modelkit import blob_volume, run_failing, write_scan
from tests.tritonkit import free_ports, kill, need_triton, read_until, rest_of, start_serve


def test_serve_answers_as_the_runtime_does_and_stops_on_sigterm(tmp_path):
    need_triton("http")
    import tritonclient.http as http

    http_port, grpc_port, metrics_port = free_ports(3)
    process = start_serve(REPO / "model_repository", [http_port, grpc_port, metrics_port])
    try:
        printed = read_until(process, "ready:")
        assert f"HTTP http://127.0.0.1:{http_port}" in printed and "demo_bright_structures" in printed
        image = blob_volume((20, 40, 36))
        spacing = np.array([2.5, 1.25, 1.0], np.float32)
        tensors = []
        for name, array in (("IMAGE", image[np.newaxis]), ("SPACING", spacing)):
            tensor = http.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.float32), binary_data=True)
            tensors.append(tensor)
        client = http.InferenceServerClient(f"127.0.0.1:{http_port}", network_timeout=120.0)
        result = client.infer("demo_bright_structures", tensors)
        client.close()
        local = load_model(REPO / "model_repository" / "demo_bright_structures", device="cpu")
        from runtime.io import read_scan

        expected = predict_scan(local, read_scan([write_scan(tmp_path / "s.nii.gz", image, (1.0, 1.25, 2.5))]))
        np.testing.assert_array_equal(result.as_numpy("LABELS"), expected.labels_zyx)
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
        assert process.returncode == 0, rest
        assert "stopped" in rest
        with socket.socket() as probe:                      # the server went with it
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", http_port))
    finally:
        kill(process)


def test_a_version_that_fails_to_load_under_poll_and_a_config_edit_triton_cannot_read_are_said_once(tmp_path):
    """And an instance loaded again after a config edit counts refused requests, and the server
    stops cleanly after (the new instance once shared the freed counter of the one it replaced)."""
    need_triton("http")
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    model = tmp_path / "models" / "demo_bright_structures"
    shutil.copytree(REPO / "model_repository" / "demo_bright_structures", model)
    ports = free_ports(3)
    log = tmp_path / "tritonserver.log"
    process = start_serve(tmp_path / "models", ports, "--poll", "1", "--log", str(log))
    try:
        read_until(process, "ready:")
        shutil.copytree(model / "1", model / "2")            # its manifest says version 1: refused at its load
        printed = read_until(process, "warning: tritonserver: failed to load 'demo_bright_structures' version 2")
        config = model / "config.pbtxt"
        text = config.read_text()
        config.write_text(text.replace("count: 1", "cout: 1"))
        printed += read_until(process, 'no field named "cout"')
        time.sleep(4)                                         # four more looks, failing alike
        shutil.rmtree(model / "2")
        config.write_text(text.replace("count: 1", "count: 2"))            # mended: version 1 loaded again
        client = http.InferenceServerClient(f"127.0.0.1:{ports[0]}", network_timeout=60.0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and '"count":2' not in json.dumps(
                client.get_model_config("demo_bright_structures")).replace(" ", ""):
            time.sleep(0.5)
        image = http.InferInput("IMAGE", [1, 8, 8, 8], "FP32")
        image.set_data_from_numpy(np.full((1, 8, 8, 8), np.nan, np.float32), binary_data=True)
        for _ in range(6):                                    # to both instances
            with pytest.raises(InferenceServerException, match="NaN"):
                client.infer("demo_bright_structures", [image], model_version="1")
        client.close()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        kill(process)
    rest = rest_of(process)
    printed += rest
    assert process.returncode == 0 and rest.rstrip().endswith("stopped"), rest
    ended = log.read_text(errors="replace")
    assert not re.search(r"Signal \((6|11)\)|tcache|double free|corrupted", ended), ended[-3000:]
    assert printed.count("failed to load 'demo_bright_structures' version 2") == 1, printed
    assert printed.count('no field named "cout"') == 1, printed
    assert "version is 1, but it lies in the version folder 2/" in printed
    assert "/v2/health/ready answers 400 until version 2 itself loads (its folder mended in place) or the server " \
        "restarts" in printed
    assert "Failed to create instance" not in printed                      # its failed-load line says it all
    assert "Traceback" not in printed and "At:" not in printed and "CudaDriverHelper" not in printed


def test_a_server_that_fails_as_it_stops_is_said_and_its_log_kept(tmp_path):
    need_triton("http")
    process = start_serve(REPO / "model_repository", free_ports(3))
    try:
        read_until(process, "ready:")
        [server] = [int(pid) for pid in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
                    if "tritonserver" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()]    # not its watchdog
        process.send_signal(signal.SIGTERM)
        read_until(process, "stopping ...")
        time.sleep(0.3)                                       # the server is unloading its models
        os.kill(server, signal.SIGABRT)
        process.wait(timeout=60)
    finally:
        kill(process)
    rest = rest_of(process)
    said = re.search(r"warning: tritonserver ended with (.*) as it stopped; its log \((\S+), kept\) says", rest)
    assert process.returncode == 0 and said and rest.rstrip().endswith("stopped"), rest
    assert said.group(1) == "signal 6 (SIGABRT)" and rest.count("Signal (") == 1 and "Signal (6)" in rest
    assert Path(said.group(2)).is_file()
    shutil.rmtree(Path(said.group(2)).parent)


def test_a_stopped_servers_log_is_summed_up_by_its_last_words_not_an_error_of_hours_before(tmp_path):
    from runtime.triton.server import log_tail

    old = ('E1207 05:28:35.281516 4242 model_lifecycle.cc:642] "failed to load \'liver\' version 2: Internal: '
           'ManifestError: bad\\n\\nAt:\\n  model.py(101): initialize\\n"')
    info = [f'I1207 06:{i:02d}:00.000000 4242 server.cc:1] "polling"' for i in range(60)]
    log = tmp_path / "tritonserver.log"
    log.write_text("\n".join([old, *info]) + "\n")
    assert log_tail(log) == " | ".join(line.strip() for line in info[-3:])          # killed: nothing said
    log.write_text("\n".join([*info, old, "I1207 07:00:00.0 4242 server.cc:336] \"All models are stopped\""]) + "\n")
    assert log_tail(log) == "failed to load 'liver' version 2: Internal: ManifestError: bad"
    loaded = 'I1207 06:30:00.000000 4242 model_lifecycle.cc:839] "successfully loaded \'liver\'"'
    log.write_text("\n".join([old, loaded, *info[:5]]) + "\n")               # mended, then killed
    assert log_tail(log, since_loaded=True) == " | ".join(line.strip() for line in info[2:5])
    assert log_tail(log).startswith("failed to load 'liver' version 2")         # at a start: every error
    log.write_text("\n".join([*info, "terminate called after throwing an instance of 'std::bad_alloc'",
                              "  what():  std::bad_alloc", "Signal (6) received.", " 0# 0x000055 in tritonserver"]))
    assert log_tail(log) == "terminate called after throwing an instance of 'std::bad_alloc' | what():  std::bad_alloc"


def test_serve_refuses_a_busy_port_an_empty_repository_a_version_folder_shared_ports_and_a_foreign_address(
        tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        others = free_ports(2)
        run_failing(["serve", str(REPO / "model_repository"), "--http-port", str(port), "--grpc-port", str(others[0]),
                     "--metrics-port", str(others[1])], f"127.0.0.1:{port} (--http-port) is not free")
    (tmp_path / "empty").mkdir()
    run_failing(["serve", str(tmp_path / "empty")], "holds no model folder with a config.pbtxt")
    run_failing(["serve", str(REPO / "model_repository"), "--http-port", "9000", "--grpc-port", "9000"],
                "three different ports")
    demo = REPO / "model_repository" / "demo_bright_structures"
    run_failing(["serve", str(demo / "1")], "is a version folder of model demo_bright_structures",
                f"give the folder that holds the model: {REPO / 'model_repository'}")
    for address in ("999.1.1.1", "192.0.2.7"):                    # no address at all; none of this machine's
        run_failing(["serve", str(REPO / "model_repository"), "--address", address, "--http-port", str(others[0]),
                     "--grpc-port", str(others[1]), "--metrics-port", str(port)],
                    f"--address {address} cannot be listened on", "give an address of this machine")


def test_serve_names_a_broken_model_before_starting_the_server(tmp_path):
    """Each breakage the server would only report as "failed to load all models", up its log, is
    refused first in one line naming the model."""
    import json

    def repository(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(REPO / "model_repository" / "demo_bright_structures", folder / "demo_bright_structures",
                        ignore=shutil.ignore_patterns("__pycache__"))
        return folder

    model = repository("syntax") / "demo_bright_structures"
    config = model / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 0", "max_batch_size: 0 {{{", 1))
    run_failing(["serve", str(tmp_path / "syntax")], f"{config} line ", "is never closed")
    model = repository("renamed") / "demo_bright_structures"
    (model / "config.pbtxt").write_text((model / "config.pbtxt").read_text().replace(
        'name: "demo_bright_structures"', 'name: "other"', 1))
    run_failing(["serve", str(tmp_path / "renamed")], "names the model 'other', but its folder is "
                "'demo_bright_structures'")
    model = repository("json") / "demo_bright_structures"
    (model / "1" / "manifest.json").write_text("{ not json")
    run_failing(["serve", str(tmp_path / "json")], "manifest.json")
    model = repository("gone") / "demo_bright_structures"
    (model / "1" / "manifest.json").unlink()
    run_failing(["serve", str(tmp_path / "gone")], f"{model / '1'} holds no manifest.json")
    shutil.rmtree(model / "1")
    run_failing(["serve", str(tmp_path / "gone")], "holds no version folder")
    model = repository("edited") / "demo_bright_structures"
    manifest = json.loads((model / "1" / "manifest.json").read_text())
    manifest["provenance"] = {**manifest.get("provenance", {}), "note": "edited"}
    (model / "1" / "manifest.json").write_text(json.dumps(manifest))
    run_failing(["serve", str(tmp_path / "edited")], "its manifest.json or that record was changed after export")
    shutil.copytree(REPO / "model_repository" / "demo_bright_structures" / "1", model / "2")
    manifest = json.loads((model / "2" / "manifest.json").read_text())
    (model / "2" / "manifest.json").write_text(json.dumps({**manifest, "version": 2}))   # a new version, unpinned
    config = model / "config.pbtxt"
    config.write_text(config.read_text().replace("num_versions: 2", "num_versions: 1"))
    said = check_models(tmp_path / "edited", ["demo_bright_structures"])     # the edited version 1 is served no more
    assert said == [f"version 2 of model demo_bright_structures is not recorded in {config} (which records version(s) "
                    "1): it is served unpinned. An export records each version it builds; this one was copied or added "
                    "by hand, or its export stopped before it recorded it. Build it with `python -m export build` to "
                    "serve it pinned."]
    config.write_text(config.read_text().replace("latest: { num_versions: 1 }", "specific: { versions: [7] }"))
    run_failing(["serve", str(tmp_path / "edited")], "its version_policy serves none of the versions", "(1, 2)")
    run_failing(["serve", str(REPO / "model_repository" / "demo_bright_structures")],
                "is a model folder (it holds a config.pbtxt), not a model repository; give the folder that holds it")


def test_a_killed_serve_takes_its_server_with_it_and_a_bad_log_path_is_refused(tmp_path):
    import os
    import time

    need_triton("http")
    ports = free_ports(3)
    process = start_serve(REPO / "model_repository", ports)
    scratch = None
    try:
        printed = read_until(process, "ready:")
        scratch = Path(printed.split("(log: ", 1)[1].split(")", 1)[0]).parent
        os.kill(process.pid, signal.SIGKILL)                  # no chance to stop its server itself
        process.wait()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", ports[0]))
                    break
                except OSError:
                    time.sleep(0.5)
        else:
            raise AssertionError("the server outlived the runtime serve that started it")
    finally:
        kill(process)
        if scratch is not None and scratch.name.startswith("medflow-serve-"):
            shutil.rmtree(scratch, ignore_errors=True)      # a killed serve cannot remove its own
    fresh = free_ports(3)
    run_failing(["serve", str(REPO / "model_repository"), "--log", str(tmp_path / "missing" / "x.log"),
                 "--http-port", str(fresh[0]), "--grpc-port", str(fresh[1]), "--metrics-port", str(fresh[2])],
                "--log", "cannot be written")


@pytest.mark.parametrize("text, problem", [
    ('backend: "python"\ninput [ { name: "INPUT0" dims: [ 1 ] } ]\n', None),             # no top-level name
    ('input [ { name: "INPUT0" } ]\nname: "m"\n', None),                                 # the name after a block
    ('name: "m"\nparameters { key: "p" value { string_value: "C:\\\\models\\\\" } }\n', None),   # escaped backslashes
    ("name: 'm'\nparameters { key: 'a\"b' value { string_value: '{[' } }\n", None),       # single quotes
    ('# a { comment [\nname: "m" # trailing {\n', None),
    ('name: "m"\nmax_batch_size: 0 {{{\n', "line 2: '{' is never closed"),
    ('name: "m"\n]\n', "line 2: ']' closes nothing it opened"),
    ('name: "m\n', "line 1: a quoted string does not end on its line"),
    ('name: "other"\n', "names the model 'other', but its folder is 'm'"),
])
def test_a_config_pbtxt_is_read_as_protobuf_text(tmp_path, text, problem):
    from runtime.errors import InputError
    from runtime.triton.server import _check_config_text

    path = tmp_path / "config.pbtxt"
    path.write_text(text)
    if problem is None:
        _check_config_text(path, "m")
    else:
        with pytest.raises(InputError, match=re.escape(problem)):
            _check_config_text(path, "m")


def test_a_plain_onnx_companion_passes_the_checks_and_is_refused_by_a_server_without_its_backend(tmp_path):
    from export.triton import write_onnx_model
    from runtime.manifest import load_manifest
    from runtime.triton.server import check_models, check_repository

    repository = tmp_path / "repository"
    shutil.copytree(REPO / "model_repository" / "demo_bright_structures", repository / "demo_bright_structures",
                    ignore=shutil.ignore_patterns("__pycache__"))
    manifest, version = load_manifest(repository / "demo_bright_structures")
    write_onnx_model(repository, manifest, version)
    names = check_repository(repository)
    assert names == ["demo_bright_structures", "demo_bright_structures_onnx"]
    check_models(repository, names)
    need_triton()                               # the wheel's server has the Python backend alone
    ports = [str(port) for port in free_ports(3)]
    run_failing(["serve", str(repository), "--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port",
                 ports[2]], "model demo_bright_structures_onnx runs on Triton's onnxruntime backend, which this "
                            "tritonserver", "does not have (its backends: python)", "the server would exit")


def test_a_dead_model_stub_is_named_by_the_stub_check_and_stops_serve_for_its_restart(tmp_path):
    """A Python-backend stub killed as the OOM killer kills it leaves Triton answering ready while
    every request to its model fails. `python -m runtime.triton.stubs` says so (exit status 1),
    and runtime serve stops the server, whose endpoints go (a readiness probe fails at once), and
    exits non-zero, for what runs it to start it again."""
    import os
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    need_triton("http")
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    from runtime.triton.stubs import STUB, processes

    repository = tmp_path / "repository"
    shutil.copytree(REPO / "model_repository" / "demo_bright_structures", repository / "demo_bright_structures",
                    ignore=shutil.ignore_patterns("__pycache__"))
    ports = free_ports(3)
    process = start_serve(repository, ports)
    printed = ""
    try:
        printed = read_until(process, "ready:")
        [server] = [p.pid for p in processes() if p.parent == process.pid and p.name == "tritonserver"]
        [stub] = [p.pid for p in processes() if p.parent == server and p.name == STUB]
        regions = list(Path("/dev/shm").glob(f"medflow_serve_{process.pid}_*"))
        assert regions, "the server's shared-memory regions are named after the serve that started it"
        check = [sys.executable, "-m", "runtime.triton.stubs", str(server)]
        assert subprocess.run(check, capture_output=True, text=True).returncode == 0
        os.kill(stub, signal.SIGKILL)
        request = http.InferInput("MANIFEST", [1], "UINT8")
        request.set_data_from_numpy(np.zeros(1, np.uint8))
        with pytest.raises(InferenceServerException, match="is not healthy"):
            http.InferenceServerClient(f"127.0.0.1:{ports[0]}").infer("demo_bright_structures", [request])
        found = subprocess.run(check, capture_output=True, text=True)
        assert found.returncode == 1, found.stdout + found.stderr
        assert found.stdout.startswith(f"error: a Python-backend stub (process {stub};"), found.stdout
        printed += read_until(process, "stopping the server", timeout=15)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:                   # the readiness endpoint goes with the server
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/health/ready", timeout=1).close()
            except (urllib.error.URLError, OSError):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the server still answers ready after its stub died")
        rest, _ = process.communicate(timeout=60)
        printed += rest
    finally:
        kill(process)
        kept = re.search(r"its log \((\S+)/tritonserver\.log\)", printed)
        if kept and Path(kept.group(1)).name.startswith("medflow-serve-"):
            shutil.rmtree(kept.group(1))             # the scratch folder serve keeps, with its log, after a failure
    assert process.returncode == 1, printed
    assert not [region for region in regions if region.exists()], "a stopped server's regions are left in /dev/shm"
    assert f"the Python-backend stub of model demo_bright_structures version 1 (process {stub}) died" in printed
    assert "\nerror: tritonserver was stopped because the Python-backend stub of model demo_bright_structures" \
        in printed, printed
