"""The onnxruntime backend: one InferenceSession on the CPU, CUDA or TensorRT providers."""
from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import io
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort

from runtime.backends import common
from runtime.errors import InputError, ModelError
from runtime.parallel import physical_cores

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": (CPU,),
    "cuda": (CUDA, CPU),
    "tensorrt": (TENSORRT, CUDA, CPU),
}


GPU_DEVICES = ("cuda", "tensorrt")
GPU_BUILD = "onnxruntime-gpu"

# onnxruntime's own logger: warnings and above (its default), or fatal errors only.
_LOG_WARNINGS, _LOG_FATAL = 2, 4


def gpu_devices() -> list[str]:
    """The GPU devices (of GPU_DEVICES) whose providers this onnxruntime build lists."""
    listed = set(ort.get_available_providers())
    return [device for device in GPU_DEVICES if PROVIDERS[device][0] in listed]


def installed_builds(path: Sequence[str] | None = None) -> list[str]:
    """The installed distributions that provide the `onnxruntime` module (onnxruntime,
    onnxruntime-gpu, onnxruntime-openvino, ...), sorted; `path` defaults to sys.path.

    More than one means they share one folder, each overwriting the other's files.
    """
    names = set()
    for dist in importlib.metadata.distributions(path=list(sys.path if path is None else path)):
        top_level = dist.read_text("top_level.txt")
        if top_level is not None:
            provides = "onnxruntime" in top_level.split()
        else:  # installers that write no top_level.txt: the files the distribution installed
            provides = any(file.parts[:1] == ("onnxruntime",) for file in dist.files or ())
        if provides:
            names.add(re.sub(r"[-_.]+", "-", str(dist.metadata["Name"])).lower())
    return sorted(names)


def gpu_install_command(builds: Sequence[str]) -> str:
    """The commands that leave the GPU build of onnxruntime installed alone."""
    remove = f"pip uninstall -y {' '.join(builds)} && " if builds else ""
    return f"{remove}pip install {GPU_BUILD}"


def shadowed_gpu_build(path: Sequence[str] | None = None) -> str | None:
    """Why the installed GPU build lists no GPU provider, when another onnxruntime build
    installed beside it has overwritten its files (as `pip install onnxruntime-gpu` into the
    runtime's environment does, since the runtime itself needs onnxruntime); None otherwise."""
    search = list(sys.path if path is None else path)
    if not any(importlib.metadata.distributions(name=GPU_BUILD, path=search)) or gpu_devices():
        return None  # (a lookup by name: scanning every distribution takes a tenth of a second)
    builds = installed_builds(search)
    if len(builds) < 2:
        return None
    others = " and ".join(build for build in builds if build != GPU_BUILD)
    return (f"{' and '.join(builds)} are installed together and share one `onnxruntime` module, "
            f"whose files now come from {others}, so no GPU provider is listed; keep the GPU "
            f"build alone: {gpu_install_command(builds)}")


def provider_failure(device: str, capi: Path | None = None, gpu: int = 0) -> str:
    """Why `device`'s provider may not start on CUDA device `gpu`, as far as loading its library
    tells: the library or one it needs is missing (CUDA, cuDNN, TensorRT of the versions this
    build was made for), or it loads and the cause lies with the GPU (driver, device number)."""
    folder = capi or Path(ort.__file__).parent / "capi"
    name = (f"onnxruntime_providers_{device}.dll" if sys.platform == "win32"
            else f"libonnxruntime_providers_{device}.so")
    library = folder / name
    if not library.is_file():
        return f"{name} is not part of this onnxruntime build"
    try:
        ctypes.CDLL(str(library))
    except OSError as error:
        return f"{name} does not load: {common.one_line(error)}"
    return (f"{name} loads, so the GPU is not usable as asked: check the NVIDIA driver (nvidia-smi) "
            f"and that this process sees a GPU numbered {gpu}")


class OnnxRuntimeBackend(common.BatchRunner):
    """Runs an ONNX model with onnxruntime; call it with a float32 (B, C, *patch) batch."""

    def __init__(self, onnx_path: Path, input_name: str, output_name: str, *,
                 device: str = "cpu", threads: int | None = None,
                 cache_dir: Path | None = None, gpu: int = 0, quiet: bool = False, fp16: bool = False) -> None:
        """`gpu` is the CUDA device ordinal the GPU providers run on; `quiet` keeps
        onnxruntime's own log lines about a provider that fails to start off the console (the
        InputError raised then says why); `fp16` lets TensorRT build a half-precision engine."""
        self.onnx_path = Path(onnx_path)
        self.input_name = input_name
        self.output_name = output_name
        started = time.perf_counter()
        self._session = _open_session(self.onnx_path, device, threads, cache_dir, gpu, quiet, fp16)
        self._input_dims = _declared_dims(self._session, input_name, self.onnx_path)
        _check_output(self._session, output_name, self.onnx_path)
        self.name = f"onnxruntime[{self._session.get_providers()[0]}]"
        self.on_cpu = self._session.get_providers()[0] == "CPUExecutionProvider"
        log.info("%s loaded %s in %.2f s (%d intra-op threads)", self.name, self.onnx_path.name,
                 time.perf_counter() - started, _intra_op_threads(threads))

    def _run(self, batch: np.ndarray, borrow: bool = False) -> np.ndarray:
        try:
            (output,) = self._session.run([self.output_name], {self.input_name: batch})
        except Exception as error:  # onnxruntime raises its own exception types
            raise common.run_failed(self.onnx_path, batch.shape, self._input_dims, error) from error
        return common.as_model_output(output)


def _intra_op_threads(threads: int | None) -> int:
    return threads if threads else physical_cores()


# onnxruntime's log level that prints fatal errors only.
_FATAL_ONLY = 4


def _session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = _intra_op_threads(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = _FATAL_ONLY     # a failed call is reported once, as the runtime's own error
    return options


def _provider_list(device: str, cache_dir: Path | None, gpu: int = 0, fp16: bool = False) -> list[Any]:
    """Providers for `device`, the GPU ones on CUDA device `gpu`, TensorRT with an engine cache
    so later sessions start fast, and in half precision with `fp16`."""
    providers: list[Any] = []
    for name in PROVIDERS[device]:
        options: dict[str, Any] = {} if name == CPU else {"device_id": gpu}
        if name == TENSORRT:
            engines = str(cache_dir or common.default_cache_dir("tensorrt"))
            options.update(trt_engine_cache_enable=True, trt_engine_cache_path=engines,
                           trt_timing_cache_enable=True, trt_timing_cache_path=engines, trt_fp16_enable=fp16)
        providers.append((name, options) if options else name)
    return providers


def _open_session(onnx_path: Path, device: str, threads: int | None, cache_dir: Path | None,
                  gpu: int = 0, quiet: bool = False, fp16: bool = False) -> ort.InferenceSession:
    """An InferenceSession on `device`'s providers, or InputError when its first provider does not
    start, saying why (onnxruntime itself would fall back to the next provider quietly).

    What onnxruntime prints on stdout while the session is made (provider fallbacks) is caught,
    since stdout carries results, and goes into that error. `quiet` also sets onnxruntime's
    process-wide log level to fatal for that time and back to its default (warnings) after: meant
    for the runtime's own processes (CLI, Triton instances), not for a caller with its own level.
    The session never falls back to the CPU later, during a run: a provider failing then raises.
    """
    common.require_model_file(onnx_path)
    if quiet:
        ort.set_default_logger_severity(_LOG_FATAL)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            session = ort.InferenceSession(str(onnx_path), sess_options=_session_options(threads),
                                           providers=_provider_list(device, cache_dir, gpu, fp16))
    except Exception as error:  # onnxruntime raises its own exception types
        raise ModelError(
            f"onnxruntime cannot load model {onnx_path}: {common.one_line(error)}. The file may "
            "be truncated or not an ONNX model; re-export it (`python -m export build --onnx`)"
        ) from error
    finally:
        if quiet:
            ort.set_default_logger_severity(_LOG_WARNINGS)
    said = _printed_reason(printed.getvalue())
    _require_provider(session, device, gpu, said)
    if said:
        log.warning("onnxruntime: %s", said)
    session.disable_fallback()
    return session


def _printed_reason(printed: str) -> str:
    """onnxruntime's printed provider failure on one line, without its banner of asterisks and
    the provider options and fallback it lists after the reason."""
    lines = (line.strip("* ") for line in printed.splitlines())
    text = " ".join(line for line in lines if line not in ("", "EP Error"))
    return " ".join(text.split(" when using ")[0].split())


def _require_provider(session: ort.InferenceSession, device: str, gpu: int, said: str) -> None:
    """Raise InputError when the device's provider did not start: with what onnxruntime printed
    about it (`said`), else with what loading the provider's library tells."""
    wanted = PROVIDERS[device][0]
    if wanted in session.get_providers():
        return
    reason = f"onnxruntime says: {said}" if said else provider_failure(device, gpu=gpu)
    raise InputError(
        f"device {device!r}: onnxruntime {ort.__version__} lists {wanted} but could not start it on "
        f"GPU {gpu} ({reason}); install the GPU driver and the CUDA, cuDNN (and TensorRT) versions "
        "this onnxruntime build needs, or choose another --device"
    )


def _declared_dims(session: ort.InferenceSession, input_name: str,
                   onnx_path: Path) -> list[int | None] | None:
    """The graph's declared input shape, free dimensions as None; None when the rank is free."""
    inputs = {node.name: node for node in session.get_inputs()}
    common.require_name(onnx_path, "input", input_name, list(inputs))
    shape = inputs[input_name].shape
    return [d if isinstance(d, int) else None for d in shape] if shape else None


def _check_output(session: ort.InferenceSession, output_name: str, onnx_path: Path) -> None:
    names = [node.name for node in session.get_outputs()]
    common.require_name(onnx_path, "output", output_name, names)
