"""Triton Inference Server configs for a packaged model.

Three ways to serve a model version:

- `python_backend_config`: the model folder itself, served by Triton's Python backend through
  `<version>/model.py` (a copy of `runtime/triton/model.py`). A request sends a whole image and gets
  the runtime's full result back: preprocessing, sliding window, postprocessing and inversion
  happen on the server. `write_triton_files` writes this config and that model.py.
- `windows_backend_config`: for a tile model (histology, sliding windows), a companion
  `<name>_windows` on the same model.py and version folders, answering WINDOWS requests only
  with Triton's dynamic batching, so that the tiles of several clients share one model call.
- `onnx_backend_config`: the bare ONNX graph on Triton's onnxruntime backend, one window
  [C, *patch] per batch item, batched dynamically, for clients that tile, preprocess and stitch
  themselves. Its outputs are the graph's raw values, before the manifest's activation.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

from export.versions import model_lock
from runtime.backends import DEVICES
from runtime.digests import DIGESTS_PARAMETER, config_digests, format_digests, read_config
from runtime.errors import InputError, OutputError
from runtime.manifest import SERVES_PARAMETER, WINDOWS_MODEL_SUFFIX, Manifest, version_digest
from runtime.postprocess import manifest_channels
from runtime.triton.adapter import (
    DEVICE_PARAMETER, DIRECTION, GRID_NAMES, IMAGE, LABELS, MANIFEST, MANIFEST_JSON, ORIGIN, PROBABILITIES, SCAN,
    SCORES, SPACING, WINDOW_OUTPUTS, WINDOWS, label_dtype,
)
from runtime.triton.bytecode import compile_adapter

CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "model.py"

_LABEL_TYPES = {"uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorConfig:
    """One input or output of a Triton model config."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    optional: bool = False


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tensor_text(tensor: TensorConfig) -> str:
    lines = [f"    name: {_quoted(tensor.name)}", f"    data_type: {tensor.data_type}",
             f"    dims: [ {', '.join(str(d) for d in tensor.dims)} ]"]
    if tensor.optional:
        lines.append("    optional: true")
    return "  {\n" + "\n".join(lines) + "\n  }"


def _tensors_text(key: str, tensors: Sequence[TensorConfig]) -> str:
    return f"{key} [\n" + ",\n".join(_tensor_text(t) for t in tensors) + "\n]"


# Versions of a model Triton serves at once: the newest and the one before it.
SERVED_VERSIONS = 2
# Windows the dynamic batcher stacks into one execution at most (or the manifest's batch size, if larger),
# and how long a request waits for others to join it.
WINDOWS_MAX_BATCH = 64
WINDOWS_QUEUE_DELAY_US = 2000


def _parameter_text(key: str, value: str) -> str:
    return f"parameters: {{\n  key: {_quoted(key)}\n  value: {{ string_value: {_quoted(value)} }}\n}}"


def _python_inputs(manifest: Manifest) -> list[TensorConfig]:
    """The adapter's inputs, every one optional: a request carries the one of its kind (and
    SPACING with IMAGE). WINDOWS only where the model runs on sliding windows; their patch size is
    the adapter's to check, as the versions served at once may differ in it."""
    channels, spatial = len(manifest.channels), (-1,) * manifest.dimensions
    inputs = [TensorConfig(IMAGE, "TYPE_FP32", (channels, *spatial), optional=True),
              TensorConfig(SPACING, "TYPE_FP32", (manifest.dimensions,), optional=True),
              TensorConfig(ORIGIN, "TYPE_FP32", (-1,), optional=True),
              TensorConfig(DIRECTION, "TYPE_FP32", (-1,), optional=True),
              TensorConfig(SCAN, "TYPE_UINT8", (-1,), optional=True)]
    if manifest.window.mode == "sliding":
        inputs.append(TensorConfig(WINDOWS, "TYPE_FP32", (-1, channels, *spatial), optional=True))
    return [*inputs, TensorConfig(MANIFEST, "TYPE_UINT8", (1,), optional=True)]


def _channels_dim(manifest: Manifest) -> int:
    """The output's channel dimension in a config: the count the model returns, or -1 where the
    manifest allows two (a classifier read by sigmoid and threshold)."""
    counts = manifest_channels(manifest)
    return counts[0] if len(counts) == 1 else -1


def _python_outputs(manifest: Manifest) -> list[TensorConfig]:
    """The adapter's outputs: (K, *spatial) probabilities and (*spatial) labels with the grid they
    lie on (SPACING, ORIGIN, DIRECTION), or (K,) scores; the raw outputs of WINDOWS; the
    manifest's bytes."""
    k, spatial = _channels_dim(manifest), (-1,) * manifest.dimensions
    if manifest.task != "segmentation":
        outputs = [TensorConfig(SCORES, "TYPE_FP32", (k,))]
    else:
        labels = _LABEL_TYPES[label_dtype(manifest).__name__]
        outputs = [TensorConfig(PROBABILITIES, "TYPE_FP32", (k, *spatial)), TensorConfig(LABELS, labels, spatial),
                   *(TensorConfig(name, "TYPE_FP32", (-1,)) for name in GRID_NAMES)]
    if manifest.window.mode == "sliding":
        per_window = (k, *spatial) if manifest.task == "segmentation" else (k,)
        outputs.append(TensorConfig(WINDOW_OUTPUTS, "TYPE_FP32", (-1, *per_window)))
    return [*outputs, TensorConfig(MANIFEST_JSON, "TYPE_UINT8", (-1,))]


def python_backend_config(manifest: Manifest, device: str = "auto", digests: Mapping[int, str] | None = None) -> str:
    """config.pbtxt for the model folder served by the Python backend through the runtime.

    IMAGE is (C, *spatial) in (z, y, x) order of any size; SPACING (mm, same order) is optional in
    the config, and required by the adapter for a model that resamples; ORIGIN and DIRECTION
    (optional) place it in space, and come back with the outputs beside SPACING; SCAN (the bytes of a
    NIfTI file) may be sent instead of both; WINDOWS (N, C, *patch), windows a client cut itself,
    are answered with the model's raw WINDOW_OUTPUTS, and MANIFEST with the version's manifest
    (`runtime.triton.adapter`: a request carries one of them). The two newest versions are served
    at once (a client picks one by number; without one, Triton takes the newest), so a new version
    can be tried beside the one it replaces. The instance is KIND_MODEL, so the runtime
    places it: `device` (a runtime device name, kept as the "device" parameter) picks the backend,
    "auto" choosing the GPU when onnxruntime has one. `digests` (version -> version digest) become
    the "version_digests" parameter (`runtime.digests`), which the adapter checks each version
    against before serving it.
    """
    if device not in DEVICES:
        raise InputError(f"device {device!r} is not a runtime device; use one of {', '.join(DEVICES)}.")
    parts = [
        f"# Triton config of model {manifest.name}: the runtime serves <version>/ through model.py.",
        f"name: {_quoted(manifest.name)}", 'backend: "python"', "max_batch_size: 0",
        _tensors_text("input", _python_inputs(manifest)), _tensors_text("output", _python_outputs(manifest)),
        f"version_policy: {{ latest: {{ num_versions: {SERVED_VERSIONS} }} }}",
        "instance_group [\n  {\n    count: 1\n    kind: KIND_MODEL\n  }\n]",
        _parameter_text(DEVICE_PARAMETER, device),
    ]
    if digests:
        parts.append(_parameter_text(DIGESTS_PARAMETER, format_digests(digests)))
    return "\n".join(parts) + "\n"


def batches_windows(manifest: Manifest) -> bool:
    """Whether export gives the model a `<name>_windows` companion: a histology model on sliding
    windows, whose clients (slides, many at once) send batches of tiles."""
    return manifest.modality == "histology" and manifest.window.mode == "sliding"


def windows_backend_config(manifest: Manifest, device: str = "auto", digests: Mapping[int, str] | None = None) -> str:
    """config.pbtxt of `<name>_windows`: the Python backend serving the versions of model `name`
    (its "serves" parameter) to WINDOWS requests only, with dynamic batching, so that the tiles
    of several clients share one model call. A request is (N, C, *patch) windows, N at most
    max_batch_size; its answer WINDOW_OUTPUTS as a WINDOWS request to the model itself gets."""
    if device not in DEVICES:
        raise InputError(f"device {device!r} is not a runtime device; use one of {', '.join(DEVICES)}.")
    k, spatial = _channels_dim(manifest), (-1,) * manifest.dimensions
    per_window = (k, *spatial) if manifest.task == "segmentation" else (k,)
    name = manifest.name + WINDOWS_MODEL_SUFFIX
    parts = [
        f"# Triton config of {name}: the windows of model {manifest.name}, batched across clients; the runtime "
        f"serves {manifest.name}/<version>/ through model.py.",
        f"name: {_quoted(name)}", 'backend: "python"',
        f"max_batch_size: {max(WINDOWS_MAX_BATCH, manifest.window.batch_size)}",
        _tensors_text("input", [TensorConfig(WINDOWS, "TYPE_FP32", (len(manifest.channels), *spatial))]),
        _tensors_text("output", [TensorConfig(WINDOW_OUTPUTS, "TYPE_FP32", per_window)]),
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {WINDOWS_QUEUE_DELAY_US}\n}}",
        f"version_policy: {{ latest: {{ num_versions: {SERVED_VERSIONS} }} }}",
        "instance_group [\n  {\n    count: 1\n    kind: KIND_MODEL\n  }\n]",
        _parameter_text(DEVICE_PARAMETER, device),
        _parameter_text(SERVES_PARAMETER, manifest.name),
    ]
    if digests:
        parts.append(_parameter_text(DIGESTS_PARAMETER, format_digests(digests)))
    return "\n".join(parts) + "\n"


def write_windows_model(model_dir: Path, manifest: Manifest, device: str = "auto") -> Path:
    """`<name>_windows` beside the model folder: its config.pbtxt, recording the digests the
    model's config records, and the version's folder holding only the runtime's model.py (the
    instance loads the model's own version folder). Returns the companion's folder."""
    model_dir = Path(model_dir)
    companion = model_dir.parent / (manifest.name + WINDOWS_MODEL_SUFFIX)
    version_dir = companion / str(manifest.version)
    try:
        version_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {version_dir} ({exc.strerror or exc}); check the repository is "
                          "writable.") from None
    copy_adapter(version_dir)
    config = windows_backend_config(manifest, device, config_digests(model_dir) or {})
    _write_config(companion / CONFIG_FILE, config, (DIGESTS_PARAMETER, SERVES_PARAMETER), BATCHED_WINDOWS)
    return companion


def onnx_backend_config(manifest: Manifest, name: str, max_batch_size: int = 8) -> str:
    """config.pbtxt for the bare ONNX graph on the onnxruntime backend, one window per batch item.

    With max_batch_size > 0 Triton adds the batch axis and batches requests dynamically; with 0
    every request carries its own batch axis (-1, C, *patch).
    """
    if not name or "/" in name:
        raise InputError(f"Triton model name {name!r} must be a non-empty folder name.")
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 0:
        raise InputError(f"max_batch_size must be an integer >= 0, got {max_batch_size!r}.")
    patch, k = tuple(manifest.window.patch_size), _channels_dim(manifest)
    batch = () if max_batch_size > 0 else (-1,)
    out_dims = (k, *patch) if manifest.task == "segmentation" else (k,)
    parts = [
        f"{BARE_HEADER}{manifest.name} v{manifest.version}: one window per item.",
        f"name: {_quoted(name)}", 'backend: "onnxruntime"', f"max_batch_size: {max_batch_size}",
        f"default_model_filename: {_quoted(manifest.onnx.file)}",
        _tensors_text("input", [TensorConfig(manifest.onnx.input, "TYPE_FP32",
                                             (*batch, len(manifest.channels), *patch))]),
        _tensors_text("output", [TensorConfig(manifest.onnx.output, "TYPE_FP32", (*batch, *out_dims))]),
    ]
    if max_batch_size > 0:
        parts.append("dynamic_batching { }")
    return "\n".join(parts) + "\n"


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path} ({exc}); check the folder exists and is writable.") from None


def adapter_source() -> bytes:
    """The Triton model.py that every version folder carries: runtime/triton/model.py."""
    return resources.files("runtime.triton").joinpath(MODEL_FILE).read_bytes()


def copy_adapter(version_dir: Path) -> Path:
    """Copy the runtime's Triton adapter into a version folder as model.py (before its checksums are taken),
    with its bytecode (a polling server would load the version again when its stub wrote it)."""
    version_dir = Path(version_dir)
    if not version_dir.is_dir():
        raise OutputError(f"version folder {version_dir} does not exist; package the model version first.")
    model_py = version_dir / MODEL_FILE
    _write_atomically(model_py, adapter_source())
    compile_adapter(model_py)
    return model_py


def write_model_config(model_dir: Path, manifest: Manifest, device: str = "auto", digest: str | None = None) -> Path:
    """Write <model_dir>/config.pbtxt; model_dir must be named after the model, as Triton requires.

    The version digests the config already records are kept; `digest`, when given, is recorded for
    the manifest's version.
    """
    model_dir = Path(model_dir)
    if model_dir.name != manifest.name:
        raise OutputError(
            f"Triton serves a model from a folder of the same name, but {model_dir} holds model "
            f"{manifest.name!r}; put it in {model_dir.parent / manifest.name}."
        )
    digests = config_digests(model_dir) or {}
    if digest is not None:
        digests[manifest.version] = digest
    config = model_dir / CONFIG_FILE
    text = _write_config(config, python_backend_config(manifest, device, digests), (DIGESTS_PARAMETER,))
    _warn_unserved(config, text, manifest.version)
    return config


def _warn_unserved(config: Path, text: str, version: int) -> None:
    """A warning where the config's version policy, kept as an operator set it, does not serve
    `version`."""
    from runtime.pbtxt import served_versions
    from runtime.manifest import version_folders

    available = {int(p.name) for p in version_folders(config.parent)} | {version}
    served = served_versions(text, str(config), sorted(available))
    if version not in served:
        log.warning("%s: its version_policy serves version(s) %s only, so version %d is not served; add it to the "
                    "policy's versions (or serve the newest: version_policy: { latest: { num_versions: 2 } })",
                    config, ", ".join(map(str, served)) or "none", version)


# Why a config's max_batch_size is the build's, by the kind of model the config serves.
WHOLE_REQUESTS = ("the runtime's model.py takes one whole scan or batch of windows per request; for more throughput "
                  "raise instance_group's count")
BATCHED_WINDOWS = "the windows one model call batches: at least the model's batch size and 64"
BARE_GRAPH = "export build --triton-onnx writes the graph's batching (its max_batch_size option)"


def _write_config(path: Path, generated: str, owned: Sequence[str], batching: str = WHOLE_REQUESTS) -> str:
    """Write `generated` at `path`, keeping what the config there sets by hand (`kept_edits`): the
    instances, the versions served, the parameters but the `owned` ones, and any other field; a
    warning for each field it set that says what the model is, which is written anew (`batching`:
    why its max_batch_size is). The text."""
    from export.config_merge import edits_undone, kept_edits

    old = read_config(path)
    text = kept_edits(generated, old, owned, _parameter_text, str(path))
    _write_atomically(path, text.encode("utf-8"))
    for name, was, now in edits_undone(generated, old, str(path)):
        why = batching if name == "max_batch_size" else "it says what the model is"
        log.warning("%s: %s is written by the build, not kept (%r became %r): %s", path, name, was, now, why)
    return text


def record_version(model_dir: Path, manifest: Manifest) -> str:
    """Once a version is in place: under the model's build lock, write config.pbtxt recording the
    version's digest beside those already recorded (and the `<name>_windows` companion of a tile
    model, `batches_windows`); returns the digest."""
    digest = version_digest(Path(model_dir) / str(manifest.version))
    with model_lock(Path(model_dir)):
        write_model_config(model_dir, manifest, digest=digest)
        if batches_windows(manifest):
            write_windows_model(model_dir, manifest)
    return digest


def write_triton_files(model_dir: Path, manifest: Manifest, version_dir: Path,
                       device: str = "auto") -> tuple[Path, Path]:
    """config.pbtxt for the model and the runtime's model.py in the version folder; both paths."""
    model_py = copy_adapter(version_dir)
    return write_model_config(model_dir, manifest, device), model_py


BARE_SUFFIX = "_onnx"
BARE_HEADER = "# Triton config of the bare ONNX graph of "


def check_bare_room(model_dir: Path, version: int) -> None:
    """Before version `version` of the model in `model_dir` is built with its bare graph
    (`write_onnx_model`): InputError where `<name>_onnx` is something else (a file, a model of the
    runtime, its versions holding manifests, or a model on a backend other than onnxruntime),
    OutputError where it has that version already."""
    from runtime.pbtxt import config_backend

    bare = Path(model_dir).parent / f"{Path(model_dir).name}{BARE_SUFFIX}"
    if not bare.exists() and not bare.is_symlink():
        return
    another = (f"--triton-onnx writes the bare graph as model {bare.name}, but {bare} is another model; build this "
               "one under another --name, or leave --triton-onnx out.")
    if not bare.is_dir():
        raise InputError(another.replace("is another model", "is a file"))
    entries = list(bare.iterdir())
    if not entries:
        return
    text = read_config(bare / CONFIG_FILE)
    backend = config_backend(text, str(bare / CONFIG_FILE)) if text is not None else None
    if backend != "onnxruntime" or any((entry / "manifest.json").exists() for entry in entries if entry.is_dir()):
        raise InputError(another)
    if (bare / str(version)).exists():
        raise OutputError(f"{bare / str(version)} already exists, and version {version} of {Path(model_dir).name} "
                          f"would write its bare graph there; a version is never overwritten: move it away first.")


def write_onnx_model(repository: Path, manifest: Manifest, version_dir: Path, max_batch_size: int = 8) -> Path:
    """A second Triton model, `<name>_onnx`, serving the bare ONNX graph on the onnxruntime backend with
    dynamic batching, for clients that cut their own windows; same version number, never overwritten.
    What its config sets by hand is kept (`kept_edits`)."""
    import shutil

    name = f"{manifest.name}{BARE_SUFFIX}"
    model_dir = Path(repository) / name
    target = model_dir / str(manifest.version)
    if target.exists():
        raise OutputError(f"{target} already exists; a version is never overwritten.")
    config = onnx_backend_config(manifest, name, max_batch_size)
    target.mkdir(parents=True)
    shutil.copyfile(Path(version_dir) / manifest.onnx.file, target / manifest.onnx.file)
    _write_config(model_dir / CONFIG_FILE, config, (), BARE_GRAPH)
    return target
