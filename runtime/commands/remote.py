"""`runtime predict SCAN --server ...`: one scan read and written here, predicted by a model that a
Triton server serves (runtime.triton.client). The outputs are the ones a local run writes."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import click
import numpy as np

from runtime.errors import InputError, ModelError
from runtime.io import OutputSet, check_writable, read_scan
from runtime.io.write import IMAGE_SUFFIXES, refuse_overwrites
from runtime.triton.adapter import LABELS, PROBABILITIES, SCORES


def run_remote(inputs: Sequence[Path], server: str, model: str, version: str | None, output: Path | None,
               probabilities: Path | None, timeout: float) -> None:
    from runtime.triton.client import ServedModel

    named = [(option, path) for option, path in (("--output", output), ("--probabilities", probabilities)) if path]
    if not named:
        raise InputError("give --output for the label map (and/or --probabilities).")
    refuse_overwrites(named, inputs)
    served = ServedModel(server, model, version, timeout)
    try:
        if LABELS not in served.outputs:
            raise InputError(f"{model} answers with {SCORES} (a classification or regression model); run it "
                             "locally (--model FOLDER) for now: over --server only segmentation models are run.")
        for _, path in named:
            check_writable(path, IMAGE_SUFFIXES)
        scan = read_scan(inputs)
        wanted = [name for name, path in ((LABELS, output), (PROBABILITIES, probabilities)) if path is not None]
        answer = checked(served.infer(scan.array_zyx, scan.spacing_zyx, wanted), scan.array_zyx.shape[1:], model)
    finally:
        served.close()
    with OutputSet() as outputs:
        if output is not None:
            outputs.image(answer[LABELS], scan.reference, output)
        if probabilities is not None:
            outputs.image(answer[PROBABILITIES], scan.reference, probabilities)
    click.echo(f"answered by {model} version {served.answered_version} at {server}")
    for _, path in named:
        click.echo(f"wrote {path}")


def checked(answer: dict[str, np.ndarray], shape: tuple[int, ...], model: str) -> dict[str, np.ndarray]:
    """The server's arrays held to what a segmentation returns for a scan of spatial `shape`:
    LABELS unsigned integers (*shape), PROBABILITIES float32 (K, *shape) in [0, 1]; ModelError
    otherwise (a server that answers otherwise is not running this runtime's model.py)."""
    problems = []
    labels = answer.get(LABELS)
    if labels is not None and (labels.dtype not in (np.uint8, np.uint16) or labels.shape != shape):
        problems.append(f"{LABELS} {labels.dtype} {labels.shape}, expected uint8/uint16 {shape}")
    probabilities = answer.get(PROBABILITIES)
    if probabilities is not None:
        if probabilities.dtype != np.float32 or probabilities.ndim != len(shape) + 1 or probabilities.shape[1:] != shape:
            problems.append(f"{PROBABILITIES} {probabilities.dtype} {probabilities.shape}, expected float32 (K, *{shape})")
        elif not (np.isfinite(probabilities).all() and probabilities.min() >= 0 and probabilities.max() <= 1):
            problems.append(f"{PROBABILITIES} outside [0, 1]")
    if problems:
        raise ModelError(f"the server's answer for {model} does not fit the scan: {'; '.join(problems)}.")
    return {name: np.ascontiguousarray(array) for name, array in answer.items()}
