"""One path from a scan to a prediction, in the order the data flows: load the model →
preprocess → plan the windows → `backend.run` → finish the merger → postprocess → invert.

Everything here works on arrays; reading and writing files is the caller's (see `runtime.commands.cli`).
The window engine is described in docs/engine.md.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from runtime.backends import Backend, measured_devices, open_backend
from runtime.contract import beyond_probabilities
from runtime.digests import load_as_exported
from runtime.errors import InputError, ModelError
from runtime.io import Scan, from_model_axes, to_model_axes
from runtime.io.scan import one_value
from runtime.io.formats import plain_mode_problem
from runtime.manifest import Manifest, checked_backends, float_version
from runtime.postprocess import (
    activate, background_probability, background_raw, brought_back, check_output, class_values, label_index,
    label_map, predicted_class,
)
from runtime.preprocess import Cropped, Padded, Record, Volume, invert, run_steps
from runtime.preprocess.orient import Reorientation, reorient_code, reorientation
from runtime.sizing import check_job
from runtime.slab_labels import SlabLabels
from runtime.window import ArraySource, Merger, MeanMerger, MemoryMerger, Pass, Plan, Map, RowMerger, in_order, plan

if TYPE_CHECKING:
    from runtime.profile import Profile

log = logging.getLogger(__name__)


class Progress(Protocol):
    """Where long work reports itself: windows to come, then windows done."""

    def expect(self, windows: int) -> None: ...

    def advance(self, windows: int) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Model:
    """A model ready to run: its manifest, its version folder (None for a model a server runs),
    and the backend that computes it."""

    manifest: Manifest
    folder: Path | None
    backend: Backend


@dataclass(frozen=True)
class Prediction:
    """Segmentation: probabilities and labels on the input grid. Classification/regression: scores."""

    probabilities_zyx: np.ndarray | None = None   # float32 (K, *spatial)
    labels_zyx: np.ndarray | None = None          # class values (*spatial)
    scores: np.ndarray | None = None              # (K,) class probabilities or regression values
    label: int | None = None                      # the predicted class value (classification)
    outside: tuple[str, ...] | None = None        # what lies far outside training; None: not held to a profile


def load_model(path: Path | str, device: str = "auto", threads: int | None = None, gpu: int = 0,
               fp16: bool | None = None) -> Model:
    """Validate the manifest and checksums, then open the ONNX file on the chosen backend (on
    CUDA device `gpu` when that is a GPU). `fp16`: whether TensorRT may build a half-precision
    engine; None follows the manifest (`onnx.fp16`), and True is refused for a model whose
    manifest does not allow it."""
    manifest, folder = load_as_exported(path)
    if fp16 and not manifest.onnx.fp16:
        raise InputError(f"model {manifest.name} v{manifest.version} may not run in half precision: its manifest's "
                         "onnx.fp16 is not true (export's half-precision check did not pass or was not run)")
    device = checked_device(manifest, folder, device)
    started = time.perf_counter()
    backend = open_backend(
        folder / manifest.onnx.file, manifest.onnx.input, manifest.onnx.output, device=device, threads=threads,
        gpu=gpu, fp16=manifest.onnx.fp16 if fp16 is None else fp16,
    )
    window = manifest.window
    if window.mode == "sliding" and backend.on_cpu:
        backend.prepare((window.batch_size, len(manifest.channels), *window.patch_size))
    log.info("model %s v%s on %s, ready in %.2f s", manifest.name, manifest.version, backend.name,
             time.perf_counter() - started)
    return Model(manifest=manifest, folder=folder, backend=backend)


def checked_device(manifest: Manifest, folder: Path, device: str) -> str:
    """The device to run the version on: `device` for a float version. An int8 version runs only
    on the CPU backends its labels were checked on when it was made (`checked_backends`): "auto"
    becomes the fastest of them, and any other device is refused (ModelError)."""
    checked = checked_backends(manifest)
    if checked is None:
        return device
    devices = measured_devices(checked)
    if device == "auto" and devices:
        return devices[0]
    if device in devices:
        return device
    made_from = float_version(manifest, folder)
    named = f"its float version ({made_from})" if made_from else "its float version"
    if not checked:
        raise ModelError(f"{folder}: model {manifest.name} v{manifest.version} is an int8 version whose manifest "
                         "names no backend its labels were checked on (provenance.quantization.backends); quantize "
                         f"{named} again with python -m export quantize, or run {named}.")
    remedy = (f"run it with {' or '.join(f'--device {choice}' for choice in devices)} (served by Triton: the "
              "config parameter device)" if devices else
              "quantize it again where those backends are installed")
    raise ModelError(f"{folder}: model {manifest.name} v{manifest.version} is an int8 version whose labels were "
                     f"checked against the float ones on {', '.join(checked)} only (provenance.quantization.backends), "
                     f"not on device {device}, which computes int8 its own way; {remedy}, or run {named}.")


def check_scan(manifest: Manifest, scan: Scan) -> None:
    """InputError where `scan` is not one the model takes: its channels, its dimensions, a slice of
    another plane stored as a volume for a 2D model."""
    channels = scan.array_zyx.shape[0]
    if channels != len(manifest.channels):
        colour = ""
        one_picture = scan.spatial_dims == 2 or Path(scan.sources[0]).is_dir()     # an image, or a DICOM series
        if len(scan.sources) == 1 and channels in (3, 4) and one_picture:     # in colour (a vector volume is not)
            wanted = len(manifest.channels)
            palette = plain_mode_problem(Path(scan.sources[0]))
            colour = (f" ({palette})" if palette is not None and wanted < 3 else
                      f" ({scan.sources[0]} is RGBA: save it as RGB, without its alpha channel)"
                      if (channels, wanted) == (4, 3) else
                      f" ({scan.sources[0]} is a colour image: its {channels} components (RGB or RGBA) are channels; "
                      f"a {manifest.modality} model of {wanted} channel(s) takes grey images)" if wanted < 3 else "")
        ending = "." if colour else "; pass one image per channel, in that order."
        raise InputError(
            f"model {manifest.name} expects {len(manifest.channels)} channel(s) ({', '.join(manifest.channels)}), "
            f"got {channels} from {', '.join(scan.sources)}{colour}{ending}"
        )
    if scan.spatial_dims < manifest.dimensions:
        raise InputError(
            f"model {manifest.name} is {manifest.dimensions}D but {scan.sources[0]} is a {scan.spatial_dims}D image; "
            "give it a volume (an image of one slice saved as a 3D NIfTI or MHA is one), or run a 2D model."
        )
    depth, rows, columns = scan.array_zyx.shape[1:] if scan.spatial_dims == 3 else (1, 2, 2)
    if manifest.dimensions == 2 and depth > 1 and min(rows, columns) == 1:
        axis = "y" if rows == 1 else "x"
        raise InputError(
            f"{scan.sources[0]} is a volume of {columns}×{rows}×{depth} voxels, one voxel thick along {axis}: a "
            f"coronal or sagittal slice stored as a volume, which 2D model {manifest.name}, run slice by slice along "
            f"z, would read as {depth} strips one voxel wide; save it with its thin axis last (a volume one slice "
            "thick along z), which a 2D model reads as one slice."
        )


class Checked:
    """A merger whose model outputs are held to the manifest first: the first output's shape
    against the one the manifest promises, and a classifier's activation applied to each."""

    def __init__(self, merger: Merger, manifest: Manifest, channels: int, patch: tuple[int, ...]) -> None:
        self.merger = merger
        self.manifest = manifest
        self.channels = channels
        self.patch = patch
        self.checked = False

    def check(self, output: np.ndarray, windows: int) -> np.ndarray:
        _hold_to_manifest(output, (windows, self.channels, *self.patch), self.manifest, not self.checked)
        self.checked = True
        return self.merger.check(output, windows)

    def take(self, step: Pass, output: np.ndarray, share: Map = in_order, parts: int = 1) -> None:
        self.merger.take(step, output, share, parts)

    def finish(self, background: np.ndarray | None = None, share: Map = in_order) -> object:
        return self.merger.finish(background, share)


def _hold_to_manifest(output: np.ndarray, batch_shape: tuple[int, ...], manifest: Manifest,
                      check_shape: bool = True) -> None:
    """The output's shape against the one the manifest promises for `batch_shape` (ModelError),
    probabilities where it says the graph gives them, and a classifier's activation applied in place."""
    if check_shape:
        check_output(output, batch_shape, manifest)
    hold_to_probabilities(output, manifest)
    if manifest.task == "classification":
        activate(output, manifest.output.activation, axis=1)


def gives_probabilities(manifest: Manifest) -> bool:
    """Whether a classifier's output section says its graph's values are probabilities, which its
    results (a CSV's probability columns, a DICOM SR's Probability) report as such: activation none
    with no `probabilities` (which would say they are logits), read by argmax or by a threshold
    within (0, 1] (a threshold of 0, or past 1, reads logits or scores). A segmentation model's
    values are written as they are (docs/spec.md)."""
    output = manifest.output
    return (manifest.task == "classification" and output.activation == "none" and output.probabilities is None
            and (output.label_rule == "argmax" or 0 < output.threshold <= 1))


def hold_to_probabilities(output: np.ndarray, manifest: Manifest) -> None:
    """ModelError where a classifier whose output section says its graph gives probabilities
    (activation none, `gives_probabilities`) returns values outside [0, 1]: logits or scores, which
    its results would report as probabilities."""
    beyond = beyond_probabilities(output) if gives_probabilities(manifest) else None
    if beyond is None:
        return
    low, high = beyond
    raise ModelError(f"model {manifest.name} v{manifest.version} returned scores from {low:.4g} to {high:.4g}, but "
                     "its output section says activation none: a graph that gives probabilities, from 0 to 1, which "
                     "its results report as such. It gives logits or scores: set output.activation to the softmax or "
                     "sigmoid it was trained with (and export again), or export the graph with its activation inside.")


def _run(model: Model, volume: Volume, planned: Plan, merger: Merger, progress: Progress | None) -> None:
    """Every pass of `planned` over the preprocessed volume, through the backend, into `merger`."""
    checked = Checked(merger, model.manifest, volume.array.shape[0], planned.spec.patch)
    model.backend.run(ArraySource(volume.array), planned, checked, progress.advance if progress else None)


def _segment(model: Model, volume: Volume, planned: Plan, progress: Progress | None) -> np.ndarray:
    """Probabilities (K, *S) on the preprocessed grid."""
    manifest = model.manifest
    merger = MemoryMerger(planned)
    _run(model, volume, planned, merger, progress)
    raw = merger.finish(background_raw(manifest) if planned.spec.skip_empty else None)
    return activate(raw, manifest.output.activation)


def _labels_from_sums(manifest: Manifest, record: Record) -> bool:
    """Whether the label map may come straight from the raw blend: an argmax of a softmax (or of
    no activation) picks the same class as an argmax of the raw blend, as long as inverting
    preprocessing interpolates nothing."""
    output = manifest.output
    return (output.label_rule == "argmax" and output.activation in ("softmax", "none")
            and all(isinstance(t, (Cropped, Padded)) for t in record.transforms))


def _whole(model: Model, volume: Volume, progress: Progress | None) -> np.ndarray:
    """Scores (K,) of a model that takes the whole image at its patch size, or a segmentation
    model's raw output (K, *patch) for it."""
    manifest = model.manifest
    patch = tuple(manifest.window.patch_size)
    if tuple(volume.array.shape[1:]) != patch:
        raise InputError(
            f"model {manifest.name} takes the whole image at {patch} but preprocessing gave "
            f"{tuple(volume.array.shape[1:])}; the manifest needs a resize step to that shape."
        )
    batch = volume.array[np.newaxis]
    output = model.backend(batch)
    _hold_to_manifest(output, tuple(batch.shape), manifest)
    if progress is not None:
        progress.advance(1)
    return output[0]


def _score(model: Model, volume: Volume, planned: Plan, progress: Progress | None) -> np.ndarray:
    """Scores (K,): the mean of the per-window outputs over every window run."""
    merger = MeanMerger()
    _run(model, volume, planned, merger, progress)
    return merger.finish()


def _predict_array(model: Model, array: np.ndarray, spacing: tuple[float, ...], mask: np.ndarray | None,
                   progress: Progress | None, labels_only: bool = False, overwrite: bool = False,
                   inspect: Callable[[Volume], None] | None = None) -> np.ndarray:
    """One image in the model's axis order -> probabilities (K, *S) on its grid, or scores (K,).

    `labels_only`: a segmentation returns class indices (1, *S) uint8/uint16 instead, made a slab
    at a time while the windows run (`_labels_alone`). `overwrite`: preprocessing may change
    `array` in place. `inspect` is shown the preprocessed image before the model runs.
    """
    manifest = model.manifest
    sliding = manifest.window.mode == "sliding"
    volume = Volume.from_array(array, spacing, mask=mask)
    volume, record = run_steps(volume, manifest.preprocessing,
                               min_shape=manifest.window.patch_size if sliding else None, overwrite=overwrite)
    if inspect is not None:
        inspect(volume)
    if not sliding:
        if progress is not None:
            progress.expect(1)
        output = _whole(model, volume, progress)
        if manifest.task != "segmentation":
            return output
        probabilities = invert(record, activate(output, manifest.output.activation), background_probability(manifest),
                               "linear")
        return label_index(probabilities, manifest)[np.newaxis] if labels_only else probabilities
    spec = manifest.window.spec
    planned = plan(volume.array.shape[1:], spec, volume.foreground if spec.skip_empty else None)
    if progress is not None:
        progress.expect(planned.total)
    if manifest.task != "segmentation":
        return _score(model, volume, planned, progress)
    if labels_only:
        return _labels_alone(model, volume, planned, record, progress)
    probabilities = _segment(model, volume, planned, progress)
    return invert(record, probabilities, background_probability(manifest), "linear")


def _labels_alone(model: Model, volume: Volume, planned: Plan, record: Record,
                  progress: Progress | None) -> np.ndarray:
    """Class indices (1, *S) on the input grid, made while the windows run: the merger hands on
    each slab of the preprocessed grid's rows once no later window reaches it, and the slabs of the
    input grid are labelled from them (`runtime.slab_labels`); where an argmax of the blend picks
    what an argmax of the probabilities would (`_labels_from_sums`), the undivided sums are
    labelled as they come, with nothing divided or activated. Voxels no window covered then sum to
    0 everywhere, so their argmax is the first class, the background."""
    manifest = model.manifest
    activation = None if _labels_from_sums(manifest, record) else manifest.output.activation
    labels = SlabLabels(record, manifest, activation)
    merger = RowMerger(planned, labels.add, background_raw(manifest) if planned.spec.skip_empty else None,
                       normalise=activation is not None)
    _run(model, volume, planned, merger, progress)
    merger.finish()
    return labels.finish()


def _slice_by_slice(model: Model, array_zyx: np.ndarray, spacing_zyx: tuple[float, ...], mask_zyx: np.ndarray | None,
                    progress: Progress | None, labels_only: bool = False, overwrite: bool = False) -> np.ndarray:
    """A 2D model over a 3D volume: each axial slice (along z) on its own, laid out in the model's
    axis order; segmentations come back as (K, z, y, x), other outputs as the mean over
    `scored_slices`."""
    order = model.manifest.axis_order
    segmentation = model.manifest.task == "segmentation"
    outputs = []
    for index in range(array_zyx.shape[1]) if segmentation else scored_slices(array_zyx, model.manifest):
        plane, spacing = to_model_axes(array_zyx[:, index], spacing_zyx[1:], order)
        mask = None if mask_zyx is None else to_model_axes(mask_zyx[np.newaxis, index], spacing_zyx[1:], order)[0][0]
        output = _predict_array(model, plane, spacing, mask, progress, labels_only, overwrite)
        outputs.append(from_model_axes(output, order) if segmentation else output)
    if segmentation:
        return np.stack(outputs, axis=1)
    return np.mean(outputs, axis=0)


def scored_slices(array_zyx: np.ndarray, manifest: Manifest) -> list[int]:
    """The axial slices of a volume a 2D classifier or regression model answers for it: those that
    hold more than one value (a slice of one value, all 0 or padding, would be refused on its own:
    normalised, it is zeros, which the model answers with confidence); InputError where none does."""
    kept = [index for index in range(array_zyx.shape[1]) if one_value(array_zyx[:, index]) is None]
    if not kept:
        raise InputError(f"every slice of the volume holds one value, so model {manifest.name} (2D) has nothing to "
                         "predict from; check the file.")
    if len(kept) < array_zyx.shape[1]:
        log.info("%d of %d slices hold one value and are left out of the mean", array_zyx.shape[1] - len(kept),
                 array_zyx.shape[1])
    return kept


def _turn(manifest: Manifest, scan: Scan) -> Reorientation | None:
    """The reorientation a first `reorient` step asks of this scan (runtime.preprocess.orient)."""
    if reorient_code(manifest.preprocessing) is not None and scan.spatial_dims != 3:
        raise InputError(f"model {manifest.name} reorients 3D scans, but {scan.sources[0]} is "
                         f"{scan.spatial_dims}D.")
    return reorientation(manifest.preprocessing, scan.reference.GetDirection())


def check_input(manifest: Manifest, scan: Scan, strict: bool = False) -> list[str]:
    """The scan held against what the model saw in training (`runtime.profile`): what lies far
    outside it, warned of in one line, or InputError when `strict`. Nothing for a model without a
    profile."""
    from runtime.profile import deviations, scan_stats

    profile = _input_profile(manifest)
    if profile is None:
        return []
    turned = profile.frame == "reoriented" and scan.spatial_dims == 3
    after = scan.spatial_dims <= manifest.dimensions          # a 2D model run slice by slice has no check after
    found = deviations(profile, scan_stats(scan.array_zyx, scan.spacing_zyx, scan.reference.GetDirection(),
                                           manifest.preprocessing if turned else ()), manifest.channels,
                       manifest.preprocessing if after else ())
    _report(found, manifest, scan, strict)
    return found


def _input_profile(manifest: Manifest) -> Profile | None:
    """The model's input profile (`provenance.input_profile`), checked; None where it has none."""
    from runtime.profile import parse_profile

    data = manifest.provenance.get("input_profile")
    return None if data is None else parse_profile(data, manifest.channels)


def _report(found: list[str], manifest: Manifest, scan: Scan, strict: bool) -> None:
    """What lies far outside training, warned of in one line, or InputError when `strict`."""
    if not found:
        return
    text = f"{', '.join(scan.sources)} lies far outside what model {manifest.name} saw in training: {'; '.join(found)}"
    if strict:
        raise InputError(f"{text}; check that this is a scan the model is for (--strict-input refused it).")
    log.warning("%s; its output may be wrong (--strict-input refuses such a scan)", text)


def preprocessed_check(manifest: Manifest, scan: Scan, strict: bool = False,
                       found: list[str] | None = None) -> Callable[[Volume], None] | None:
    """What holds the preprocessed scan against the training subjects' figures after preprocessing
    (`runtime.profile.preprocessed_deviations`), reporting as `check_input` does and adding what it
    finds to `found`; None for a model whose profile has no such figures."""
    from runtime.profile import channel_percentiles, preprocessed_deviations

    profile = _input_profile(manifest)
    if profile is None or not profile.preprocessed:
        return None

    def inspect(volume: Volume) -> None:
        deviations = preprocessed_deviations(profile, channel_percentiles(volume.array), manifest.channels)
        _report(deviations, manifest, scan, strict)
        if found is not None:
            found.extend(deviations)

    return inspect


def predict_scan(model: Model, scan: Scan, mask_zyx: np.ndarray | None = None,
                 progress: Progress | None = None, *, probabilities: bool = True,
                 overwrite: bool = False, budget: int | None = None, strict_input: bool = False) -> Prediction:
    """Run the model on one subject's scan; outputs land exactly on the scan's grid.

    `probabilities` False: a segmentation returns its label map only (probabilities_zyx None),
    which for argmax labels skips normalising and activating the whole output. `overwrite` True:
    preprocessing may change scan.array_zyx in place (saves a copy of the input when the caller
    is done with the scan's voxels). A scan the job could not be done for within the memory
    `budget` (default: runtime.budget's) is refused before any work (`runtime.sizing`). A scan far
    outside what the model saw in training, as read or once preprocessed, is warned of (and named in
    the prediction's `outside`), or refused with `strict_input` (`check_input`, `preprocessed_check`).
    """
    manifest = model.manifest
    check_scan(manifest, scan)
    outside = check_input(manifest, scan, strict_input)
    inspect = None if outside else preprocessed_check(manifest, scan, strict_input, outside)
    try:
        prediction = _predict_checked(model, scan, mask_zyx, progress, probabilities, overwrite, budget, inspect)
    except ModelError as error:
        raise named_error(error, manifest, ", ".join(scan.sources)) from None
    held = _input_profile(manifest) is not None
    return dataclasses.replace(prediction, outside=tuple(outside)) if held else prediction


def named_error(error: ModelError, manifest: Manifest, source: str) -> ModelError:
    """What the model gave, named with the model, its version and the scan or slide it ran on
    (`source`), once: a message that names the model already gets the source beside the name."""
    named = f"model {manifest.name} v{manifest.version}"
    text = str(error)
    if text.startswith(named):
        return ModelError(f"{named} (on {source}){text[len(named):]}")
    return ModelError(f"{named} on {source}: {text}")


def _predict_checked(model: Model, scan: Scan, mask_zyx: np.ndarray | None, progress: Progress | None,
                     probabilities: bool, overwrite: bool, budget: int | None,
                     inspect: Callable[[Volume], None] | None) -> Prediction:
    """`predict_scan` once the scan is checked: the model run on it, its outputs on the scan's grid."""
    manifest = model.manifest
    turn = _turn(manifest, scan)
    if turn is not None:
        scan = dataclasses.replace(scan, array_zyx=np.ascontiguousarray(turn.apply(scan.array_zyx)),
                                   spacing_zyx=turn.spacing(scan.spacing_zyx))
        mask_zyx = None if mask_zyx is None else np.ascontiguousarray(turn.apply(mask_zyx))
    check_job(manifest, scan.array_zyx.shape[1:], scan.spacing_zyx, scan.array_zyx.shape[0],
              probabilities and manifest.task == "segmentation", ", ".join(scan.sources), budget)
    labels_only = manifest.task == "segmentation" and not probabilities
    if scan.spatial_dims > manifest.dimensions:
        result = _slice_by_slice(model, scan.array_zyx, scan.spacing_zyx, mask_zyx, progress, labels_only, overwrite)
    else:
        array, spacing = to_model_axes(scan.array_zyx, scan.spacing_zyx, manifest.axis_order)
        mask = None if mask_zyx is None else to_model_axes(mask_zyx[np.newaxis], scan.spacing_zyx, manifest.axis_order)[0][0]
        result = _predict_array(model, array, spacing, mask, progress, labels_only, overwrite, inspect)
        if manifest.task == "segmentation":
            result = from_model_axes(result, manifest.axis_order)
    if manifest.task == "segmentation":
        if turn is not None:
            result = np.ascontiguousarray(turn.undo(result))
        if result.dtype.kind == "u":  # class indices: labels alone were asked for
            return Prediction(labels_zyx=class_values(result[0], manifest))
        labels = label_map(result, manifest)
        return Prediction(probabilities_zyx=brought_back(result, manifest), labels_zyx=labels)
    scores = result.astype(np.float32)
    if not np.isfinite(scores).all():
        raise ModelError(f"it returned {scores.tolist()[:8]}: values that are not finite numbers; check the model "
                         "(its export, its input range).")
    if manifest.task == "classification":
        return Prediction(scores=scores, label=predicted_class(scores, manifest))
    return Prediction(scores=scores)
