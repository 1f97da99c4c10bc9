"""The watchdog `runtime serve` starts beside its server: when serve ends without stopping the
server, the server is ended, by SIGKILL where SIGTERM is not enough, and its shared-memory regions
removed; a server that ended first is left alone."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO

# A process that ignores SIGTERM and writes a region, as a server hung in its own shutdown does.
STUBBORN = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "open(sys.argv[1], 'w').close(); print('ready', flush=True); time.sleep(600)")


def _watchdog(pid: int, timeout: float, prefix: str) -> subprocess.Popen:
    """The watchdog as `runtime.triton.server.start_server` starts it: the server held by a pidfd."""
    handle = os.pidfd_open(pid)
    try:
        return subprocess.Popen([sys.executable, "-I", str(REPO / "runtime" / "triton" / "watchdog.py"), str(handle),
                                 str(pid), str(timeout), prefix], pass_fds=(handle,), stdin=subprocess.PIPE,
                                start_new_session=True)
    finally:
        os.close(handle)


def test_a_server_left_running_by_its_starter_is_killed_after_sigterm_fails_and_its_regions_removed():
    prefix = f"medflow_serve_{os.getpid()}_watchdogtest_"
    region = Path("/dev/shm") / f"{prefix}region"
    server = subprocess.Popen([sys.executable, "-c", STUBBORN, str(region)], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert server.stdout.readline().strip() == "ready" and region.exists()
        watchdog = _watchdog(server.pid, 1.0, prefix)
        time.sleep(0.5)
        assert server.poll() is None and watchdog.poll() is None      # its starter runs: nothing done
        started = time.monotonic()
        watchdog.stdin.close()                                         # the starter ended
        assert watchdog.wait(timeout=30) == 0
        assert server.wait(timeout=5) == -signal.SIGKILL and 1.0 <= time.monotonic() - started < 20
        assert not region.exists()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        region.unlink(missing_ok=True)


def test_a_server_that_ended_first_is_left_alone_and_the_watchdog_imports_nothing_of_the_runtime():
    server = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    watchdog = _watchdog(server.pid, 1.0, f"medflow_serve_{os.getpid()}_watchdogtest_")
    time.sleep(0.3)
    maps = Path(f"/proc/{watchdog.pid}/maps").read_text()
    assert "numpy" not in maps and "SimpleITK" not in maps                   # a few MB, not the runtime's 170
    server.stdin.close()
    server.wait()
    watchdog.stdin.close()
    assert watchdog.wait(timeout=30) == 0
