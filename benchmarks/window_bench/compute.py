"""The model's compute alone: forward passes over as many windows as A runs, on windows gathered
beforehand, with nothing cut out or stitched.

  D  on the engine A's sliding window uses: for OpenVINO its throughput streams with every
     request in flight (as A keeps them); for onnxruntime the backend called batch by batch
     (`backend.borrow`), which is how A calls it
  D1 the OpenVINO backend called one batch at a time on its latency configuration (for context:
     how a plain loop would call the model)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from runtime.io import read_scan
from runtime.predict import Model
from runtime.window import Window, window_grid

from window_bench.data import zscore_nonzero
from window_bench.options import ENGINES, OVERLAP, PATCH


@dataclass(frozen=True)
class Windows:
    """Real preprocessed windows to feed the model alone, and how many windows a case has."""

    batches: tuple[np.ndarray, ...]   # float32 (B, C, P, P, P), a few distinct ones, used in turn
    count: int                        # windows the sliding window runs on the case

    def calls(self, batch_size: int) -> int:
        return math.ceil(self.count / batch_size)

    def batch(self, index: int) -> np.ndarray:
        return self.batches[index % len(self.batches)]


Compute = Callable[[Windows, int], None]


def model_input(inputs: Sequence[Path]) -> np.ndarray:
    """The case as the packaged model sees it: read by the runtime, z-scored over the non-zero
    voxels (the model's one step), padded at the end of any axis shorter than the patch."""
    array = zscore_nonzero(read_scan(inputs).array_zyx)
    short = [(0, max(0, PATCH - size)) for size in array.shape[1:]]
    return np.pad(array, [(0, 0), *short]) if any(after for _, after in short) else array


def gathered(image: np.ndarray, windows: Sequence[Window]) -> np.ndarray:
    return np.ascontiguousarray(np.stack([image[(slice(None), *window)] for window in windows]),
                                dtype=np.float32)


def gathered_windows(inputs: Sequence[Path], batch_size: int, distinct: int = 4) -> Windows:
    """`distinct` batches of windows spread over the case, and the case's window count."""
    image = model_input(inputs)
    grid = window_grid(image.shape[1:], (PATCH,) * 3, OVERLAP)
    step = max(1, len(grid) // (distinct * batch_size))
    chosen = grid[::step][: distinct * batch_size]
    starts = range(0, len(chosen) - batch_size + 1, batch_size)
    return Windows(tuple(gathered(image, chosen[i:i + batch_size]) for i in starts), len(grid))


def one_at_a_time(backend: Any, windows: Windows, batch_size: int) -> None:
    """The backend's forward passes, one batch at a time, each output lent (not copied)."""
    for index in range(windows.calls(batch_size)):
        backend.borrow(windows.batch(index))


class StreamsCompute:
    """The forward passes on OpenVINO's throughput streams, as A's sliding window runs them there
    (the backend's `streams_config`: its threads and precision with the throughput hint; two
    requests per stream, all kept in flight)."""

    def __init__(self, onnx_path: Path, backend: Any) -> None:
        from runtime.backends.openvino_backend import DEVICE, shared_core

        core = shared_core()
        self.compiled = core.compile_model(core.read_model(str(onnx_path)), DEVICE, backend.streams_config)
        count = 2 * int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.requests = [self.compiled.create_infer_request() for _ in range(count)]
        self.streams = int(self.compiled.get_property("NUM_STREAMS"))

    def __call__(self, windows: Windows, batch_size: int) -> None:
        import openvino as ov

        tensors = [ov.Tensor(batch, shared_memory=True) for batch in windows.batches]
        for index in range(windows.calls(batch_size)):
            request = self.requests[index % len(self.requests)]
            if index >= len(self.requests):
                request.wait()
            request.set_input_tensor(tensors[index % len(tensors)])
            request.start_async()
        for request in self.requests:
            request.wait()


def device_compute(model: Model, onnx_path: Path, device: str) -> tuple[str, Compute]:
    """D's label and function for the backend `device` of `model`."""
    if device == "openvino":
        streams = StreamsCompute(onnx_path, model.backend)
        return f"D compute alone (openvino, {streams.streams} streams, {len(streams.requests)} in flight)", streams
    return (f"D compute alone ({ENGINES[device]}, batch by batch)",
            lambda windows, size: one_at_a_time(model.backend, windows, size))


def torch_compute(net: torch.nn.Module, windows: Windows, batch_size: int) -> None:
    with torch.inference_mode():
        for index in range(windows.calls(batch_size)):
            net(torch.from_numpy(windows.batch(index)))


def forward_difference(backend: Any, net: torch.nn.Module, windows: Windows) -> tuple[float, float]:
    """Largest |logit| difference between a runtime backend and torch on one real batch, and
    the largest |logit| there."""
    batch = windows.batches[0]
    ours = backend(batch)
    with torch.inference_mode():
        theirs = net(torch.from_numpy(batch)).numpy()
    return float(np.abs(ours - theirs).max()), float(np.abs(theirs).max())
