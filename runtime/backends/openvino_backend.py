"""The OpenVINO backend: an ONNX model compiled for the CPU, with a compiled-model cache on disk.

Importing this module imports `openvino`; `runtime.backends` imports it only when asked to.
"""
from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from runtime.backends import common
from runtime.errors import ModelError

log = logging.getLogger(__name__)

DEVICE = "CPU"
HINTS = ("LATENCY", "THROUGHPUT")
DEFAULT_HINT = "LATENCY"


class OpenVinoBackend(common.BatchRunner):
    """Runs an ONNX model with OpenVINO; call it with a float32 (B, C, *patch) batch.

    One InferRequest is kept and reused. Inference runs in float32 on every CPU (OpenVINO would
    otherwise pick bfloat16 on CPUs that support it), so results agree with onnxruntime to
    float32 rounding.
    """

    def __init__(self, onnx_path: Path, input_name: str, output_name: str, *,
                 threads: int | None = None, cache_dir: Path | None = None,
                 hint: str = DEFAULT_HINT) -> None:
        self.onnx_path = Path(onnx_path)
        self.input_name = input_name
        self.output_name = output_name
        self.name = f"openvino[{DEVICE}]"
        self.on_cpu = True
        started = time.perf_counter()
        compiled = _compile(self.onnx_path, _config(threads, cache_dir, hint))
        self._input_dims = _declared_dims(compiled, input_name, self.onnx_path)
        self._output = _output_port(compiled, output_name, self.onnx_path)
        self._request = compiled.create_infer_request()
        log.info("%s (%s hint) compiled %s in %.2f s", self.name, hint, self.onnx_path.name,
                 time.perf_counter() - started)

    def _run(self, batch: np.ndarray, borrow: bool = False) -> np.ndarray:
        try:
            results = self._request.infer({self.input_name: batch}, share_inputs=True,
                                          share_outputs=True)
        except RuntimeError as error:
            raise common.run_failed(self.onnx_path, batch.shape, self._input_dims, error) from error
        # The shared output is a view of the request's own memory, which the next call reuses:
        # lent as it is when borrowed, else copied.
        if borrow:
            return np.ascontiguousarray(results[self._output], dtype=np.float32)
        return np.array(results[self._output], dtype=np.float32, order="C", copy=True)


def _config(threads: int | None, cache_dir: Path | None, hint: str) -> dict[str, Any]:
    if hint not in HINTS:
        raise ValueError(f"unknown OpenVINO performance hint {hint!r}; expected one of {HINTS}")
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    cache = _usable_cache_dir(cache_dir or common.default_cache_dir("openvino"))
    if cache is not None:
        config["CACHE_DIR"] = str(cache)
    return config


def _usable_cache_dir(cache: Path) -> Path | None:
    """The cache folder, created if needed; None (no cache) when it cannot be created."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        log.warning("OpenVINO cache folder %s cannot be created (%s); compiling without a cache",
                    cache, error)
        return None
    return cache


@functools.lru_cache(maxsize=1)
def shared_core() -> ov.Core:
    """The one OpenVINO Core of this process. Each Core loads its own CPU plugin, and each plugin
    installs an alternate signal stack on the thread that compiles, restored when the plugin
    goes; plugins that go in another order than they came leave a freed stack installed, and
    the next signal handled on that thread (a child process ending, Ctrl-C) kills the process."""
    return ov.Core()


def _compile(onnx_path: Path, config: dict[str, Any]) -> ov.CompiledModel:
    """Read and compile the model.

    The model is read before compiling so that the cache key is computed from the graph and its
    weights: a cache keyed on the file path alone can hand back a stale compiled model when a
    model file is rewritten in place within the same second.
    """
    common.require_model_file(onnx_path)
    core = shared_core()
    try:
        return core.compile_model(core.read_model(str(onnx_path)), DEVICE, config)
    except RuntimeError as error:
        raise ModelError(
            f"OpenVINO cannot load model {onnx_path}: {common.one_line(error)}. The file may be "
            "truncated or not an ONNX model; re-export it (`export build --onnx`)"
        ) from error


def _port_names(ports: list[ov.Output]) -> list[str]:
    return sorted(name for port in ports for name in port.get_names())


def _declared_dims(compiled: ov.CompiledModel, input_name: str,
                   onnx_path: Path) -> list[int | None] | None:
    """The graph's declared input shape, free dimensions as None; None when the rank is free."""
    common.require_name(onnx_path, "input", input_name, _port_names(compiled.inputs))
    shape = compiled.input(input_name).get_partial_shape()
    if shape.rank.is_dynamic:
        return None
    return [dim.get_length() if dim.is_static else None for dim in shape]


def _output_port(compiled: ov.CompiledModel, output_name: str, onnx_path: Path) -> ov.Output:
    common.require_name(onnx_path, "output", output_name, _port_names(compiled.outputs))
    return compiled.output(output_name)
