"""The end-to-end contenders, each from the input files to a written label map:

  A  the runtime: `read_scan`, `predict_scan`, the label map written atomically (`OutputSet`)
  B  MONAI: SimpleITK read, z-score, `sliding_window_inference` (gaussian), softmax + argmax, write
  C  TorchIO: SimpleITK read, z-score, `GridSampler` + `GridAggregator` (hann), argmax, write

and where B and C place their windows. A uses only the runtime's public API that its older
versions offer as well.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from runtime.io import OutputSet, read_scan
from runtime.predict import Model, predict_scan

from window_bench.data import read_sitk, write_labels, zscore_nonzero
from window_bench.networks import with_window
from window_bench.options import OVERLAP, PATCH
from window_bench.timing import Labels, Timed


def runtime_end_to_end(model: Model, inputs: Sequence[Path], output: Path) -> Labels:
    """A: what `runtime predict ... --output` does once the model is loaded."""
    scan = read_scan(inputs)
    prediction = predict_scan(model, scan, probabilities=False, overwrite=True)
    with OutputSet() as outputs:
        outputs.image(prediction.labels_zyx, scan.reference, output)
    return prediction.labels_zyx


def monai_labels(net: torch.nn.Module, array: np.ndarray, batch_size: int) -> Labels:
    """MONAI's sliding window (gaussian, sigma = patch/8) over (C, *S), softmax, argmax."""
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        logits = sliding_window_inference(
            torch.from_numpy(array)[None], roi_size=(PATCH,) * 3, sw_batch_size=batch_size,
            predictor=net, overlap=OVERLAP, mode="gaussian", sigma_scale=0.125)
        return torch.softmax(logits, dim=1).argmax(dim=1)[0].to(torch.uint8).numpy()


def monai_end_to_end(net: torch.nn.Module, inputs: Sequence[Path], output: Path, batch_size: int) -> Labels:
    """B: SimpleITK read, z-score, MONAI sliding window, SimpleITK write."""
    reference, array = read_sitk(inputs)
    labels = monai_labels(net, zscore_nonzero(array), batch_size)
    write_labels(labels, reference, output)
    return labels


def torchio_end_to_end(net: torch.nn.Module, inputs: Sequence[Path], output: Path, batch_size: int) -> Labels:
    """C: SimpleITK read, z-score, TorchIO grid sampler + hann aggregator, argmax, write."""
    import torchio as tio

    reference, array = read_sitk(inputs)
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(zscore_nonzero(array))))
    sampler = tio.inference.GridSampler(subject, PATCH, PATCH // 2)
    loader = torch.utils.data.DataLoader(sampler, batch_size=batch_size)
    aggregator = tio.inference.GridAggregator(sampler, overlap_mode="hann")
    with torch.inference_mode():
        for batch in loader:
            aggregator.add_batch(net(batch["image"][tio.DATA]), batch[tio.LOCATION])
        labels = aggregator.get_output_tensor().argmax(dim=0).to(torch.uint8).numpy()
    write_labels(labels, reference, output)
    return labels


def skip_runs(model: Model, path: Path, work: Path, prefix: str) -> list[Timed]:
    """A on one file with and without skipping background windows."""
    runs = []
    for skip in (True, False):
        changed = with_window(model, skip_background=skip)
        output = work / f"{prefix}_skip_{skip}.nii.gz"
        runs.append(Timed(f"runtime end to end, skip_background {str(skip).lower()}",
                          lambda m=changed, out=output: runtime_end_to_end(m, [path], out)))
    return runs


def monai_starts(size: int) -> list[int]:
    """Window starts along one axis as MONAI's sliding_window_inference places them."""
    interval = int(PATCH * (1 - OVERLAP))
    count = math.ceil((size - PATCH) / interval) + 1 if size > PATCH else 1
    return sorted({min(index * interval, size - PATCH) for index in range(count)})


def torchio_starts(shape: tuple[int, ...]) -> list[list[int]]:
    """Window starts along each axis as TorchIO's GridSampler places them."""
    import torchio as tio

    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.zeros(1, *shape)))
    locations = np.asarray(tio.inference.GridSampler(subject, PATCH, PATCH // 2).locations)
    return [sorted({int(v) for v in locations[:, axis]}) for axis in range(len(shape))]
