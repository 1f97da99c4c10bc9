"""`runtime predict SCAN --server ...`: one scan read and written here, predicted by a model that a
Triton server serves (runtime.triton.client). The outputs are the ones a local run writes."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import click
import numpy as np

from runtime.errors import InputError
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
        segmentation = LABELS in served.outputs
        for option, path in named:
            if segmentation:
                check_writable(path, IMAGE_SUFFIXES)
            elif option == "--probabilities":
                raise InputError(f"--probabilities is for segmentation models; {model} answers with {SCORES}.")
            else:
                check_writable(path, (".csv",))
        scan = read_scan(inputs)
        wanted = [SCORES] if not segmentation else [
            name for name, path in ((LABELS, output), (PROBABILITIES, probabilities)) if path is not None]
        answer = served.infer(scan.array_zyx, scan.spacing_zyx, wanted)
    finally:
        served.close()
    with OutputSet() as outputs:
        if segmentation:
            if output is not None:
                outputs.image(answer[LABELS], scan.reference, output)
            if probabilities is not None:
                outputs.image(np.ascontiguousarray(answer[PROBABILITIES]), scan.reference, probabilities)
        else:
            scores = [round(float(v), 6) for v in np.asarray(answer[SCORES]).reshape(-1)]
            row = {"subject_id": Path(inputs[0]).name, **{f"output_{i}": v for i, v in enumerate(scores)}}
            click.echo(", ".join(f"{k}={v}" for k, v in row.items()))
            if output is not None:
                outputs.table([row], list(row), output)
    for _, path in named:
        click.echo(f"wrote {path}")
