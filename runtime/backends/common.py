"""Helpers shared by the model backends: cache folders, name and shape checks.

Shapes here are model array shapes, (batch, channels, *patch), in the model's own axis order.
A dimension given as None is free (dynamic) in the model graph.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from runtime.errors import ModelError
from runtime.backends.execution import Progress, run_plan
from runtime.window import Merger, Plan, WindowSource

Dims = Sequence[int | None]


def default_cache_dir(kind: str) -> Path:
    """`$XDG_CACHE_HOME/medflow/<kind>`, with `~/.cache` when XDG_CACHE_HOME is unset."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "medflow" / kind


def require_model_file(onnx_path: Path) -> None:
    """Raise ModelError when the model file does not exist."""
    if not onnx_path.is_file():
        raise ModelError(
            f"model file {onnx_path} does not exist; check the model folder or re-export the model"
        )


def require_name(onnx_path: Path, kind: str, wanted: str, present: Sequence[str]) -> None:
    """Raise ModelError when `wanted` is not among the graph's `kind` names ("input"/"output")."""
    if wanted in present:
        return
    listed = ", ".join(repr(name) for name in present) or "none"
    raise ModelError(
        f"model {onnx_path} has no {kind} named {wanted!r}; its {kind}s are: {listed}. "
        f"Fix the {kind} name in the manifest or re-export the model"
    )


def shape_text(dims: Dims) -> str:
    """A shape as text, with free dimensions written as '?'."""
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def check_input_shape(onnx_path: Path, given: tuple[int, ...], expected: Dims | None) -> None:
    """Raise ModelError when `given` does not fit the graph's declared input shape.

    The batch dimension is not checked: a fixed batch is handled by `run_in_fixed_batches`.
    """
    if expected is None:
        return
    fits = len(given) == len(expected) and all(
        e is None or e == g for g, e in zip(given[1:], expected[1:])
    )
    if not fits:
        raise ModelError(
            f"model {onnx_path} expects input shape {shape_text(expected)} "
            f"(batch, channels, *patch) but was given {shape_text(given)}; check the manifest's "
            "channels and patch size against the exported model"
        )


def one_line(error: Exception) -> str:
    """A backend's (often multi-line) exception message on one line."""
    return " ".join(str(error).split())


# Characters of a backend's own reason kept in a refusal (some dump a whole graph node).
MAX_REASON_CHARS = 400


class RunFailed(ModelError):
    """A forward pass the backend rejected; `reason` is the backend's own, on one line."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def run_failed(onnx_path: Path, given: tuple[int, ...], expected: Dims | None,
               error: Exception) -> RunFailed:
    """The error for a forward pass that the backend rejected."""
    declared = "unknown" if expected is None else shape_text(expected)
    reason = one_line(error)
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[:MAX_REASON_CHARS - 1] + "…"
    if out_of_memory(reason):
        return RunFailed(f"model {onnx_path} ran out of memory on an input of shape {shape_text(given)} ({reason}): "
                         "its graph allocates more than this machine holds; lower window.batch_size, or check what "
                         "the graph builds (a node that expands or tiles its input)", reason)
    return RunFailed(
        f"model {onnx_path} failed on an input of shape {shape_text(given)} "
        f"(declared input shape {declared}): {reason}; the network does not take this input: check the "
        "manifest's channels and window.patch_size (a network that halves its input n times needs each side to be "
        "a multiple of 2^n), or export the model again", reason
    )


def out_of_memory(reason: str) -> bool:
    """Whether a backend's error says an allocation failed (onnxruntime's "Failed to allocate",
    OpenVINO's std::bad_alloc), not that the graph or its input is wrong."""
    return any(sign in reason for sign in ("bad_alloc", "Failed to allocate", "out of memory", "Out of memory"))


def as_model_input(batch: np.ndarray) -> np.ndarray:
    """The batch as a C-contiguous float32 array (no copy when it already is one)."""
    return np.ascontiguousarray(batch, dtype=np.float32)


def as_model_output(output: np.ndarray) -> np.ndarray:
    """The model output as a C-contiguous float32 array that owns its memory."""
    result = np.ascontiguousarray(output, dtype=np.float32)
    if result is output and not result.flags.owndata:
        result = result.copy()
    return result


def fixed_batch(dims: Dims | None) -> int | None:
    """The graph's fixed batch size, or None when the batch dimension (or the rank) is free."""
    return dims[0] if dims else None


def run_in_fixed_batches(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray,
                         fixed_size: int | None) -> np.ndarray:
    """Run `batch` through a model whose batch size is fixed at `fixed_size` (None: free).

    The batch is cut into chunks of the fixed size; the last chunk is padded with zeros and its
    padding dropped from the output.
    """
    count = batch.shape[0]
    if fixed_size is None or fixed_size == count:
        return run(batch)
    outputs = []
    for start in range(0, count, fixed_size):
        chunk = batch[start:start + fixed_size]
        real = chunk.shape[0]
        if real < fixed_size:
            padding = np.zeros((fixed_size - real, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, padding])
        outputs.append(run(np.ascontiguousarray(chunk))[:real])
    return np.concatenate(outputs)


class BatchRunner:
    """What every backend does with a batch before its engine runs it: float32, a shape check
    against the graph's declared input, and splitting for graphs with a fixed batch size.

    A backend sets `onnx_path` and `_input_dims` and implements `_run(batch) -> output`."""

    onnx_path: Path
    _input_dims: Dims | None

    def _run(self, batch: np.ndarray, borrow: bool = False) -> np.ndarray:
        """The output of one forward pass; with `borrow` it may be the engine's own memory."""
        raise NotImplementedError

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = as_model_input(batch)
        check_input_shape(self.onnx_path, batch.shape, self._input_dims)
        return run_in_fixed_batches(self._run, batch, fixed_batch(self._input_dims))

    def borrow(self, batch: np.ndarray) -> np.ndarray:
        """As calling the backend, but the output may be memory that the engine reuses at its next
        call (no copy); the caller must be done with it before calling again."""
        batch = as_model_input(batch)
        check_input_shape(self.onnx_path, batch.shape, self._input_dims)
        fixed = fixed_batch(self._input_dims)
        if fixed is None or fixed == batch.shape[0]:
            return self._run(batch, borrow=True)
        return run_in_fixed_batches(self._run, batch, fixed)  # the chunks' outputs are joined: copies

    def run(self, source: WindowSource, plan: Plan, merger: Merger, progress: Progress | None = None) -> None:
        """Run every pass of `plan` over `source` into `merger` (`runtime.backends.execution`): a
        model on the CPU alone between gathering and stitching, with its output lent (`borrow`);
        a model on a GPU with gathering and stitching beside it."""
        if self.on_cpu:
            run_plan(self.borrow, source, plan, merger, progress)
        else:
            run_plan(self, source, plan, merger, progress, beside_model=True)

    def prepare(self, batch_shape: tuple[int, ...]) -> None:
        """Nothing to make ready where the backend takes gathered batches only."""
