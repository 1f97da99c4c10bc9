"""Triton Python-backend model: serves the model version folder this file sits in.

Triton loads this file as `<model>/<version>/model.py`. Each request is answered on its own: a
request that cannot be used (wrong shape, NaN, wrong channel count, …) gets an error response
saying why, and the requests after it are served as usual. The work itself is in
`runtime.triton.adapter`, which needs no Triton; the runtime package must be importable by the
backend's Python interpreter (installed in it, or on its PYTHONPATH). A version whose digest differs
from the one the model's config.pbtxt records is refused at load (`runtime.digests`); the config's
"max_memory" parameter, when set, is each request's memory budget (`runtime.budget`). Requests
answered with an error are counted in the server's metrics as `medflow_requests_refused`.
"""
from __future__ import annotations

import ctypes
import json
import os
import logging
from pathlib import Path
from typing import Any

import numpy as np

from runtime.digests import check_served_version
from runtime.errors import InputError, MedflowError
from runtime.manifest import read_manifest_data
from runtime.predict import Model, load_model
from runtime.triton.adapter import (
    INPUT_NAMES, WINDOW_OUTPUTS, WINDOWS, answer, check_batching, choose_budget, choose_device,
    run_window_requests, served_version_dir, serves, version_cpu_devices,
)

# Requests a model answered with an error, which Triton's nv_inference_request_success counts.
REFUSED_METRIC = "medflow_requests_refused"
REFUSED_HELP = "Requests the model answered with an error, by code: invalid_arg (the request), internal (the model)"

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton's Python backend: the module still imports, for inspection and tests
    pb_utils = None

log = logging.getLogger(__name__)


def _to_numpy(tensor: Any) -> np.ndarray:
    """A request tensor as an array of its own.

    DLPack, not `as_numpy`: some backend builds read numpy 2 arrays wrongly through `as_numpy`,
    while DLPack needs no numpy ABI. The request's buffer is read-only and lives only as long as
    the call to `execute`, so it is copied.
    """
    return np.array(np.from_dlpack(tensor), copy=True)


# DLPack capsule names: numpy's own, the standard mark of a taken capsule, and the Python backend's.
_DLTENSOR = b"dltensor"
_USED_DLTENSOR = b"used_dltensor"
_BACKEND_USED = b"used_dlpack"


def _capsule_api() -> tuple[Any, Any]:
    api = ctypes.pythonapi
    api.PyCapsule_IsValid.restype, api.PyCapsule_IsValid.argtypes = ctypes.c_int, [ctypes.py_object, ctypes.c_char_p]
    api.PyCapsule_SetName.restype, api.PyCapsule_SetName.argtypes = ctypes.c_int, [ctypes.py_object, ctypes.c_char_p]
    return api.PyCapsule_IsValid, api.PyCapsule_SetName


_IS_VALID, _SET_NAME = _capsule_api()


def _to_tensor(name: str, array: np.ndarray) -> Any:
    """A response tensor over `array`, handed over as numpy's own DLPack capsule.

    The backend marks a capsule it has taken "used_dlpack", not the standard "used_dltensor":
    numpy's capsule destructor then knows neither name and prints a traceback (with numpy 1.26 it
    also leaves an error set that later breaks the stub). Once taken, the capsule is given the
    standard mark, so numpy leaves the tensor to the backend, which frees it through its deleter
    when the response is sent; a capsule the backend did not take stays numpy's to free."""
    capsule = np.ascontiguousarray(array).__dlpack__()
    try:
        return pb_utils.Tensor.from_dlpack(name, capsule)
    finally:
        if _IS_VALID(capsule, _BACKEND_USED):
            _SET_NAME(capsule, _USED_DLTENSOR)


def _error_response(message: str, code_name: str) -> Any:
    code = getattr(pb_utils.TritonError, code_name, None)
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def _refusal_counters(config: dict[str, Any], args: dict[str, str]) -> tuple[Any, dict[str, Any]]:
    """This instance's counters of the requests it answers with an error, by code (INVALID_ARG: the
    request cannot be used; INTERNAL: the model failed on it), which Triton's own request counters
    count as successes, and their family (which must outlive them); none where the backend has no
    custom metrics. Labelled with the stub's process too: an instance loaded again (a config edit
    under --poll) would otherwise share its predecessor's counter, which Triton frees with it."""
    try:
        family = pb_utils.MetricFamily(name=REFUSED_METRIC, description=REFUSED_HELP,
                                       kind=pb_utils.MetricFamily.COUNTER)
        labels = {"model": str(config.get("name", "")), "version": str(args.get("model_version", "")),
                  "instance": str(args.get("model_instance_name", "")), "pid": str(os.getpid())}
        return family, {code: family.Metric(labels={**labels, "code": code.lower()})
                        for code in ("INVALID_ARG", "INTERNAL")}
    except Exception as exc:  # noqa: BLE001 - a counter that cannot be made never stops the model
        log.warning("requests refused are not counted (%s: %s)", type(exc).__name__, exc)
        return None, {}


class TritonPythonModel:
    """One loaded model per Triton model instance."""

    model: Model
    budget: int | None = None
    manifest_json: bytes = b""
    batches_windows = False
    refusals: dict[str, Any] = {}
    metric_family: Any = None

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        version_dir = served_version_dir(config, Path(args["model_repository"]), args["model_version"])
        self.batches_windows = serves(config)
        check_batching(config)
        self.metric_family, self.refusals = _refusal_counters(config, args) if pb_utils is not None else (None, {})
        check_served_version(config, version_dir)
        device, threads, gpu = choose_device(config, args.get("model_instance_kind", "MODEL"),
                                             args.get("model_instance_device_id", "0"),
                                             cpu_devices=version_cpu_devices(version_dir))
        self.budget = choose_budget(config)
        self.model = load_model(version_dir, device=device, threads=threads, gpu=gpu)
        self.manifest_json = json.dumps(read_manifest_data(version_dir)).encode("utf-8")
        log.info("serving %s v%s from %s on %s", self.model.manifest.name, self.model.manifest.version,
                 version_dir, self.model.backend.name)

    def _respond(self, request: Any) -> Any:
        arrays = {}
        for name in INPUT_NAMES:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            arrays[name] = None if tensor is None else _to_numpy(tensor)
        requested = set(request.requested_output_names())
        outputs = answer(self.model, arrays, self.manifest_json, budget=self.budget, requested=requested)
        outputs = {name: array for name, array in outputs.items() if not requested or name in requested}
        return pb_utils.InferenceResponse(output_tensors=[_to_tensor(k, v) for k, v in outputs.items()])

    def _refused(self, message: str, code_name: str) -> Any:
        """An error response, counted (`REFUSED_METRIC`)."""
        counter = self.refusals.get(code_name)
        try:
            if counter is not None:
                counter.increment(1)
        except Exception as exc:  # noqa: BLE001 - the request still gets its answer
            log.warning("a refused request was not counted (%s: %s)", type(exc).__name__, exc)
        return _error_response(message, code_name)

    def _answer(self, request: Any) -> Any:
        try:
            return self._respond(request)
        except InputError as exc:
            return self._refused(str(exc), "INVALID_ARG")
        except MedflowError as exc:
            return self._refused(str(exc), "INTERNAL")
        except Exception as exc:  # noqa: BLE001 - one failing request must not fail the others
            log.exception("request failed")
            return self._refused(f"{type(exc).__name__}: {exc}", "INTERNAL")

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request, in order; a companion's WINDOWS requests, as the dynamic
        batcher gathered them, in one model call."""
        if self.batches_windows:
            return self._batched(requests)
        return [self._answer(request) for request in requests]

    def _batched(self, requests: list[Any]) -> list[Any]:
        try:
            windows = []
            for request in requests:
                tensor = pb_utils.get_input_tensor_by_name(request, WINDOWS)
                windows.append(None if tensor is None else _to_numpy(tensor))
            results = run_window_requests(self.model, windows)
        except Exception as exc:  # noqa: BLE001 - every request gets its answer
            log.exception("batch failed")
            return [self._refused(f"{type(exc).__name__}: {exc}", "INTERNAL") for _ in requests]
        return [self._refused(str(result), "INVALID_ARG" if isinstance(result, InputError) else "INTERNAL")
                if isinstance(result, MedflowError)
                else pb_utils.InferenceResponse(output_tensors=[_to_tensor(WINDOW_OUTPUTS, result)])
                for result in results]

    def finalize(self) -> None:
        """Drop the loaded model so its session and memory are released with the instance, and the
        counters before their family."""
        self.__dict__.pop("model", None)
        self.refusals = {}
        self.metric_family = None
