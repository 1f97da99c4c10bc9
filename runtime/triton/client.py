"""The runtime as a Triton client: a scan or a slide read and written here, the model run by a server.

`--server http://host:8000` (or a bare `host:8000`) talks HTTP, `--server grpc://host:8001` gRPC,
both through `tritonclient` (the `triton` extra). For a scan the request is its voxels in (C, z, y,
x) order and its spacing; the server answers on the request's grid (runtime.triton.adapter), so the
outputs written here, on the scan's own grid, are the ones `runtime predict` writes locally. For a
slide the client reads the served version's manifest, then plans, reads and stitches the tiles
itself as a local run does: `ServedBackend` is one more backend of the window engine, whose model
call is a WINDOWS request.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from runtime.backends.execution import Progress, run_remote
from runtime.errors import InputError, ModelError
from runtime.validation import is_number_name
from runtime.manifest import WINDOWS_MODEL_SUFFIX, Manifest, decode_manifest, manifest_digest, parse_manifest
from runtime.triton.adapter import (
    DIRECTION, IMAGE, LABELS, MANIFEST, MANIFEST_JSON, ORIGIN, PROBABILITIES, SCORES, SPACING, WINDOW_OUTPUTS,
    WINDOWS,
)
from runtime.window import Merger, Plan, WindowSource

DEFAULT_TIMEOUT_S = 600.0
# WINDOWS requests a slide's client keeps in flight: one computing while the next is sent.
REQUESTS_IN_FLIGHT = 2


class ServerUnavailable(ModelError):
    """The server could not be reached, or the model version is not ready on it: a state that may
    pass (a server restarting), where a refused or failed request will not."""


@dataclass(frozen=True)
class Endpoint:
    protocol: str
    address: str


def parse_server(text: str) -> Endpoint:
    """`http://host:port`, `grpc://host:port` or `host:port` (HTTP)."""
    protocol, _, rest = text.partition("://")
    if not rest:
        protocol, rest = "http", text
    if protocol not in ("http", "grpc"):
        raise InputError(f"--server {text}: the scheme must be http:// or grpc://, got {protocol}://.")
    host, _, port = rest.rstrip("/").rpartition(":")
    if not host or not is_number_name(port) or not 0 < int(port) < 65536:
        raise InputError(f"--server {text}: give host:port, e.g. 127.0.0.1:8000 (HTTP) or grpc://127.0.0.1:8001.")
    return Endpoint(protocol, f"{host}:{port}")


def _module(protocol: str) -> Any:
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except (ImportError, RuntimeError) as error:
        raise InputError(f"--server needs tritonclient with {protocol} support ({error}); pip install "
                         f"'tritonclient[{protocol}]' (or the project's triton extra).") from None
    return module


class ServedModel:
    """One model (and version) on a Triton server, checked reachable and ready."""

    def __init__(self, server: str, model: str, version: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 known: ServedModel | None = None) -> None:
        """`known`: a connection to the same model already checked, whose names are taken
        instead of asking the server again."""
        from tritonclient.utils import InferenceServerException

        self.server, self.endpoint = server, parse_server(server)
        self.model, self.version, self.timeout = model, version or "", timeout
        self._module = _module(self.endpoint.protocol)
        self._error = InferenceServerException
        kwargs = {"network_timeout": timeout} if self.endpoint.protocol == "http" else {}
        self._client = self._module.InferenceServerClient(self.endpoint.address, **kwargs)
        self.inputs: list[str] = [] if known is None else known.inputs
        self.outputs = self._check() if known is None else known.outputs
        self.answered_version = ""

    def _check(self) -> list[str]:
        """The model's output names (its input names kept in `inputs`), once it is found ready."""
        where = f"{self.endpoint.protocol}://{self.endpoint.address}"
        unready = self._unready()
        if unready is not None:
            kind, words = unready
            hint = {"unreachable": "; start one with `runtime serve`, or check --server.",
                    "not live": "; check its log."}.get(kind, ".")
            raise InputError(words + hint)
        try:
            metadata = self._client.get_model_metadata(self.model, self.version, **self._deadline())
            self.inputs = _names(metadata, "inputs")
            return _names(metadata, "outputs")
        except self._error as error:
            raise InputError(f"the server at {where} refused the metadata request for model {self.model!r} "
                             f"({_one_line(error)}); check its log.") from None
        except Exception as error:  # an empty or foreign answer: tritonclient's JSON parser raises several kinds
            raise InputError(f"{where} gave no Triton answer to the metadata request for model {self.model!r} "
                             f"({_one_line(error)}); check --server: Triton's HTTP port (8000 by default), or its "
                             "gRPC port as grpc://HOST:PORT, not its metrics port.") from None

    def check_ready(self) -> None:
        """ServerUnavailable where the server cannot be reached or no longer has this model (and
        version) ready."""
        unready = self._unready()
        if unready is not None:
            kind, words = unready
            pinned = (" (requests go to the version taken at the start: restart to take another)"
                      if kind == "not ready" and self.version else "")
            raise ServerUnavailable(words + pinned)

    def _unready(self) -> tuple[str, str] | None:
        """Why this model (and version) cannot be asked now, as (kind, words): "unreachable",
        "stalled" (it took the connection but did not answer in time), "foreign" (it took the
        connection and answered in another protocol: a Triton's other port), "not live" or "not
        ready"; None where it is ready."""
        where = f"{self.endpoint.protocol}://{self.endpoint.address}"
        try:
            live = self._client.is_server_live(**self._deadline())
            ready = live and self._ready()
        except Exception as error:  # connection refused, name not found: tritonclient raises several kinds
            text = _one_line(error)
            timed_out = "timed out" in text.lower() or "deadline" in text.lower()
            if timed_out and _takes_connections(self.endpoint.address, min(self.timeout, 5.0)):
                return "stalled", (f"the Triton server at {where} did not answer within {self.timeout:g} s (is it "
                                   "stalled or overloaded? its log says); give it longer with --timeout")
            if not timed_out and _takes_connections(self.endpoint.address, min(self.timeout, 5.0)):
                other = "gRPC" if self.endpoint.protocol == "http" else "HTTP"
                return "foreign", (f"something at {where} takes connections but does not answer as a Triton "
                                   f"server's {self.endpoint.protocol.upper()} endpoint ({text}): is it its {other} "
                                   "port? Give Triton's HTTP port as HOST:PORT (8000 by default), or its gRPC port "
                                   "as grpc://HOST:PORT (8001)")
            return "unreachable", f"cannot reach a Triton server at {where} ({text})"
        if not live:
            return "not live", f"the Triton server at {where} is not live"
        if not ready:
            named = f"model {self.model!r}" + (f" version {self.version}" if self.version else "")
            return "not ready", f"the server at {where} has no ready {named}; it serves {self._listing()}"
        return None

    def _deadline(self) -> dict[str, float]:
        """gRPC calls take their timeout per call (HTTP's is the client's network timeout)."""
        return {"client_timeout": self.timeout} if self.endpoint.protocol == "grpc" else {}

    def _ready(self) -> bool:
        try:
            return bool(self._client.is_model_ready(self.model, self.version, **self._deadline()))
        except self._error:
            return False

    def _listing(self) -> str:
        try:
            index = self._client.get_model_repository_index()
        except Exception:  # noqa: BLE001 - the listing only adds to a message
            return "models it does not list"
        entries = index if isinstance(index, list) else list(index.models)
        found = []
        for entry in entries:
            name = entry["name"] if isinstance(entry, dict) else entry.name
            version = entry.get("version", "") if isinstance(entry, dict) else entry.version
            state = entry.get("state", "") if isinstance(entry, dict) else entry.state
            found.append(f"{name}" + (f" v{version}" if version else "") + (f" ({state.lower()})" if state else ""))
        return ", ".join(found) or "no model"

    def infer(self, image_zyx: np.ndarray, spacing_zyx: tuple[float, ...], wanted: list[str] | None = None,
              origin_xyz: tuple[float, ...] | None = None,
              direction: tuple[float, ...] | None = None) -> dict[str, np.ndarray]:
        """The model's outputs `wanted` (default: the maps) for one scan (C, *spatial) in (z, y,
        x) order, its spacing and, where the served model takes them, its origin and direction
        (SimpleITK's order); the server computes only what is asked for."""
        names = [name for name in self.outputs if name in (wanted or (PROBABILITIES, LABELS, SCORES))]
        arrays = {IMAGE: np.ascontiguousarray(image_zyx, dtype=np.float32),
                  SPACING: np.asarray(spacing_zyx, dtype=np.float32)}
        if ORIGIN in self.inputs:
            for name, value in ((ORIGIN, origin_xyz), (DIRECTION, direction)):
                if value is not None:
                    arrays[name] = np.asarray(value, dtype=np.float32)
        return self._infer(arrays, names)

    def manifest(self) -> tuple[Manifest, str]:
        """The served version's manifest and its digest, checked as a manifest file is; from then
        on every request goes to that version, so a newer one loaded meanwhile is not mixed in."""
        raw = self._infer({MANIFEST: np.ones(1, dtype=np.uint8)}, [MANIFEST_JSON])[MANIFEST_JSON]
        source = (f"the manifest of {self.model} version {self.answered_version} at "
                  f"{self.endpoint.protocol}://{self.endpoint.address}")
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ModelError(f"{source} came as {raw.dtype} {raw.shape}, not bytes; check that the server runs this "
                             "runtime's model.py.")
        data = decode_manifest(raw.tobytes(), source)
        manifest = parse_manifest(data, source)
        self.version = self.answered_version
        return manifest, manifest_digest(data, source)

    def run_windows(self, batch: np.ndarray) -> np.ndarray:
        """The model's raw output for a batch of windows (N, C, *patch), cut and preprocessed here."""
        return self._infer({WINDOWS: np.ascontiguousarray(batch, dtype=np.float32)}, [WINDOW_OUTPUTS])[WINDOW_OUTPUTS]

    def _infer(self, arrays: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """One request of the named input arrays (float32 or uint8) for the outputs `names`."""
        inputs = []
        for name, value in arrays.items():
            tensor = self._module.InferInput(name, list(value.shape), "UINT8" if value.dtype == np.uint8 else "FP32")
            if self.endpoint.protocol == "http":
                tensor.set_data_from_numpy(value, binary_data=True)
            else:
                tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        requested = [self._module.InferRequestedOutput(name) for name in names]
        try:
            result = self._client.infer(self.model, inputs, model_version=self.version, outputs=requested,
                                        **self._deadline())
        except self._error as error:
            status = str(error.status() or "")
            if "400" in status or "INVALID_ARG" in status:
                raise InputError(f"the server refused the request: {error.message()}") from None
            if "DEADLINE_EXCEEDED" in status:
                raise self._late() from None
            if any(code in status for code in ("UNAVAILABLE", "503", "NOT_FOUND", "404")):
                raise self._dropped(error.message()) from None
            raise ModelError(f"the server failed on the request ({status or 'no status'}): {error.message()}") from None
        except TimeoutError:
            raise self._late() from None
        except Exception as error:  # the connection dropped
            raise self._dropped(_one_line(error)) from None
        response = result.get_response()
        answered = response.get("model_version") if isinstance(response, dict) else response.model_version
        self.answered_version = str(answered or self.version or "?")
        found = {}
        for name in names:
            array = result.as_numpy(name)
            if array is None:
                raise ModelError(f"the server's answer holds no {name}; check that {self.model} is a model this "
                                 "runtime exported, and that the server runs its current model.py.")
            found[name] = array
        return found

    def _dropped(self, reason: str) -> ServerUnavailable:
        return ServerUnavailable(f"the request to {self.endpoint.address} failed ({reason}); check that the server "
                                 "still runs (its log), and --server.")

    def _late(self) -> ModelError:
        return ModelError(f"{self.model} at {self.endpoint.address} gave no answer within {self.timeout:g} s; give it "
                          "longer with --timeout, or check the server's load and log.")

    def connect(self) -> ServedModel:
        """Another connection to the same model and version, for another thread (a client
        connection serves one thread at a time); it asks the server nothing until it is used."""
        return ServedModel(self.server, self.model, self.version or None, self.timeout, known=self)

    def close(self) -> None:
        self._client.close()


class ServedBackend:
    """A backend of the window engine whose model runs on a Triton server: each batch of windows
    is one WINDOWS request, `depth` of them in flight on connections of their own, while this
    machine cuts the next batches and stitches each answer."""

    on_cpu = False

    def __init__(self, served: ServedModel, depth: int = REQUESTS_IN_FLIGHT) -> None:
        """`served`: the model, pinned to a version (ServedModel.manifest). Where the server also
        serves its `<name>_windows` companion at that version, the windows go there, to be
        batched with other clients' windows."""
        self.served, self.depth = _companion(served) or served, depth
        self.name = (f"{self.served.model} version {served.version or '(newest)'} at "
                     f"{served.endpoint.protocol}://{served.endpoint.address}")
        self._connections: list[ServedModel] = []
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return _owned(self.served.run_windows(batch))

    borrow = __call__

    def run(self, source: WindowSource, plan: Plan, merger: Merger, progress: Progress | None = None) -> None:
        try:
            run_remote(self._connect, source, plan, merger, progress, depth=self.depth)
        finally:
            with self._lock:
                connections, self._connections = self._connections, []
            for connection in connections:
                connection.close()

    def _connect(self) -> Callable[[np.ndarray], np.ndarray]:
        connection = self.served.connect()
        with self._lock:
            self._connections.append(connection)
        return lambda batch: _owned(connection.run_windows(batch))

    def prepare(self, batch_shape: tuple[int, ...]) -> None:
        """Nothing to make ready here: the server loaded the model."""


def _companion(served: ServedModel) -> ServedModel | None:
    """The `<name>_windows` companion of `served` at its version, where the server has it ready."""
    if not served.version:
        return None
    try:
        companion = ServedModel(served.server, served.model + WINDOWS_MODEL_SUFFIX, served.version, served.timeout)
    except InputError:
        return None
    companion.close()                   # checked: each thread that runs windows connects anew (connect)
    return companion


def _owned(output: np.ndarray) -> np.ndarray:
    """A model output in float32 memory of its own (the merger may work in it)."""
    return np.array(output, dtype=np.float32, order="C")


def _names(metadata: Any, key: str) -> list[str]:
    """The input or output names of a model's metadata, as HTTP (a dict) or gRPC (a message) gives it."""
    items = metadata[key] if isinstance(metadata, dict) else getattr(metadata, key)
    return [item["name"] if isinstance(item, dict) else item.name for item in items]


def _takes_connections(address: str, timeout: float) -> bool:
    """Whether something accepts a TCP connection at `address` (host:port) within `timeout` s: a
    server that then does not answer has stalled, where one whose address takes none is not there."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError):
        return False
    return True


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__
