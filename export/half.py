"""Whether a model may run in half precision: its graph converted to float16 (inputs and outputs
kept float32, onnxconverter-common) and run beside the float32 graph by onnxruntime on the CPU, on
the same windows. It is allowed where the labels, made as the runtime makes them (the manifest's
activation, then its label rule: an argmax, or foreground channels over the threshold; for a
regression, each value within 1 % of the largest), agree on at least FP16_MIN_AGREEMENT of the
voxels (or windows) and every output is finite; the
manifest's `onnx.fp16` says so and its provenance keeps the figures (`fp16_check`). A GPU backend
reads it: TensorRT builds a half-precision engine only for a model that passed.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime.errors import install_hint
from runtime.postprocess import activate

FP16_MIN_AGREEMENT = 0.999
REGRESSION_TOLERANCE = 0.01


@dataclass(frozen=True)
class LabelRule:
    """How the runtime turns the model's output into labels: the manifest's task, activation,
    label rule and threshold, and how many classes there are."""

    task: str
    activation: str
    label_rule: str
    threshold: float
    classes: int


def fp16_check(onnx_path: Path, input_name: str, output_name: str, windows: Sequence[np.ndarray],
               rule: LabelRule) -> dict[str, Any]:
    """{"allowed": bool, ...}: the label agreement, the largest |float32 - float16| output and the
    windows compared; or, where the graph cannot be converted or run in half precision, why not."""
    import onnx
    import onnxruntime as ort

    try:
        from onnxconverter_common import float16
    except ImportError:
        return {"allowed": False, "reason": f"onnxconverter-common is not installed ({install_hint('export')})"}
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
    return _compare(pairs, rule)


def _compare(pairs: list[tuple[np.ndarray, np.ndarray]], rule: LabelRule) -> dict[str, Any]:
    finite = all(np.isfinite(b).all() for _, b in pairs)
    difference = max(float(np.abs(a.astype(np.float64) - b).max()) for a, b in pairs) if finite else float("inf")
    labelled = [(_labels(a, rule, a), _labels(b, rule, a)) for a, b in pairs] if finite else []
    agree = sum(int(np.count_nonzero(x == y)) for x, y in labelled)
    total = max(1, sum(x.size for x, _ in labelled))
    agreement = agree / total
    record: dict[str, Any] = {"allowed": finite and agreement >= FP16_MIN_AGREEMENT,
                              "label_agreement": round(agreement, 6), "max_abs_difference": difference if finite else None,
                              "windows": len(pairs), "min_agreement": FP16_MIN_AGREEMENT}
    if not finite:
        record["reason"] = "the half-precision graph gives NaN or infinite outputs"
    elif not record["allowed"]:
        record["reason"] = f"labels agree on {agreement:.4%} only, under {FP16_MIN_AGREEMENT:.1%}"
    return record


def _labels(output: np.ndarray, rule: LabelRule, reference: np.ndarray) -> np.ndarray:
    """Labels of a batch of outputs (B, K, ...) as the runtime makes them: for a regression, whether
    each value lies within REGRESSION_TOLERANCE of the largest |value| of the float32 `reference`
    from the reference's own value (so the reference labels itself all true)."""
    if rule.task == "regression":
        scale = REGRESSION_TOLERANCE * max(1.0, float(np.abs(reference).max()))
        return np.abs(output.astype(np.float64) - reference) <= scale
    values = activate(np.array(output, dtype=np.float32), rule.activation, axis=1)
    if rule.label_rule == "argmax":
        return np.argmax(values, axis=1)
    first = values.shape[1] - (rule.classes - 1)
    index = np.zeros((values.shape[0], *values.shape[2:]), dtype=np.int32)
    for position in range(1, rule.classes):
        index[values[:, first + position - 1] > rule.threshold] = position
    return index
