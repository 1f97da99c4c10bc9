"""One path from a scan to a prediction: load model → preprocess → window → postprocess → invert.

Everything here works on arrays; reading and writing files is the caller's (see `runtime.cli`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from runtime.backends import Backend, open_backend
from runtime.errors import InputError
from runtime.io import Scan, from_model_axes, to_model_axes
from runtime.manifest import Manifest, load_manifest
from runtime.outputs import (
    activate, background_probability, background_raw, channel_argmax, check_output, class_values, label_map,
)
from runtime.preprocess import Cropped, Padded, Record, Volume, invert, run_steps
from runtime.sizing import check_job
from runtime.window import Window, WindowRunner, sliding_window, window_average, window_grid
from runtime.window.grid import window_size

log = logging.getLogger(__name__)



class Progress(Protocol):
    """Where long work reports itself: windows to come, then windows done."""

    def expect(self, windows: int) -> None: ...

    def advance(self, windows: int) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Model:
    manifest: Manifest
    folder: Path
    backend: Backend


@dataclass(frozen=True)
class Prediction:
    """Segmentation: probabilities and labels on the input grid. Classification/regression: scores."""

    probabilities_zyx: np.ndarray | None = None   # float32 (K, *spatial)
    labels_zyx: np.ndarray | None = None          # class values (*spatial)
    scores: np.ndarray | None = None              # (K,) class probabilities or regression values
    label: int | None = None                      # the predicted class value (classification)


def load_model(path: Path | str, device: str = "auto", threads: int | None = None, gpu: int = 0) -> Model:
    """Validate the manifest and checksums, then open the ONNX file on the chosen backend (on
    CUDA device `gpu` when that is a GPU)."""
    manifest, folder = load_manifest(path)
    started = time.perf_counter()
    backend = open_backend(
        folder / manifest.onnx.file, manifest.onnx.input, manifest.onnx.output, device=device, threads=threads,
        gpu=gpu,
    )
    window = manifest.window
    if window.mode == "sliding" and _lockstep(backend):
        backend.prepare_windows((window.batch_size, len(manifest.channels), *window.patch_size))
    log.info("model %s v%s on %s, ready in %.2f s", manifest.name, manifest.version, backend.name,
             time.perf_counter() - started)
    return Model(manifest=manifest, folder=folder, backend=backend)


def _check_scan(manifest: Manifest, scan: Scan) -> None:
    channels = scan.array_zyx.shape[0]
    if channels != len(manifest.channels):
        raise InputError(
            f"model {manifest.name} expects {len(manifest.channels)} channel(s) ({', '.join(manifest.channels)}), "
            f"got {channels} from {', '.join(scan.sources)}; pass one image per channel, in that order."
        )
    if scan.spatial_dims < manifest.dimensions:
        raise InputError(
            f"model {manifest.name} is {manifest.dimensions}D but {scan.sources[0]} is a {scan.spatial_dims}D image."
        )


class _Predictor:
    """The backend as the predictor of one image: each output's shape is checked against the
    manifest once, and a classifier's activation applied. `borrow`: the caller uses each output
    before the next call, so the output may be the backend's own memory (`Backend.borrow`), and
    the backend may cut the windows out of the image itself (`windows_of`)."""

    def __init__(self, model: Model, borrow: bool = False) -> None:
        self.manifest = model.manifest
        self.backend = model.backend
        self.borrow = borrow
        self.checked = False

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        run = self.backend.borrow if self.borrow else self.backend
        return self.finish(run(batch), tuple(batch.shape))

    def windows_of(self, image: np.ndarray, patch: tuple[int, ...], batch_size: int) -> WindowRunner | None:
        runner = self.backend.windows_of(image, patch, batch_size) if self.borrow else None
        return None if runner is None else _CheckedRunner(self, runner, image.shape[0])

    def finish(self, out: np.ndarray, batch_shape: tuple[int, ...]) -> np.ndarray:
        if not self.checked:
            check_output(out, batch_shape, self.manifest)
            self.checked = True
        if self.manifest.task == "classification":
            activate(out, self.manifest.output.activation, axis=1)
        return out


class _CheckedRunner:
    """A backend's window runner whose outputs the predictor checks and activates."""

    def __init__(self, predictor: _Predictor, runner: WindowRunner, channels: int) -> None:
        self.predictor = predictor
        self.runner = runner
        self.channels = channels

    @property
    def depth(self) -> int:
        return self.runner.depth

    def submit(self, windows: Sequence[Window], flip: tuple[int, ...]) -> Callable[[], np.ndarray]:
        wait = self.runner.submit(windows, flip)
        shape = (len(windows), self.channels, *window_size(windows[0]))
        return lambda: self.predictor.finish(wait(), shape)


def _lockstep(backend: Backend) -> bool:
    """Whether the sliding window runs this model alone and uses each output before the next call
    (a CPU model, which keeps every core busy); else its work runs beside the model."""
    return backend.on_cpu


def _segment(model: Model, volume: Volume, progress: Progress | None, normalise: bool = True) -> np.ndarray:
    """Probabilities (K, *S) on the preprocessed grid; with `normalise` False the undivided weighted
    sums of the raw outputs instead, which only an argmax may read (see `_labels_from_sums`)."""
    manifest, window = model.manifest, model.manifest.window
    lockstep = _lockstep(model.backend)
    raw = sliding_window(
        volume.array, _Predictor(model, borrow=lockstep), window.patch_size, overlap=window.overlap,
        blending=window.blending, batch_size=window.batch_size, mirror_axes=window.mirror_axes,
        foreground=volume.foreground if window.skip_background else None,
        background=background_raw(manifest) if window.skip_background else None,
        progress=progress.advance if progress is not None else None, normalise=normalise,
        beside_model=not lockstep,
    )
    return activate(raw, manifest.output.activation) if normalise else raw


def _labels_from_sums(manifest: Manifest, record: Record) -> bool:
    """Whether the label map may come straight from the stitched sums: an argmax of a softmax (or of
    no activation) picks the same class as an argmax of the raw blend, and the blend's per-voxel
    division does not change it, as long as inverting preprocessing interpolates nothing. Voxels
    no window covered sum to 0 everywhere, so their argmax is the first class, the background."""
    output = manifest.output
    return (output.label_rule == "argmax" and output.activation in ("softmax", "none")
            and all(isinstance(t, (Cropped, Padded)) for t in record.transforms))


def _score(model: Model, volume: Volume, progress: Progress | None) -> np.ndarray:
    manifest, window = model.manifest, model.manifest.window
    if window.mode == "whole":
        if tuple(volume.array.shape[1:]) != tuple(window.patch_size):
            raise InputError(
                f"model {manifest.name} takes the whole image at {tuple(window.patch_size)} but preprocessing gave "
                f"{tuple(volume.array.shape[1:])}; the manifest needs a resize step to that shape."
            )
        scores = _Predictor(model)(volume.array[np.newaxis])[0]
        if progress is not None:
            progress.advance(1)
        return scores
    lockstep = _lockstep(model.backend)
    return window_average(
        volume.array, _Predictor(model, borrow=lockstep), window.patch_size, overlap=window.overlap,
        batch_size=window.batch_size, mirror_axes=window.mirror_axes,
        foreground=volume.foreground if window.skip_background else None,
        progress=progress.advance if progress is not None else None, beside_model=not lockstep,
    )


def _predict_array(model: Model, array: np.ndarray, spacing: tuple[float, ...], mask: np.ndarray | None,
                   progress: Progress | None, labels_only: bool = False, overwrite: bool = False) -> np.ndarray:
    """One image in the model's axis order -> probabilities (K, *S) on its grid, or scores (K,).

    `labels_only`: a segmentation may return class indices (1, *S) uint8/uint16 instead, where
    that is cheaper and picks the same classes (`_labels_from_sums`). `overwrite`: preprocessing
    may change `array` in place.
    """
    manifest = model.manifest
    volume = Volume.from_array(array, spacing, mask=mask)
    min_shape = manifest.window.patch_size if manifest.window.mode == "sliding" else None
    volume, record = run_steps(volume, manifest.preprocessing, min_shape=min_shape, overwrite=overwrite)
    if progress is not None:
        windows = 1 if min_shape is None else len(window_grid(volume.array.shape[1:], min_shape, manifest.window.overlap))
        progress.expect(windows)
    if manifest.task != "segmentation":
        return _score(model, volume, progress)
    if labels_only and _labels_from_sums(manifest, record):
        sums = _segment(model, volume, progress, normalise=False)
        index = channel_argmax(sums)[np.newaxis]
        del sums
        return invert(record, index, np.zeros(1, dtype=index.dtype), "nearest")
    probabilities = _segment(model, volume, progress)
    return invert(record, probabilities, background_probability(manifest), "linear")


def _slice_by_slice(model: Model, array: np.ndarray, spacing: tuple[float, ...], mask: np.ndarray | None,
                    progress: Progress | None, labels_only: bool = False, overwrite: bool = False) -> np.ndarray:
    """A 2D model over a 3D volume: each slice along the first spatial axis on its own."""
    outputs = [
        _predict_array(model, array[:, i], spacing[1:], None if mask is None else mask[i], progress,
                       labels_only, overwrite)
        for i in range(array.shape[1])
    ]
    if model.manifest.task == "segmentation":
        return np.stack(outputs, axis=1)
    return np.mean(outputs, axis=0)


def predict_scan(model: Model, scan: Scan, mask_zyx: np.ndarray | None = None,
                 progress: Progress | None = None, *, probabilities: bool = True,
                 overwrite: bool = False, budget: int | None = None) -> Prediction:
    """Run the model on one subject's scan; outputs land exactly on the scan's grid.

    `probabilities` False: a segmentation returns its label map only (probabilities_zyx None),
    which for argmax labels skips normalising and activating the whole output. `overwrite` True:
    preprocessing may change scan.array_zyx in place (saves a copy of the input when the caller
    is done with the scan's voxels). A scan the job could not be done for within the memory
    `budget` (default: runtime.budget's) is refused before any work (`runtime.sizing`).
    """
    manifest = model.manifest
    _check_scan(manifest, scan)
    check_job(manifest, scan.array_zyx.shape[1:], scan.spacing_zyx, scan.array_zyx.shape[0],
              probabilities and manifest.task == "segmentation", ", ".join(scan.sources), budget)
    array, spacing = to_model_axes(scan.array_zyx, scan.spacing_zyx, manifest.axis_order)
    mask = None if mask_zyx is None else to_model_axes(mask_zyx[np.newaxis], scan.spacing_zyx, manifest.axis_order)[0][0]
    run = _slice_by_slice if scan.spatial_dims > manifest.dimensions else _predict_array
    labels_only = manifest.task == "segmentation" and not probabilities
    result = run(model, array, spacing, mask, progress, labels_only, overwrite)
    if manifest.task == "segmentation":
        result = from_model_axes(result, manifest.axis_order)
        if result.dtype.kind == "u":  # class indices from `_labels_from_sums`
            return Prediction(labels_zyx=class_values(result[0], manifest))
        return Prediction(probabilities_zyx=result, labels_zyx=label_map(result, manifest))
    scores = result.astype(np.float32)
    if manifest.task == "classification":
        return Prediction(scores=scores, label=int(manifest.classes[int(np.argmax(scores))].value))
    return Prediction(scores=scores)
