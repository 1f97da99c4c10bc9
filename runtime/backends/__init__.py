"""Model execution backends: callables mapping a float32 (B, C, *patch) batch to the model output.

`open_backend` picks one by device name:

- "cpu": onnxruntime on the CPU provider;
- "cuda", "tensorrt": onnxruntime on the GPU providers (needs `onnxruntime-gpu`);
- "openvino": OpenVINO on the CPU (needs `openvino`), markedly faster than onnxruntime there;
- "auto": the GPU when onnxruntime lists a GPU provider, else OpenVINO when it is installed,
  else onnxruntime on the CPU.
"""
from __future__ import annotations

import functools
import importlib
import logging
from pathlib import Path
from typing import Collection, Protocol

import numpy as np

from runtime.backends import onnx_runtime
from runtime.errors import InputError, install_hint
from runtime.backends.execution import Progress
from runtime.window import Merger, Plan, WindowSource

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "tensorrt", "openvino")

_INSTALL_OPENVINO = install_hint("openvino")


class Backend(Protocol):
    """A loaded model: float32 (B, C, *patch) batch in, contiguous float32 model output out."""

    name: str
    on_cpu: bool  # the model computes on the CPU (not on a GPU), so it keeps the cores busy

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...

    def borrow(self, batch: np.ndarray) -> np.ndarray:
        """As calling the backend, but the output may be memory that the backend reuses at its
        next call, saving a copy: the caller must be done with it before calling again."""
        ...

    def run(self, source: WindowSource, plan: Plan, merger: Merger, progress: Progress | None = None) -> None:
        """Run every pass of `plan`: the windows from `source`, the outputs into `merger`
        (checked by it), `progress(n)` after each n windows (`runtime.backends.execution`)."""
        ...

    def prepare(self, batch_shape: tuple[int, ...]) -> None:
        """Make ready now what `run` needs for batches of `batch_shape` (B, C, *patch), so that
        the first image does not wait for it."""
        ...


@functools.lru_cache(maxsize=1)
def openvino_available() -> bool:
    """Whether the optional `openvino` package can be imported."""
    try:
        importlib.import_module("openvino")
    except ImportError:
        return False
    return True


def available_backends() -> list[str]:
    """The concrete devices of DEVICES that can run here ("auto" is always usable)."""
    devices = ["cpu"]
    if openvino_available():
        devices.append("openvino")
    return devices + onnx_runtime.gpu_devices()


def open_backend(onnx_path: Path, input_name: str, output_name: str, *, device: str = "auto",
                 threads: int | None = None, cache_dir: Path | None = None, gpu: int = 0,
                 fp16: bool = False) -> Backend:
    """Load the ONNX model at `onnx_path` on `device` (one of DEVICES), on the CUDA device
    numbered `gpu` when it runs on a GPU (as CUDA counts the devices this process can see).
    `fp16`: TensorRT may build its engine in half precision (where the model's manifest allows
    it: export checked its labels in half precision).

    `threads` caps the CPU threads (default: onnxruntime uses the physical cores, OpenVINO its
    own choice); `cache_dir` holds compiled models (OpenVINO) or engines (TensorRT) so a second
    process starts fast (default: `$XDG_CACHE_HOME/medflow/<backend>`).
    Raises InputError for an unknown or unavailable device, ModelError for a model that does
    not load or lacks the named input or output.
    """
    if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
        raise InputError(f"GPU number {gpu!r} is not a CUDA device ordinal; give 0, 1, ...")
    if device == "auto":
        return _open_auto(Path(onnx_path), input_name, output_name, threads, cache_dir, gpu, fp16)
    _require_available(device)
    return _open(Path(onnx_path), input_name, output_name, device, threads, cache_dir, gpu, fp16=fp16)


def _require_available(device: str) -> None:
    if device not in DEVICES:
        raise InputError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    available = available_backends()
    if device in available:
        return
    if device == "openvino":
        remedy = _INSTALL_OPENVINO
    else:
        shadowed = onnx_runtime.shadowed_gpu_build()
        if shadowed:
            raise InputError(f"device {device!r} is not available here: {shadowed}")
        remedy = ("replace the CPU build of onnxruntime by the GPU build: "
                  + onnx_runtime.gpu_install_command(onnx_runtime.installed_builds()))
        if device == "tensorrt":
            remedy += ", and install TensorRT"
    raise InputError(
        f"device {device!r} is not available here (available: {', '.join(available)}); "
        f"to use it, {remedy}"
    )


@functools.lru_cache(maxsize=1)
def _warn_if_gpu_build_shadowed() -> None:
    """Say once per process that "auto" cannot see the GPU because onnxruntime's GPU build is
    overwritten by another build installed beside it."""
    shadowed = onnx_runtime.shadowed_gpu_build()
    if shadowed:
        log.warning("device 'auto' cannot use the GPU: %s", shadowed)


def auto_order() -> list[str]:
    """Devices "auto" tries, best first."""
    gpus = onnx_runtime.gpu_devices()
    if not gpus:
        _warn_if_gpu_build_shadowed()
    order = ["tensorrt"] if "tensorrt" in gpus else []
    order += ["cuda"] if "cuda" in gpus else []
    return order + cpu_order()


# The backend each CPU --device opens, by its name (Backend.name).
CPU_BACKENDS = {"openvino": "openvino[CPU]", "cpu": "onnxruntime[CPUExecutionProvider]"}


def cpu_order() -> list[str]:
    """The CPU devices installed, fastest first: OpenVINO, then onnxruntime."""
    return (["openvino"] if openvino_available() else []) + ["cpu"]


def measured_devices(backends: Collection[str]) -> list[str]:
    """The CPU --device values that open the named `backends` (an int8 version's, which its labels
    were checked on when it was made), the installed ones first, fastest first."""
    installed = cpu_order()
    order = installed + [device for device in CPU_BACKENDS if device not in installed]
    return [device for device in order if CPU_BACKENDS[device] in backends]


def _open_auto(onnx_path: Path, input_name: str, output_name: str, threads: int | None,
               cache_dir: Path | None, gpu: int, fp16: bool = False) -> Backend:
    """The first device of `auto_order` that starts; a GPU provider that is listed but cannot
    start (no driver, missing CUDA libraries) is skipped with one warning that says why, in
    place of onnxruntime's own log lines."""
    *preferred, last = auto_order()
    for device in preferred:
        try:
            return _open(onnx_path, input_name, output_name, device, threads, cache_dir, gpu, quiet=True, fp16=fp16)
        except InputError as error:
            log.warning("device 'auto': skipping %s: %s", device, error)
    return _open(onnx_path, input_name, output_name, last, threads, cache_dir)


def _open(onnx_path: Path, input_name: str, output_name: str, device: str, threads: int | None,
          cache_dir: Path | None, gpu: int = 0, quiet: bool = False, fp16: bool = False) -> Backend:
    if device == "openvino":
        from runtime.backends.openvino_backend import OpenVinoBackend

        return OpenVinoBackend(onnx_path, input_name, output_name, threads=threads,
                               cache_dir=cache_dir)
    return onnx_runtime.OnnxRuntimeBackend(onnx_path, input_name, output_name, device=device,
                                           threads=threads, cache_dir=cache_dir, gpu=gpu, quiet=quiet,
                                           fp16=fp16)
