"""Request arrays in, named output arrays out: the Triton model's work, testable without Triton.

A request is one of four kinds, by the input it carries.

- "IMAGE", float32 (C, *spatial) with the spatial axes in (z, y, x) order — or (y, x) for a 2D
  image — with "SPACING", float32 (spatial dims,) in mm in the same order, which a model that
  resamples requires (a request without it is refused); any other model takes 1 mm per axis when
  it is absent, as its answer does not depend on it. The response carries, for a segmentation
  model, "PROBABILITIES" float32 (K, *spatial) and "LABELS" (*spatial) as uint8 (uint16 when a
  class value exceeds 255), both on the request's grid; for a classification or regression model,
  "SCORES" float32 (K,).
- "SCAN", the bytes of a NIfTI file, in place of IMAGE and SPACING: the same outputs, on the file's grid.
- "WINDOWS", float32 (N, C, *patch): windows the client has cut and preprocessed itself (a slide's
  tiles). The response's "WINDOW_OUTPUTS" float32 is the model's raw output for them, (N, K, *patch)
  or (N, K), before the manifest's activation: the client stitches it as a local backend's output.
- "MANIFEST", any one byte: the response's "MANIFEST_JSON" holds the bytes of the served version's
  manifest.json, which a client that cuts its own windows reads first.
"""
from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from runtime.backends import DEVICES, cpu_order, measured_devices
from runtime.backends.onnx_runtime import GPU_DEVICES
from runtime.validation import is_number_name
from runtime.budget import parse_size
from runtime.errors import InputError, MedflowError, ModelError
from runtime.io import Scan
from runtime.io.scan import one_value
from runtime.limits import IMAGE_MAX_SPACING_MM, IMAGE_MIN_SPACING_MM, MAX_BATCH_SIZE, MAX_BATCH_VALUES
from runtime.manifest import SERVES_PARAMETER, Manifest, checked_backends, load_manifest
from runtime.predict import Model, Prediction, predict_scan

IMAGE = "IMAGE"
SPACING = "SPACING"
ORIGIN = "ORIGIN"
DIRECTION = "DIRECTION"
SCAN = "SCAN"
# Bytes an encoded scan (SCAN) may hold: a 2 GiB NIfTI is far past any CT the runtime reads whole.
MAX_SCAN_BYTES = 2**31
PROBABILITIES = "PROBABILITIES"
LABELS = "LABELS"
SCORES = "SCORES"
WINDOWS = "WINDOWS"
WINDOW_OUTPUTS = "WINDOW_OUTPUTS"
MANIFEST = "MANIFEST"
MANIFEST_JSON = "MANIFEST_JSON"
# The input that makes each kind of request, and the outputs it answers with.
REQUEST_KINDS = (IMAGE, SCAN, WINDOWS, MANIFEST)
INPUT_NAMES = (IMAGE, SPACING, ORIGIN, DIRECTION, SCAN, WINDOWS, MANIFEST)
# The grid an IMAGE or SCAN request's outputs lie on, answered beside them.
GRID_NAMES = (SPACING, ORIGIN, DIRECTION)
# An origin further than this from 0 (a kilometre, in mm) is not a scanner's.
MAX_ORIGIN_MM = 1e6
# How far DIRECTION times its transpose may be from the identity (float32 rows of unit vectors).
DIRECTION_TOLERANCE = 1e-4

# A companion model's config names the model whose versions it serves (`<name>_windows`: the
# windows of a tile model, batched by Triton across clients).
SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
DEVICE_PARAMETER = "device"
BUDGET_PARAMETER = "max_memory"
THREADS_PARAMETER = "threads"


def output_names(manifest: Manifest) -> tuple[str, ...]:
    """The outputs a model of this task returns for an IMAGE or SCAN request, in response order:
    a segmentation's maps and the grid they lie on, or the scores of the other tasks."""
    return (PROBABILITIES, LABELS, *GRID_NAMES) if manifest.task == "segmentation" else (SCORES,)


def answers_of(manifest: Manifest, kind: str) -> tuple[str, ...]:
    """The outputs a request of `kind` (one of REQUEST_KINDS) is answered with."""
    return {WINDOWS: (WINDOW_OUTPUTS,), MANIFEST: (MANIFEST_JSON,)}.get(kind) or output_names(manifest)


def label_dtype(manifest: Manifest) -> type[np.unsignedinteger]:
    """The label map's type: uint8, or uint16 when a class value does not fit in one byte."""
    return np.uint8 if max(c.value for c in manifest.classes) < 256 else np.uint16


def _check_image(manifest: Manifest, image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype.kind not in "fiub":
        kind = getattr(image, "dtype", type(image).__name__)
        raise InputError(f"{IMAGE} must be a numeric array (C, *spatial), got {kind}; send it as FP32.")
    channels = len(manifest.channels)
    spatial = image.ndim - 1
    if spatial not in (2, 3) or spatial < manifest.dimensions:
        ranks = "(C, z, y, x)" if manifest.dimensions == 3 else "(C, y, x) or (C, z, y, x)"
        raise InputError(f"{IMAGE} has shape {image.shape}; model {manifest.name} takes {ranks} with C = {channels}.")
    if image.shape[0] != channels:
        raise InputError(
            f"{IMAGE} has {image.shape[0]} channel(s) (shape {image.shape}); model {manifest.name} expects "
            f"{channels} ({', '.join(manifest.channels)}) on the first axis, in that order."
        )
    if 0 in image.shape[1:]:
        raise InputError(f"{IMAGE} has shape {image.shape}: every spatial axis needs at least one voxel.")
    return image


def _as_finite_float32(image: np.ndarray, empty_allowed: bool = False) -> np.ndarray:
    """The image as float32, refused where a voxel is not finite, or every voxel is 0 or any one
    value (unless `empty_allowed`)."""
    array = np.ascontiguousarray(image, dtype=np.float32)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise InputError(f"{IMAGE} holds {bad} NaN or infinite voxel(s); fix or mask them before inference.")
    if not empty_allowed and not array.any():
        raise InputError(f"{IMAGE}: every voxel is 0, so there is nothing to predict from; check the data sent.")
    value = None if empty_allowed else one_value(array)
    if value is not None:
        raise InputError(f"{IMAGE}: every voxel is {value:g}, so there is nothing to predict from; check the data "
                         "sent.")
    return array


def needs_spacing(manifest: Manifest) -> bool:
    """Whether the model's preprocessing depends on the image's spacing (it resamples to mm)."""
    return any(step.name == "resample" for step in manifest.preprocessing)


def _spacing_zyx(spacing: Any, spatial_dims: int, manifest: Manifest) -> tuple[float, ...]:
    if spacing is None:
        if needs_spacing(manifest):
            raise InputError(
                f"the request has no {SPACING} input, and model {manifest.name} resamples to mm: send {SPACING}, "
                f"FP32 ({spatial_dims},), the image's voxel size in mm in its axis order."
            )
        return (1.0,) * spatial_dims
    values = np.asarray(spacing)
    if values.dtype.kind not in "fiu" or values.shape != (spatial_dims,):
        raise InputError(
            f"{SPACING} must be {spatial_dims} numbers (mm, in the image's axis order), got shape "
            f"{values.shape} of {values.dtype}."
        )
    low, high = IMAGE_MIN_SPACING_MM, IMAGE_MAX_SPACING_MM
    if not (np.isfinite(values).all() and (values >= low).all() and (values <= high).all()):
        raise InputError(f"{SPACING} must be finite numbers of mm between {low:g} and {high:g}, got {values.tolist()}.")
    return tuple(float(v) for v in values)


def _origin_xyz(origin: Any, spatial_dims: int) -> tuple[float, ...]:
    if origin is None:
        return (0.0,) * spatial_dims
    values = np.asarray(origin)
    if values.dtype.kind not in "fiu" or values.shape != (spatial_dims,):
        raise InputError(f"{ORIGIN} must be {spatial_dims} numbers, the physical position in mm of the first voxel in "
                         f"(x, y{', z' if spatial_dims == 3 else ''}) order, as SimpleITK's GetOrigin() gives it; got "
                         f"shape {values.shape} of {values.dtype}.")
    if not (np.isfinite(values).all() and (np.abs(values) <= MAX_ORIGIN_MM).all()):
        raise InputError(f"{ORIGIN} must be finite mm within {MAX_ORIGIN_MM:g} of 0, got {values.tolist()}.")
    return tuple(float(v) for v in values)


def _direction(direction: Any, spatial_dims: int) -> tuple[float, ...]:
    identity = np.eye(spatial_dims)
    if direction is None:
        return tuple(float(v) for v in identity.ravel())
    values = np.asarray(direction)
    shape_text = f"{spatial_dims * spatial_dims} numbers, the {spatial_dims}x{spatial_dims} matrix row by row"
    if values.dtype.kind not in "fiu" or values.shape != (spatial_dims * spatial_dims,):
        raise InputError(f"{DIRECTION} must be {shape_text}, as SimpleITK's GetDirection() gives it; got shape "
                         f"{values.shape} of {values.dtype}.")
    matrix = values.astype(np.float64).reshape(spatial_dims, spatial_dims)
    if not (np.isfinite(matrix).all() and np.allclose(matrix @ matrix.T, identity, atol=DIRECTION_TOLERANCE)):
        raise InputError(f"{DIRECTION} must be an orthonormal matrix ({shape_text}, unit columns at right angles), "
                         f"got {values.tolist()}.")
    return tuple(float(v) for v in matrix.ravel())


def _reference(shape_zyx: tuple[int, ...], spacing_zyx: tuple[float, ...], origin_xyz: tuple[float, ...],
               direction: tuple[float, ...]) -> sitk.Image:
    """An image with the request's grid: its spacing, origin and direction."""
    reference = sitk.Image([int(n) for n in reversed(shape_zyx)], sitk.sitkUInt8)
    reference.SetSpacing(tuple(reversed(spacing_zyx)))
    reference.SetOrigin(origin_xyz)
    reference.SetDirection(direction)
    return reference


def scan_from_arrays(manifest: Manifest, image: Any, spacing_zyx: Any = None, origin_xyz: Any = None,
                     direction: Any = None) -> Scan:
    """Check a request's IMAGE (and SPACING, ORIGIN, DIRECTION) against the model and make the
    Scan it describes.

    Raises InputError for a wrong type, rank or channel count, empty axes, NaN or infinite
    voxels, an all-zero image (but a 2D model's slice, which a client sends of a volume one by
    one, as a local run runs its slices), a spacing of the wrong length or with non-positive values, or
    no spacing for a model that resamples (without one, a model that does not is given 1 mm),
    an origin of the wrong length or out of range, a direction that is not an orthonormal matrix.
    Without them, the origin is 0 and the direction the identity.
    """
    checked = _check_image(manifest, image)
    dims = checked.ndim - 1
    array = _as_finite_float32(checked, empty_allowed=manifest.dimensions == 2 and dims == 2)
    spacing = _spacing_zyx(spacing_zyx, dims, manifest)
    reference = _reference(array.shape[1:], spacing, _origin_xyz(origin_xyz, dims), _direction(direction, dims))
    return Scan(array_zyx=array, spacing_zyx=spacing, reference=reference, sources=(IMAGE,))


def grid_outputs(scan: Scan) -> dict[str, np.ndarray]:
    """The grid the outputs lie on, as the request gives it: SPACING (z, y, x) mm, ORIGIN (x, y,
    z) mm and DIRECTION row by row, as SimpleITK's GetOrigin() and GetDirection() give them."""
    return {SPACING: np.asarray(scan.spacing_zyx, dtype=np.float32),
            ORIGIN: np.asarray(scan.reference.GetOrigin(), dtype=np.float32),
            DIRECTION: np.asarray(scan.reference.GetDirection(), dtype=np.float32)}


def prediction_outputs(manifest: Manifest, prediction: Prediction) -> dict[str, np.ndarray]:
    """The response's named arrays, in the types the Triton config declares (a segmentation's
    probabilities only where the prediction holds them)."""
    if manifest.task == "segmentation":
        outputs = {LABELS: np.ascontiguousarray(prediction.labels_zyx, dtype=label_dtype(manifest))}
        if prediction.probabilities_zyx is not None:
            outputs[PROBABILITIES] = np.ascontiguousarray(prediction.probabilities_zyx, dtype=np.float32)
        return outputs
    return {SCORES: np.ascontiguousarray(prediction.scores, dtype=np.float32)}


def scan_from_bytes(data: Any, budget: int | None = None) -> Scan:
    """A request's SCAN, the bytes of a NIfTI file (.nii, or gzipped .nii.gz), read with every
    check a file on disk gets (header, sizes, gzip CRC, the memory budget); its own spacing,
    origin and direction are the scan's. InputError naming SCAN for bytes that are not one."""
    from runtime.io import read_scan

    raw = np.asarray(data)
    if raw.dtype != np.uint8 or raw.ndim != 1 or not raw.size:
        raise InputError(f"{SCAN} must be the bytes of a NIfTI file as UINT8 (n,), got {raw.dtype} {raw.shape}.")
    if raw.size > MAX_SCAN_BYTES:
        raise InputError(f"{SCAN} holds {raw.size:,} bytes, more than {MAX_SCAN_BYTES:,}; send the voxels as "
                         f"{IMAGE} instead.")
    suffix = ".nii.gz" if raw[:2].tobytes() == b"\x1f\x8b" else ".nii"
    with tempfile.TemporaryDirectory(prefix="medflow-request-") as folder:
        path = Path(folder) / f"scan{suffix}"
        raw.tofile(path)
        try:
            scan = read_scan([path], budget=budget)
        except InputError as error:
            raise InputError(str(error).replace(str(path), SCAN)) from None
    return dataclasses.replace(scan, sources=(SCAN,))


def _wants_probabilities(requested: Collection[str] | None) -> bool:
    """Whether a request's outputs include the probabilities (no list: every output)."""
    return requested is None or not requested or PROBABILITIES in requested


def answer(model: Model, inputs: Mapping[str, Any], manifest_json: bytes, budget: int | None = None,
           requested: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """One request of any kind, its inputs by name (absent ones None or left out) -> the named
    output arrays; `manifest_json` is what a MANIFEST request is answered with. A request that
    carries no kind or two, or asks only for outputs its kind does not give, is refused (Triton
    lists every output as requested when a request names none)."""
    kinds = [name for name in REQUEST_KINDS if inputs.get(name) is not None]
    if len(kinds) != 1:
        raise InputError(f"send exactly one of {IMAGE} (with {SPACING}), {SCAN}, {WINDOWS} or {MANIFEST}; the request "
                         f"holds {', '.join(kinds) or 'none of them'}.")
    kind = kinds[0]
    extra = [name for name in GRID_NAMES if inputs.get(name) is not None]
    if extra and kind != IMAGE:
        raise InputError(f"{', '.join(extra)} go{'es' if len(extra) == 1 else ''} with {IMAGE} only; a {kind} request "
                         "carries none.")
    given = answers_of(model.manifest, kind)
    if requested and not set(requested) & set(given):
        raise InputError(f"a {kind} request is answered with {', '.join(given)}, not "
                         f"{', '.join(sorted(requested))}.")
    if kind == MANIFEST:
        return {MANIFEST_JSON: np.frombuffer(manifest_json, dtype=np.uint8).copy()}
    if kind == WINDOWS:
        return {WINDOW_OUTPUTS: run_windows(model, inputs[WINDOWS])}
    if kind == SCAN:
        return _predict(model, scan_from_bytes(inputs[SCAN], budget), budget, requested, overwrite=True)
    return predict_arrays(model, inputs[IMAGE], inputs.get(SPACING), budget, requested, inputs.get(ORIGIN),
                          inputs.get(DIRECTION))


def run_windows(model: Model, windows: Any) -> np.ndarray:
    """The model's raw output for a batch of windows (N, C, *patch) a client cut and preprocessed:
    float32 (N, K, *patch), or (N, K) for a classification or regression model. InputError for a
    batch of another shape than the manifest's patch, more windows or values than one model call
    may take (runtime.limits), or NaN or infinite values."""
    return _call(model, check_windows(model, windows))


def check_windows(model: Model, windows: Any) -> np.ndarray:
    """A request's WINDOWS held to the model (see run_windows), as a contiguous float32 array."""
    manifest = model.manifest
    window = manifest.window
    if window.mode != "sliding":
        raise InputError(f"model {manifest.name} takes whole images (window.mode whole), not windows; send {IMAGE}.")
    expected = (len(manifest.channels), *window.patch_size)
    if not isinstance(windows, np.ndarray) or windows.dtype != np.float32:
        kind = getattr(windows, "dtype", type(windows).__name__)
        raise InputError(f"{WINDOWS} must be FP32 (N, {', '.join(map(str, expected))}), got {kind}.")
    if windows.ndim != len(expected) + 1 or tuple(windows.shape[1:]) != expected or not windows.shape[0]:
        raise InputError(f"{WINDOWS} has shape {windows.shape}; model {manifest.name} takes (N, "
                         f"{', '.join(map(str, expected))}): N windows of {len(manifest.channels)} channel(s) and "
                         f"patch {tuple(window.patch_size)}.")
    if windows.shape[0] > MAX_BATCH_SIZE or windows.size > MAX_BATCH_VALUES:
        raise InputError(f"{WINDOWS} holds {windows.shape[0]} windows ({windows.size:,} values); send at most "
                         f"{MAX_BATCH_SIZE} and {MAX_BATCH_VALUES:,} values per request.")
    if not np.isfinite(windows).all():
        raise InputError(f"{WINDOWS} holds NaN or infinite values; the client's preprocessing went wrong.")
    return np.ascontiguousarray(windows)


def _call(model: Model, windows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(model.backend(windows), dtype=np.float32)


def run_window_requests(model: Model, requests: Sequence[Any]) -> list[np.ndarray | MedflowError]:
    """The WINDOWS of several requests (as Triton's dynamic batcher hands them over) in as few
    model calls as runtime.limits allow: each request checked alone, so that a bad one gets its
    own error while the others run; the good ones stacked, run, and split back. One result per
    request, in order: its raw output, or the error that refused or failed it."""
    results: list[np.ndarray | MedflowError | None] = []
    good: list[tuple[int, np.ndarray]] = []
    for index, windows in enumerate(requests):
        try:
            good.append((index, check_windows(model, windows)))
            results.append(None)
        except InputError as error:
            results.append(error)
    for group in _groups(good):
        try:
            stacked = np.concatenate([windows for _, windows in group])
            output = _call(model, stacked)
            if output.shape[0] != stacked.shape[0]:
                raise ModelError(f"model {model.manifest.name} answered {output.shape[0]} windows for "
                                 f"{stacked.shape[0]}; re-export the model.")
        except MedflowError as error:
            for index, _ in group:
                results[index] = error
            continue
        start = 0
        for index, windows in group:
            results[index] = output[start:start + len(windows)]
            start += len(windows)
    return results


def _groups(good: list[tuple[int, np.ndarray]]) -> list[list[tuple[int, np.ndarray]]]:
    """Consecutive requests stacked while the stack stays within one model call's limits."""
    groups: list[list[tuple[int, np.ndarray]]] = []
    windows = values = 0
    for item in good:
        count, size = len(item[1]), item[1].size
        if not groups or windows + count > MAX_BATCH_SIZE or values + size > MAX_BATCH_VALUES:
            groups.append([])
            windows = values = 0
        groups[-1].append(item)
        windows, values = windows + count, values + size
    return groups


def served_version_dir(model_config: Mapping[str, Any], repository: Path, version: str) -> Path:
    """The version folder a model instance serves: its own (`<repository>/<version>`), or for a
    companion model the one of the model its "serves" parameter names, beside it (never a path
    out of the repository)."""
    serves = _parameter(model_config.get("parameters") or {}, SERVES_PARAMETER)
    if serves is None:
        return Path(repository) / str(version)
    if not SERVED_NAME.fullmatch(serves) or serves in (".", ".."):
        raise InputError(f"config parameter {SERVES_PARAMETER}={serves!r} is not a model folder name; restore the "
                         "config that export wrote.")
    return Path(repository).parent / serves / str(version)


def serves(model_config: Mapping[str, Any]) -> bool:
    """Whether the config is a companion's, serving another model's versions (batched windows)."""
    return _parameter(model_config.get("parameters") or {}, SERVES_PARAMETER) is not None


def check_batching(model_config: Mapping[str, Any]) -> None:
    """ModelError for a config whose max_batch_size the model cannot serve: a model takes one
    whole scan or batch of windows per request (0); its `<name>_windows` companion, batched windows
    (at least 1). Triton loads such a model and then refuses every request."""
    size = model_config.get("max_batch_size", 0)
    batched = serves(model_config)
    if (size >= 1) if not batched else (size < 1):
        wanted = "at least 1 (the windows each model call batches)" if batched else \
            "0 (one whole scan or batch of windows per request)"
        raise ModelError(f"config.pbtxt of {model_config.get('name', '?')} sets max_batch_size {size}, but it must be "
                         f"{wanted}; set it back (python -m export build writes it so), and raise instance_group's "
                         "count for more throughput.")


def predict_request(model: Model, image: Any = None, spacing_zyx: Any = None, scan: Any = None,
                    budget: int | None = None, requested: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """One request: exactly one of IMAGE (with SPACING) or SCAN (an encoded file) -> the named
    output arrays on the request's grid (for SCAN, the file's own), and that grid."""
    if (image is None) == (scan is None):
        raise InputError(f"send exactly one of {IMAGE} (FP32 voxels, with {SPACING}) and {SCAN} (a NIfTI file's "
                         "bytes).")
    if scan is None:
        return predict_arrays(model, image, spacing_zyx, budget, requested)
    if spacing_zyx is not None:
        raise InputError(f"{SCAN} carries its own spacing; send {SPACING} with {IMAGE} only.")
    return _predict(model, scan_from_bytes(scan, budget), budget, requested, overwrite=True)


def predict_arrays(model: Model, image: Any, spacing_zyx: Any = None, budget: int | None = None,
                   requested: Collection[str] | None = None, origin_xyz: Any = None,
                   direction: Any = None) -> dict[str, np.ndarray]:
    """One request: IMAGE (and SPACING, ORIGIN, DIRECTION) -> the named output arrays on the
    request's grid, and that grid. A request whose prediction would need more memory than
    `budget` (default: runtime.budget's) is refused with an InputError before any work.
    `requested` (default: every output): a segmentation asked for LABELS alone skips its
    probabilities, as `runtime predict --output` does."""
    return _predict(model, scan_from_arrays(model.manifest, image, spacing_zyx, origin_xyz, direction), budget,
                    requested, overwrite=False)


def _predict(model: Model, scan: Scan, budget: int | None, requested: Collection[str] | None,
             overwrite: bool) -> dict[str, np.ndarray]:
    """`overwrite`: the scan's array is the request's own (decoded here), so preprocessing may work in it."""
    prediction = predict_scan(model, scan, budget=budget, probabilities=_wants_probabilities(requested),
                              overwrite=overwrite)
    outputs = prediction_outputs(model.manifest, prediction)
    return {**outputs, **grid_outputs(scan)} if model.manifest.task == "segmentation" else outputs


def choose_budget(model_config: Mapping[str, Any]) -> int | None:
    """The memory budget of one request, from the config parameter "max_memory" ("8G", "512M", bytes);
    None (runtime.budget's default) when the config sets none."""
    value = _parameter(model_config.get("parameters") or {}, BUDGET_PARAMETER)
    return None if value is None else parse_size(value, f"config parameter {BUDGET_PARAMETER}")


def _parameter(parameters: Mapping[str, Any], key: str) -> str | None:
    """A Triton config parameter's string value, from the JSON form {"key": {"string_value": ...}}."""
    entry = parameters.get(key)
    if entry is None:
        return None
    value = entry.get("string_value") if isinstance(entry, Mapping) else entry
    return None if value in (None, "") else str(value)


def version_cpu_devices(version_dir: Path) -> list[str] | None:
    """The CPU devices an int8 version may run on, fastest first: those its labels were checked on
    when it was made (`runtime.predict.checked_device` refuses the others); None for any other
    version, which runs on any."""
    checked = checked_backends(load_manifest(version_dir, verify=False)[0])
    return None if checked is None else measured_devices(checked)


def choose_device(model_config: Mapping[str, Any], instance_kind: str = "MODEL", device_id: str = "0",
                  cpu_devices: Sequence[str] | None = None) -> tuple[str, int | None, int]:
    """The runtime device, thread cap and GPU number of a model instance, from its Triton config
    and the instance's kind and device id (as Triton gives them to `initialize`).

    The "device" parameter wins when it names a device (a GPU one on a KIND_CPU instance is
    refused). With "auto" or none, a KIND_GPU instance runs on "cuda", a KIND_CPU one on the
    fastest CPU backend installed (of `cpu_devices`, where the version may run on those only:
    `version_cpu_devices`), and a KIND_MODEL one on "auto" (the GPU when onnxruntime has one, else
    the CPU). A KIND_GPU instance runs on the GPU Triton placed it on (`gpus: [...]` in its instance
    group); any other on GPU 0.
    """
    parameters = model_config.get("parameters") or {}
    device = _parameter(parameters, DEVICE_PARAMETER) or "auto"
    if device not in DEVICES:
        raise InputError(
            f"config parameter {DEVICE_PARAMETER}={device!r} is not a device; use one of {', '.join(DEVICES)}."
        )
    kind = instance_kind.upper()
    if device == "auto" and kind == "GPU":
        device = "cuda"
    elif device == "auto" and kind == "CPU":
        device = (list(cpu_devices or ()) or cpu_order())[0]
    elif kind == "CPU" and device in GPU_DEVICES:
        raise InputError(
            f"config parameter {DEVICE_PARAMETER}={device!r} asks for a GPU, but the instance group is "
            "KIND_CPU; use kind KIND_GPU for it, or a CPU device (cpu, openvino, auto)."
        )
    threads = _parameter(parameters, THREADS_PARAMETER)
    if threads is not None and not (is_number_name(threads) and int(threads) > 0):
        raise InputError(f"config parameter {THREADS_PARAMETER}={threads!r} must be a positive integer.")
    gpu = 0
    if kind == "GPU":
        if not str(device_id).isdecimal():
            raise InputError(f"Triton gave the GPU instance device id {device_id!r}, which is not a GPU number.")
        gpu = int(device_id)
    return device, None if threads is None else int(threads), gpu
