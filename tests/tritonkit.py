"""Helpers for tests that start a real Triton Inference Server on 127.0.0.1."""
from __future__ import annotations

import importlib.util
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import missing

READY_TIMEOUT_S = 120


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


def read_until(process: subprocess.Popen, marker: str, timeout: float = READY_TIMEOUT_S) -> str:
    """stdout of `process` up to the line holding `marker`; fails with what it printed otherwise."""
    seen, deadline = [], time.monotonic() + timeout
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    while time.monotonic() < deadline:
        if selector.select(timeout=1.0):
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
            if marker in line:
                return "".join(seen)
        elif process.poll() is not None:
            break
    pytest.fail(f"runtime serve did not print {marker!r}:\n{''.join(seen)}")


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
