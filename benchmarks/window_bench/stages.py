"""A stage by stage: the steps `predict_scan(probabilities=False)` takes for the benchmark's
model (argmax labels of a softmax, no geometric step to invert), one after the other, each
timed, through the window engine's public API: `plan`, `ArraySource`, `MemoryMerger` and the
backend's `run`."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.io import OutputSet, from_model_axes, read_scan, to_model_axes
from runtime.postprocess import channel_argmax, class_values
from runtime.predict import Model
from runtime.preprocess import Volume, invert, run_steps
from runtime.window import ArraySource, MemoryMerger, plan

from window_bench.timing import Clock

SLIDING_STAGE = "sliding window (model, cutting, stitching)"


def sliding_sums(model: Model, volume: Volume) -> np.ndarray:
    """The undivided weighted sums (K, *S) of the model's outputs over the preprocessed volume."""
    spec = model.manifest.window.spec
    planned = plan(volume.array.shape[1:], spec, volume.foreground if spec.skip_empty else None)
    merger = MemoryMerger(planned, normalise=False)
    model.backend.run(ArraySource(volume.array), planned, merger)
    return merger.finish()


def runtime_stages(model: Model, inputs: Sequence[Path], output: Path) -> dict[str, float]:
    """Seconds of each stage of A, in order: read, preprocess, sliding window, labels, write."""
    manifest = model.manifest
    clock = Clock()
    scan = read_scan(inputs)
    clock.lap("read (read_scan)")
    array, spacing = to_model_axes(scan.array_zyx, scan.spacing_zyx, manifest.axis_order)
    volume, record = run_steps(Volume.from_array(array, spacing), manifest.preprocessing,
                               min_shape=manifest.window.patch_size, overwrite=True)
    clock.lap("preprocess (foreground, steps)")
    sums = sliding_sums(model, volume)
    clock.lap(SLIDING_STAGE)
    index = invert(record, channel_argmax(sums)[np.newaxis], np.zeros(1, np.uint8), "nearest")
    labels = class_values(from_model_axes(index, manifest.axis_order)[0], manifest)
    clock.lap("labels (argmax of the sums)")
    with OutputSet() as outputs:
        outputs.image(labels, scan.reference, output)
    clock.lap("write (atomic .nii.gz)")
    return clock.laps
