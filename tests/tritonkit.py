"""Helpers for tests that start a real Triton Inference Server on 127.0.0.1."""
from __future__ import annotations

import importlib.util
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, missing

READY_TIMEOUT_S = 120


def model_config_pb2():
    """Triton's ModelConfig protobuf from tritonclient, loaded without its grpc package import."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        missing("tritonclient is not installed; its ModelConfig protobuf parses the configs")
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def served_bone(repository: Path, name: str = "bone") -> Path:
    """A bone segmentation (CT numbers / 100 through the demo's filter: bone, above about 300 HU, is
    class 1) built by export into `repository`, config.pbtxt included, as `runtime serve` serves it;
    its model folder."""
    import yaml

    from export import graphs
    from export.package import build_from_onnx
    from export.spec import parse_spec

    spec = yaml.safe_load((REPO / "export" / "demo_spec.yaml").read_text(encoding="utf-8"))
    spec.update(name=name, classes={0: "background", 1: "bone"},
                preprocessing=[{"normalize": {"mean": [0], "std": [100]}}])
    onnx_path = graphs.save(graphs.bright_structures(3), repository / f"{name}.onnx")
    build_from_onnx(onnx_path, parse_spec(spec, f"{name} spec"), repository)
    onnx_path.unlink()
    return repository / name


def free_ports(count: int) -> list[int]:
    """`count` ports of 127.0.0.1 nothing listens on (bound by the OS, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def need_triton(*protocols: str) -> None:
    """Stop the test where no tritonserver or tritonclient of `protocols` is installed."""
    if importlib.util.find_spec("pytriton") is None and not os.environ.get("TRITONSERVER"):
        missing("tritonserver is not installed: pip install --no-deps nvidia-pytriton, or set TRITONSERVER")
    for protocol in protocols:
        try:
            importlib.import_module(f"tritonclient.{protocol}")
        except (ImportError, RuntimeError):
            missing(f"tritonclient[{protocol}] is not installed: pip install 'tritonclient[http,grpc]'")


def start_serve(repository: Path, ports: list[int], *options: str,
                python: str = sys.executable) -> subprocess.Popen:
    """`runtime serve repository [options]` on 127.0.0.1 at (http, grpc, metrics) ports, as a new
    process of the interpreter `python` (its environment is the server backend's)."""
    return subprocess.Popen(
        [python, "-c", "from runtime.commands.cli import main; main()", "serve", str(repository),
         "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


# Bytes read from a process's stdout past the line read_until looked for, kept for its next call.
_UNREAD: dict[int, bytes] = {}


def read_until(process: subprocess.Popen, marker: str, timeout: float = READY_TIMEOUT_S) -> str:
    """stdout of `process` up to the line holding `marker`; fails with what it printed otherwise.

    The pipe is read through its file descriptor, not the buffered text stream: a line the stream
    had read ahead would wait in its buffer, unseen by the selector, until the process printed
    again."""
    fd = process.stdout.fileno()
    pending, seen = _UNREAD.pop(process.pid, b""), []
    deadline = time.monotonic() + timeout
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    try:
        while True:
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                seen.append(line.decode("utf-8", "replace") + "\n")
                if marker in seen[-1]:
                    _UNREAD[process.pid] = pending
                    return "".join(seen)
            if time.monotonic() >= deadline:
                break
            if selector.select(timeout=1.0):
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                pending += chunk
            elif process.poll() is not None:
                break
    finally:
        selector.close()
    pytest.fail(f"the process did not print {marker!r}:\n{''.join(seen)}{pending.decode('utf-8', 'replace')}")


def crash_server(serve: subprocess.Popen) -> None:
    """SIGKILL the tritonserver that `runtime serve` (`serve`) started, as a crash would end it (a
    SIGTERM would let it finish the requests that keep coming), and wait for `runtime serve` to
    exit with it."""
    children = Path(f"/proc/{serve.pid}/task/{serve.pid}/children").read_text().split()
    servers = [int(pid) for pid in children if "tritonserver" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()]
    assert len(servers) == 1, children
    os.kill(servers[0], signal.SIGKILL)
    serve.wait(timeout=60)
    printed = rest_of(serve)
    kept = re.search(r"its log \((\S+)/tritonserver\.log\)", printed)
    assert kept and Path(kept.group(1)).name.startswith("medflow-serve-"), printed
    shutil.rmtree(kept.group(1))          # the scratch folder runtime serve keeps, with its log, after a failure


def rest_of(process: subprocess.Popen) -> str:
    """What an ended process printed past what read_until took."""
    return (_UNREAD.pop(process.pid, b"") + process.stdout.buffer.read()).decode("utf-8", "replace")


def kill(process: subprocess.Popen, timeout: float = 60.0) -> None:
    """End a `runtime serve` this test started, and with it the server it started: SIGTERM and a
    wait (it stops its server), SIGKILL where it hangs (its server then gets SIGTERM from the
    kernel, as its parent died)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
