"""Serving a model directory behind Triton Inference Server's Python backend.

`adapter` holds the pure part (request arrays -> Scan -> prediction -> named output arrays) and is
used without Triton; `model` is the `model.py` that Triton loads from each version folder.
"""
from runtime.triton.adapter import (
    IMAGE, LABELS, PROBABILITIES, SCAN, SCORES, SPACING, choose_device, label_dtype, output_names, predict_arrays,
    predict_request, prediction_outputs, scan_from_arrays, scan_from_bytes,
)

__all__ = [
    "IMAGE", "LABELS", "PROBABILITIES", "SCAN", "SCORES", "SPACING", "choose_device", "label_dtype", "output_names",
    "predict_arrays", "predict_request", "prediction_outputs", "scan_from_arrays", "scan_from_bytes",
]
