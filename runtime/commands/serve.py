"""`runtime serve`: a model repository behind a local Triton Inference Server, until Ctrl-C or
SIGTERM. Every check that can refuse (the repository, the ports, the backend's Python, the server
binary) runs before the server starts; the server's own log goes to a file."""
from __future__ import annotations

import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import click

from runtime.errors import InputError
from runtime.stopping import interrupt_on_stops, restore, stops_ignored
from runtime.triton.server import (
    Ports, check_backend_python, check_backends, check_models, check_ports, check_repository, find_triton, log_tail,
    STOP_TIMEOUT_S, start_server, stop_server, url_host, wait_ready, watch_log,
)
from runtime.triton.bytecode import compile_adapters
from runtime.triton.watchdog import remove_shm_regions

_FAILED_LOAD = re.compile(r"failed to load '([^']+)' version (\d+)")


def run_serve(repository: Path, ports: Ports, log_path: Path | None, poll: int | None = None) -> None:
    names = check_repository(repository)
    for warning in check_models(repository, names):
        click.echo(f"warning: {warning}", err=True)
    check_ports(ports)
    check_backend_python()
    compile_adapters(repository, names)
    work = Path(tempfile.mkdtemp(prefix="medflow-serve-"))
    keep = False
    try:
        install = find_triton(work)
        check_backends(repository, names, install)
        log = log_path or work / "tritonserver.log"
        process = start_server(install, repository, ports, log, poll)
        stop = threading.Event()
        click.echo(f"started {install.binary} for {', '.join(names)} (log: {log}) ...")
        previous = interrupt_on_stops()
        try:
            wait_ready(process, ports, log)
            host = url_host(ports.address)
            click.echo(f"ready: HTTP http://{host}:{ports.http}, gRPC {host}:{ports.grpc}, metrics "
                       f"http://{host}:{ports.metrics}/metrics; Ctrl-C stops the server")
            if poll is not None:
                click.echo(f"the server looks at {repository} every {poll} s and loads new or changed versions "
                           "(unloads removed ones) as it finds them")
            watch_log(log, _warn, stop)
            code = process.wait()
            keep = log_path is None
            cause = getattr(process, "stopped_because", None)
            if cause:
                raise InputError(f"tritonserver was stopped because {cause} (every request to its model failed); "
                                 f"start runtime serve again (systemd's Restart= or Kubernetes does); its log ({log}) is kept")
            ended = f"was killed by signal {-code} ({_signal_name(-code)})" if code < 0 else \
                f"stopped by itself with code {code}"
            raise InputError(f"tritonserver {ended}; its log ({log}) says: {log_tail(log, since_loaded=True)}")
        except KeyboardInterrupt:
            click.echo("stopping ...")
        except InputError:
            keep = log_path is None
            raise
        finally:
            stop.set()
            with stops_ignored():
                stop_server(process)
                remove_shm_regions(getattr(process, "shm_prefix", ""))
            restore(previous)
        if process.returncode not in (0, -signal.SIGTERM):       # it failed as it stopped
            keep = log_path is None
            code = process.returncode
            ended = f"ended with signal {-code} ({_signal_name(-code)})" if code < 0 else f"ended with code {code}"
            ended = (f"did not stop within {STOP_TIMEOUT_S:g} s of SIGTERM (a request still being answered, a client "
                     "holding its connection open, or a hang) and was killed, failing any request it was answering"
                     if code == -signal.SIGKILL
                     else f"{ended} as it stopped")
            click.echo(f"warning: tritonserver {ended}; its log ({log}, kept) says: {log_tail(log, since_loaded=True)}",
                       err=True)
        click.echo("stopped")
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _warn(message: str) -> None:
    """An error the running server logged, said once on the console: a version that failed to load
    leaves the server's readiness at 400 (Triton keeps the failed load until that version loads)
    while the versions it served before still answer."""
    found = _FAILED_LOAD.match(message)
    hint = "" if found is None else (
        f"; the versions of {found.group(1)} loaded before still answer, but /v2/health/ready answers 400 until "
        f"version {found.group(2)} itself loads (its folder mended in place) or the server restarts: removing the "
        "folder does not clear it (/v2/models/<name>/ready stays 200)")
    click.echo(f"warning: tritonserver: {message}{hint}", err=True)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"
