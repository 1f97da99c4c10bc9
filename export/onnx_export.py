"""One trained fold to one ONNX file, and the check that onnxruntime computes what torch computes.

Arrays are model arrays, (batch, channels, *patch), in the model's own axis order. The exported
graph has one input "input" and one output "output"; the batch axis is dynamic and named "batch".
The spatial axes are dynamic too (named by the model's axis order, "x", "y", "z" for xyz; by
default "z", "y", "x", the last `dims` of them) unless
`dynamic_spatial=False`: every architecture of `trainer.models` exports and runs at any size its
forward pass accepts (multiples of 2**depth for the segmentation networks), so one file serves
every patch size the manifest may name, and a segmentation output shares its spatial axis names
with the input.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from torch.nn import functional as F

from runtime.errors import ModelError

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

log = logging.getLogger(__name__)

OPSET = 17  # recent enough for onnxruntime, OpenVINO and TensorRT
DEFAULT_TOLERANCE = 1e-4  # largest accepted |torch - onnxruntime| difference, in output units
INPUT = "input"
OUTPUT = "output"
BATCH = "batch"
SPATIAL_NAMES = ("z", "y", "x")
SMOOTH_FACTOR = 4  # a smooth parity input is noise on a grid this many times coarser, interpolated


@dataclass(frozen=True)
class Parity:
    """How far onnxruntime's outputs were from torch's over the checked inputs.

    `max_abs_diff` is the largest |torch - onnxruntime| over every output value of every input;
    `worst_input` the index of the input where the largest scaled difference occurred;
    `max_abs_output` the largest |torch| output; `max_scaled_diff` the largest |torch - onnxruntime|
    / max(1, |torch|) of any value, which `tolerance` bounds: output units up to outputs of 1, and
    relative beyond (single precision holds seven digits, so a regression output of 282 differs from
    torch by ~1e-4 and computes the same, while each value is held to its own size, not to the
    largest output of another channel).
    """

    max_abs_diff: float
    inputs: int
    worst_input: int
    max_abs_output: float
    tolerance: float
    max_scaled_diff: float = 0.0


def export_fold(model: torch.nn.Module, example: torch.Tensor, path: Path, *, opset: int = OPSET,
                dynamic_spatial: bool = True, axis_order: str | None = None) -> onnx.ModelProto:
    """Export `model` (put in eval mode) traced on `example` (batch, channels, *patch) to `path`,
    its free spatial axes named by `axis_order` (the model's, "xyz" say; z, y, x by default).

    The file is written under a temporary name, checked with onnx.checker (full check) and then
    renamed, so a failed export leaves nothing at `path`. Returns the loaded graph.
    Raises ModelError when torch cannot export the model or the result fails the checker.
    """
    path = Path(path)
    model.eval()
    with torch.no_grad():
        output_rank = model(example).dim()
    axes = dynamic_axes(example.dim(), output_rank, dynamic_spatial, axis_order)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        _torch_export(model, example, temporary, opset, axes)
        graph = _load_checked(temporary, path)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    log.info("exported %s (opset %d, input %s)", path, opset, tuple(example.shape))
    return graph


def dynamic_axes(input_rank: int, output_rank: int, dynamic_spatial: bool,
                 axis_order: str | None = None) -> dict[str, dict[int, str]]:
    """torch.onnx.export's dynamic_axes: the batch axis, and the spatial axes when asked, named by
    `axis_order` (one letter per spatial axis; z, y, x where None), so that a client of the graph
    reads the order the model takes its axes in.

    An output of the input's rank (segmentation) shares the input's spatial axis names; a
    (batch, K) output (classification, regression) has only the batch axis free.
    """
    spatial = input_rank - 2
    order = tuple(axis_order) if axis_order is not None and len(axis_order) == spatial else SPATIAL_NAMES[3 - spatial:]
    names = {2 + index: name for index, name in enumerate(order)} if dynamic_spatial else {}
    output_names = names if output_rank == input_rank else {}
    return {INPUT: {0: BATCH, **names}, OUTPUT: {0: BATCH, **output_names}}


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The TorchScript exporter's deprecation and tracer warnings are not the user's concern, nor its
    note that instance normalisation uses the input's statistics (as it does in eval mode too)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*'instance_norm' is set to train=True", category=UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def _torch_export(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int,
                  axes: dict[str, dict[int, str]]) -> None:
    try:
        with torch.no_grad(), _quiet_export():
            torch.onnx.export(model, (example,), str(path), opset_version=opset, dynamo=False,
                              input_names=[INPUT], output_names=[OUTPUT], dynamic_axes=axes)
    except (RuntimeError, ValueError, TypeError, torch.onnx.errors.OnnxExporterError) as error:
        raise ModelError(
            f"torch cannot export {type(model).__name__} to ONNX opset {opset} for {path.name}: "
            f"{_one_line(error)}. Check that the architecture uses only ONNX-exportable operations"
        ) from error


def _load_checked(written: Path, final: Path) -> onnx.ModelProto:
    graph = onnx.load(str(written))
    try:
        onnx.checker.check_model(graph, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ModelError(
            f"the ONNX export for {final} fails onnx.checker: {_one_line(error)}; "
            "export with another opset or report the architecture"
        ) from error
    return graph


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:500] or type(error).__name__


def check_parity(model: torch.nn.Module, onnx_path: Path, inputs: Sequence[np.ndarray],
                 tolerance: float = DEFAULT_TOLERANCE, *, threads: int | None = None,
                 shown: str | None = None) -> Parity:
    """Run torch (eval, no_grad) and onnxruntime (CPU) on each float32 (B, C, *patch) input.

    Raises ValueError for no inputs or a negative tolerance, and ModelError naming the file (or
    `shown`, where the file is a staging one the user never sees), the largest difference and the
    tolerance when the outputs differ by more than `tolerance`, differ in shape, or are not finite.
    """
    if not inputs:
        raise ValueError("check_parity needs at least one input array")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
    onnx_path = Path(onnx_path)
    session = _session(onnx_path, threads)
    name = shown or str(onnx_path)
    model.eval()
    worst, scaled_worst, worst_input, largest = 0.0, 0.0, 0, 0.0
    for index, array in enumerate(inputs):
        expected, actual = _both_outputs(model, session, name, array)
        difference = _max_abs_difference(expected, actual, name, index)
        scaled = float((np.abs(expected.astype(np.float64) - actual) / np.maximum(1.0, np.abs(expected))).max(
            initial=0.0))
        if scaled > scaled_worst or index == 0:
            scaled_worst, worst_input = scaled, index
        worst = max(worst, difference)
        largest = max(largest, float(np.abs(expected).max(initial=0.0)))
    parity = Parity(worst, len(inputs), worst_input, largest, float(tolerance), scaled_worst)
    _require_within(parity, name)
    return parity


def _session(onnx_path: Path, threads: int | None) -> InferenceSession:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
        raise ModelError(f"onnxruntime cannot load {onnx_path}: {_one_line(error)}; export the fold again") from error


def _both_outputs(model: torch.nn.Module, session: InferenceSession, onnx_path: str,
                  array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(torch output, onnxruntime output) for one input array."""
    batch = np.ascontiguousarray(array, dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    try:
        actual = session.run([OUTPUT], {INPUT: batch})[0]
    except Exception as error:  # onnxruntime's own error types
        raise ModelError(
            f"onnxruntime fails on {onnx_path} with an input of shape {batch.shape}: {_one_line(error)}"
        ) from error
    return expected, actual


def _max_abs_difference(expected: np.ndarray, actual: np.ndarray, onnx_path: str, index: int) -> float:
    if expected.shape != actual.shape:
        raise ModelError(
            f"{onnx_path} gives output shape {actual.shape} for parity input {index} where torch gives "
            f"{expected.shape}; export the fold again"
        )
    if not (np.isfinite(expected).all() and np.isfinite(actual).all()):
        raise ModelError(
            f"non-finite outputs on parity input {index} (torch finite: {bool(np.isfinite(expected).all())}, "
            f"{onnx_path}: {bool(np.isfinite(actual).all())}); check the model's weights"
        )
    return float(np.abs(expected.astype(np.float64) - actual).max(initial=0.0))


def _require_within(parity: Parity, onnx_path: str) -> None:
    if parity.max_scaled_diff <= parity.tolerance:
        return
    raise ModelError(
        f"{onnx_path} differs from the torch model by up to {parity.max_abs_diff:.3g}, {parity.max_scaled_diff:.3g} "
        f"relative to outputs beyond 1 (parity input {parity.worst_input} of {parity.inputs}; largest torch output "
        f"{parity.max_abs_output:.3g}), above the tolerance {parity.tolerance:.3g}; the export does not compute what "
        "torch computes"
    )


def parity_inputs(shape: Sequence[int], *, seed: int = 0) -> list[np.ndarray]:
    """Two float32 arrays of `shape` (B, C, *patch) to check parity on, reproducible from `seed`.

    The first is white noise (standard normal). The second is smooth, like a z-scored scan: noise
    on a grid SMOOTH_FACTOR times coarser, interpolated (bilinear/trilinear) to `shape`, then
    standardised per image and channel.
    """
    shape = tuple(int(size) for size in shape)
    if len(shape) not in (4, 5):
        raise ValueError(f"parity inputs are (batch, channels, *patch) with 2 or 3 patch axes, got {shape}")
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=generator)
    coarse_size = [max(2, math.ceil(size / SMOOTH_FACTOR)) for size in shape[2:]]
    coarse = torch.randn((*shape[:2], *coarse_size), generator=generator)
    mode = "bilinear" if len(shape) == 4 else "trilinear"
    smooth = F.interpolate(coarse, size=shape[2:], mode=mode, align_corners=False)
    axes = tuple(range(2, len(shape)))
    smooth = (smooth - smooth.mean(dim=axes, keepdim=True)) / smooth.std(dim=axes, keepdim=True).clamp_min(1e-6)
    return [noise.numpy(), smooth.numpy()]
