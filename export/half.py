"""Whether a model may run in half precision: its graph converted to float16 (inputs and outputs
kept float32, onnxconverter-common) and run beside the float32 graph by onnxruntime on the CPU, on
the same windows. It is allowed where the labels (the argmax over the output channels, per voxel
or per window) agree on at least FP16_MIN_AGREEMENT of them and every output is finite; the
manifest's `onnx.fp16` says so and its provenance keeps the figures (`fp16_check`). A GPU backend
reads it: TensorRT builds a half-precision engine only for a model that passed.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

FP16_MIN_AGREEMENT = 0.999


def fp16_check(onnx_path: Path, input_name: str, output_name: str, windows: Sequence[np.ndarray]) -> dict[str, Any]:
    """{"allowed": bool, ...}: the label agreement, the largest |float32 - float16| output and the
    windows compared; or, where the graph cannot be converted or run in half precision, why not."""
    import onnx
    import onnxruntime as ort

    try:
        from onnxconverter_common import float16
    except ImportError:
        return {"allowed": False, "reason": "onnxconverter-common is not installed (pip install 'medflow[export]')"}
    model = onnx.load(str(onnx_path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            half = float16.convert_float_to_float16(model, keep_io_types=True)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        full = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        reduced = ort.InferenceSession(half.SerializeToString(), options, providers=["CPUExecutionProvider"])
        pairs = [(full.run([output_name], {input_name: w})[0], reduced.run([output_name], {input_name: w})[0])
                 for w in windows]
    except Exception as error:  # onnx and onnxruntime raise their own exception types
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return {"allowed": False, "reason": f"the graph does not run in half precision: {reason}"}
    return _compare(pairs)


def _compare(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    finite = all(np.isfinite(b).all() for _, b in pairs)
    difference = max(float(np.abs(a.astype(np.float64) - b).max()) for a, b in pairs) if finite else float("inf")
    agree = sum(int(np.count_nonzero(_labels(a) == _labels(b))) for a, b in pairs)
    total = sum(_labels(a).size for a, _ in pairs)
    agreement = agree / total
    record: dict[str, Any] = {"allowed": finite and agreement >= FP16_MIN_AGREEMENT,
                              "label_agreement": round(agreement, 6), "max_abs_difference": difference if finite else None,
                              "windows": len(pairs), "min_agreement": FP16_MIN_AGREEMENT}
    if not finite:
        record["reason"] = "the half-precision graph gives NaN or infinite outputs"
    elif not record["allowed"]:
        record["reason"] = f"labels agree on {agreement:.4%} only, under {FP16_MIN_AGREEMENT:.1%}"
    return record


def _labels(output: np.ndarray) -> np.ndarray:
    """The argmax over channels (axis 1); a single channel's sign (a regression or sigmoid output)."""
    return np.argmax(output, axis=1) if output.shape[1] > 1 else output[:, 0] > 0
