"""`runtime listen`: the PACS node (runtime.pacs.listener) until Ctrl-C or SIGTERM, or with
`--status` what its storage folder holds. Every check that can refuse (the model, the destination,
the AE titles, the storage folder, the port) runs before it listens."""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from runtime.errors import InputError, install_hint
from runtime.stopping import interrupt_on_stops, restore, stops_ignored
from runtime.pacs.listener import Listener, check_ae_title, parse_destination, parse_modalities, status_lines
from runtime.pacs.storage import Storage

if TYPE_CHECKING:
    from runtime.manifest import Manifest
    from runtime.triton.scans import ServedScans


def run_status(storage: Path) -> None:
    if not (storage / "series").is_dir():
        raise InputError(f"--storage {storage} is no listener's storage folder (it has no series/ folder).")
    for line in status_lines(Storage(storage)):
        click.echo(line)


def run_retry(storage: Path, series_uid: str) -> None:
    """A failed series, or an incomplete one given up waiting for, made to be segmented again (of
    the instances its folder holds): by the node that runs on `storage`, or by the next one
    started on it."""
    from runtime.pacs.storage import check_uid

    if not (storage / "series").is_dir():
        raise InputError(f"--storage {storage} is no listener's storage folder (it has no series/ folder).")
    check_uid(series_uid, "--retry")                  # before the folder is opened, which may add to it
    folder = Storage(storage)
    state = folder.state(series_uid)
    if state is None:
        raise InputError(f"--retry {series_uid}: no such series in {storage}; runtime listen --status lists them.")
    if state.state not in ("failed", "incomplete"):
        raise InputError(f"--retry {series_uid}: the series is {state.state}, and only a failed or incomplete one is "
                         "retried.")
    count = len(folder.instances(series_uid))             # as the folder holds them now, mended
    if not count:
        raise InputError(f"--retry {series_uid}: the series' folder holds no instance to segment; send the series "
                         "again.")
    folder.update(series_uid, state="receiving", instances=count, attempts=0, next_attempt=0.0, last_received=0.0,
                  detail="retried by hand", missing="", sending=0)
    given_up = " (the instances it waited for are given up: its SEG is of those it has)" \
        if state.state == "incomplete" else ""
    click.echo(f"series {series_uid} ({count} instance(s)) is segmented again by the node on {storage} (at once "
               f"where one runs, else at its start){given_up}")


def run_listen(model_path: Path, ae_title: str, address: str, port: int, send_to: str, allow: str,
               storage: Path, idle_s: float, device: str, report: bool = False,
               served: Served | None = None, modality: str | None = None, uid_root: str | None = None) -> None:
    """`served`: the model is the one of that name a Triton server serves (`model_path` its name).
    `modality`: the --modality codes of the series to segment (None: every modality). `uid_root`:
    --uid-root, the root of the results' new UIDs."""
    from runtime.io.dicom_seg import check_uid_root

    title = check_ae_title(ae_title, "--ae-title")
    root = check_uid_root(uid_root)
    modalities = parse_modalities(modality)
    destination = parse_destination(send_to)
    if not allow.strip() or any(not name.strip() for name in allow.split(",")):
        raise InputError(f"--allow {allow!r} names an empty AE title; list the nodes that may send studies, "
                         "separated by single commas (e.g. CTSCANNER,PACS).")
    allowed = [check_ae_title(name, "--allow") for name in allow.split(",")]
    if served is None:
        manifest, version_dir = _local_version(model_path, report)
    else:
        model, runs = _served_model(str(model_path), served, report)
        manifest = model.manifest
    try:
        import pynetdicom  # noqa: F401
    except ImportError as error:
        raise InputError(f"runtime listen needs pynetdicom ({error}); {install_hint('dicom')}.") from None
    check_port(address, port)                     # a port taken is said before the storage folder is made
    folder = Storage(storage)
    folder.hold()
    if served is None:
        from runtime.predict import load_model

        model, runs = load_model(version_dir, device=device), ""
    _log_to_stdout()
    _read_values_quietly()
    listener = Listener(model, folder, title, allowed, destination, idle_s, report=report, modalities=modalities,
                        uid_root=root)
    listener.start(address, port)
    results = "SRs" if manifest.task != "segmentation" else "SEGs and SRs" if report else "SEGs"
    kinds = "series of every modality" if modalities is None else f"{'/'.join(sorted(modalities))} series"
    click.echo(f"listening: {title} on {address}:{port}, from {', '.join(allowed)}; {kinds}; {results} of "
               f"{manifest.name} v{manifest.version}{runs} go to {destination.ae_title}@{destination.host}:"
               f"{destination.port}; storage {storage}; a series is complete {idle_s:g} s after its last instance; "
               "Ctrl-C stops")
    previous = interrupt_on_stops()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("stopping ...")
    finally:
        with stops_ignored():
            listener.stop()
        restore(previous)
    click.echo("stopped")


def check_port(address: str, port: int) -> None:
    """InputError where `port` at `address` cannot be listened on (another program has it); the
    listener binds it again a moment later."""
    import socket

    try:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((address, port))
    except OSError as error:
        raise InputError(f"cannot listen on {address}:{port} ({error.strerror or error}); is the port taken?") from None


@dataclass(frozen=True)
class Served:
    """Where the node's model is served: `--server`, `--model-version` (None: the newest), `--timeout`."""

    server: str
    version: str | None
    timeout: float


def _local_version(model_path: Path, report: bool) -> tuple[Manifest, Path]:
    """The model version `model_path` names, its manifest checked for the node."""
    from runtime.commands.reporting import taken_version

    manifest, version_dir = taken_version(model_path)
    _check_model(manifest, report)
    return manifest, version_dir


def _served_model(name: str, served: Served, report: bool) -> tuple[ServedScans, str]:
    """The version of model `name` the server answers with (pinned: every series goes to it), with
    its manifest, checked for the node."""
    from runtime.commands.remote import served_manifest
    from runtime.triton.client import ServedModel
    from runtime.triton.scans import ServedScans

    connection = ServedModel(served.server, name, served.version, served.timeout)
    try:
        manifest = served_manifest(connection, None)
    finally:
        connection.close()            # checked: each series is sent on a connection of its own (ServedScans)
    if manifest is None:
        raise InputError(f"{name} at {served.server} does not answer MANIFEST requests, which the node needs (its "
                         "classes name a SEG's segments); rebuild it with this runtime (python -m export build) and "
                         "serve it again.")
    _check_model(manifest, report)
    return ServedScans(connection, manifest), f" (run by {served.server})"


def _check_model(manifest: Manifest, report: bool) -> None:
    """A radiology model whose results the node can write (SEG, SR), with --report only for a
    segmentation."""
    from runtime.io.dicom_seg import check_available

    if manifest.modality != "radiology":
        raise InputError(f"model {manifest.name} is a {manifest.modality} model; the listener runs radiology models "
                         "on the series it receives.")
    if report and manifest.task != "segmentation":
        raise InputError(f"--report sends the SR of a segmentation's volumes with its SEG; model {manifest.name} is a "
                         f"{manifest.task} model, whose node sends its SR without it.")
    check_available(manifest)


def _read_values_quietly() -> None:
    """pydicom's warnings on the values of instances it decodes, off in this process: the listener
    checks what it needs itself and says so in its step lines (a SEG names each patient or study
    value it leaves empty), where pydicom's lines would repeat values among them."""
    import pydicom

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def _log_to_stdout() -> None:
    """The listener's step lines on stdout, flushed line by line whatever stdout is."""
    logger = logging.getLogger("runtime.listen")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if logging.getLogger().level > logging.INFO:     # without -v: pynetdicom's own lines repeat the step lines
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
