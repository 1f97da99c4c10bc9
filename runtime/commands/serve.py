"""`runtime serve`: a model repository behind a local Triton Inference Server, until Ctrl-C or
SIGTERM. Every check that can refuse (the repository, the ports, the backend's Python, the server
binary) runs before the server starts; the server's own log goes to a file."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click

from runtime.errors import InputError
from runtime.stopping import interrupt_on_stops, restore, stops_ignored
from runtime.triton.server import (
    Ports, check_backend_python, check_backends, check_models, check_ports, check_repository, find_triton, log_tail,
    start_server, stop_server, url_host, wait_ready,
)


def run_serve(repository: Path, ports: Ports, log_path: Path | None, poll: int | None = None) -> None:
    names = check_repository(repository)
    check_models(repository, names)
    check_ports(ports)
    check_backend_python()
    work = Path(tempfile.mkdtemp(prefix="medflow-serve-"))
    keep = False
    try:
        install = find_triton(work)
        check_backends(repository, names, install)
        log = log_path or work / "tritonserver.log"
        process = start_server(install, repository, ports, log, poll)
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
            code = process.wait()
            keep = log_path is None
            cause = getattr(process, "stopped_because", None)
            if cause:
                raise InputError(f"tritonserver was stopped because {cause} (every request to its model failed); "
                                 f"start runtime serve again (systemd's Restart= or Kubernetes does); its log ({log}) is kept")
            raise InputError(f"tritonserver stopped by itself with code {code}; its log ({log}) ends: {log_tail(log)}")
        except KeyboardInterrupt:
            click.echo("stopping ...")
        except InputError:
            keep = log_path is None
            raise
        finally:
            with stops_ignored():
                stop_server(process)
            restore(previous)
        click.echo("stopped")
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)

