"""Proving a model version still gives its numbers: checksums, schema, its digest, and a run on stored samples.

A version folder may hold `samples/input_<n>.npy` and `samples/output_<n>.npy`: model inputs (one
batch of windows) and the outputs the model gave for them when it was exported. Both are listed,
with their sha256, in the manifest's `files`. An output may differ from the stored one by 1e-4 of
its magnitude; an int8 version records its own tolerance per backend it was measured on
(`onnx.sample_tolerance`), since each backend rounds its integer arithmetic its own way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.digests import DigestCheck, check_config_digest, load_as_exported
from runtime.errors import ModelError, brief
from runtime.manifest import Manifest, check_provenance
from runtime.staging import Staging, stale_folders

SAMPLES_DIR = "samples"
SAMPLE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Verification:
    name: str
    version: int
    files: int
    samples: int
    max_abs_diff: float
    backend: str
    digest: DigestCheck
    stale: tuple[Staging, ...]
    tolerance: float = SAMPLE_TOLERANCE
    scale: float = 1.0          # the magnitude (at least 1) of the outputs of the sample nearest its limit
    probabilities: bool = False  # the window's output was held to [0, 1] (a classifier said to give probabilities)

    def bound(self) -> str:
        """How far a sample may differ, as the sample nearest its limit was held to it."""
        if self.scale == 1.0:
            return f"allowed {self.tolerance:.2g}"
        return (f"allowed {self.tolerance * self.scale:.2g}: tolerance {self.tolerance:.2g} x outputs up to "
                f"{self.scale:.3g}")


def sample_pairs(files: list[str]) -> list[tuple[str, str]]:
    """(input, output) file names of the stored samples, in order."""
    inputs = sorted(f for f in files if f.startswith(f"{SAMPLES_DIR}/input_") and f.endswith(".npy"))
    return [(name, name.replace("/input_", "/output_")) for name in inputs]


def load_array(path: Path) -> np.ndarray:
    """A stored sample, mapped first so that a header promising more than the file holds is refused
    before anything that size is allocated."""
    try:
        return np.array(np.load(path, allow_pickle=False, mmap_mode="r"))
    except (OSError, ValueError, MemoryError) as exc:
        raise ModelError(f"{path} cannot be read as a numpy array ({brief(exc)}); re-export "
                         "the model.") from None


def verify_model(model: Path | str, device: str = "cpu", tolerance: float = SAMPLE_TOLERANCE) -> Verification:
    """Check schema and checksums (load_as_exported does) and the digest against the model's config.pbtxt,
    then rerun every stored sample; also lists the model folder's stale staging folders."""
    from runtime.backends import open_backend
    from runtime.predict import checked_device

    manifest, folder = load_as_exported(model)
    check_provenance(manifest)
    digest = check_config_digest(folder)
    pairs = sample_pairs(list(manifest.files))
    device = checked_device(manifest, folder, device)
    backend = open_backend(folder / manifest.onnx.file, manifest.onnx.input, manifest.onnx.output, device=device)
    tolerance = backend_tolerance(manifest, folder, backend.name, tolerance)
    worst, ratio, scale = 0.0, -1.0, 1.0
    for input_name, output_name in pairs:
        if output_name not in manifest.files:
            raise ModelError(f"{folder / input_name} has no stored output {output_name}; re-export the model.")
        expected = load_array(folder / output_name)
        actual = backend(load_array(folder / input_name))
        if actual.shape != expected.shape:
            raise ModelError(f"{folder.name}: sample {input_name} now gives shape {actual.shape}, "
                             f"{expected.shape} when exported.")
        difference = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
        magnitude = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
        if not difference <= tolerance * magnitude:
            raise ModelError(f"{folder}: sample {input_name} differs from its exported output by {difference:.3g} "
                             f"(allowed {tolerance * magnitude:.3g}: tolerance {tolerance:g} x its outputs' magnitude "
                             f"{magnitude:.3g}) on {backend.name}; the model no longer gives its numbers.")
        if difference / magnitude > ratio:
            worst, ratio, scale = difference, difference / magnitude, magnitude
    probabilities = _holds_its_contract(backend, manifest, folder, tolerance)
    return Verification(name=manifest.name, version=manifest.version, files=len(manifest.files),
                        samples=len(pairs), max_abs_diff=worst, backend=backend.name, digest=digest,
                        stale=tuple(stale_folders(folder.parent)), tolerance=tolerance, scale=scale,
                        probabilities=probabilities)


def _holds_its_contract(backend: Any, manifest: Manifest, folder: Path, tolerance: float) -> bool:
    """One window of the manifest's channels and patch, run: its output must be the shape the
    manifest promises, finite, a classifier's probabilities where it says its graph gives them, and
    the same (within `tolerance`) in a batch of two where its windows are run in batches
    (`runs_batches`). The stored
    samples prove the numbers; this proves the manifest's word, for a version with no samples too
    (one made by hand). Whether the probabilities were held to [0, 1]."""
    from runtime.postprocess import check_output
    from runtime.predict import gives_probabilities, hold_to_probabilities

    window = smooth_field(len(manifest.channels), tuple(manifest.window.patch_size))
    output = backend(window)
    check_output(output, window.shape, manifest)
    _refuse_non_finite(output, "a window of its manifest's patch", folder / manifest.onnx.file)
    hold_to_probabilities(output, manifest)
    if runs_batches(manifest.modality, manifest.window.mode, manifest.window.batch_size):
        refuse_batch_mixing(backend, window, output, folder / manifest.onnx.file, tolerance)
    return gives_probabilities(manifest)


def runs_batches(modality: str, mode: str, batch_size: int) -> bool:
    """Whether a model's windows are run in batches: by the runtime where its window.batch_size is
    over 1, and by Triton's `<name>_windows` companion of a histology model on sliding windows,
    which batches the tiles of several requests whatever that size."""
    return batch_size > 1 or (modality == "histology" and mode == "sliding")


def refuse_batch_mixing(backend: Any, window: np.ndarray, alone: np.ndarray, source: Path | str,
                        tolerance: float = SAMPLE_TOLERANCE) -> None:
    """ModelError where the model gives a window (1, C, *patch) another output in a batch beside a
    second window than `alone`, the output it gave the window by itself: a graph that mixes the
    windows of a batch (a BatchNorm exported in training mode, a normalisation over the batch axis)
    gives each window of an image a value that depends on which windows share its batch."""
    from runtime.backends.common import RunFailed

    other = smooth_field(window.shape[1], tuple(window.shape[2:]), seed=1)
    try:
        together = backend(np.concatenate([window, other]))
    except RunFailed as error:
        raise ModelError(f"{source} runs one window but not a batch of 2 ({error.reason}), and its windows are run "
                         "in batches; export it with a batch axis that takes any size, or set window.batch_size 1 "
                         "(a histology model's tiles are batched by Triton whatever it is).") from None
    if together.shape[0] != 2 or together.shape[1:] != alone.shape[1:]:
        raise ModelError(f"{source} gives an output of shape {together.shape} for a batch of 2 windows, where it "
                         f"gives {alone.shape} for one; export it with a batch axis that holds one output per window "
                         "(dynamic, or fixed at 1).")
    difference = float(np.max(np.abs(together[:1] - alone))) if alone.size else 0.0
    magnitude = max(1.0, float(np.max(np.abs(alone)))) if alone.size else 1.0
    if not difference <= tolerance * magnitude:
        raise ModelError(f"{source} gives a window an output that differs by {difference:.3g} in a batch beside "
                         "another window from the one it gives it alone: its graph mixes the windows of a batch (a "
                         "BatchNorm exported in training mode, or a normalisation over the batch axis), so each "
                         "window's values would depend on its batch; export the model in eval mode, or with a batch "
                         "axis fixed at 1.")


def backend_tolerance(manifest: Manifest, folder: Path, backend: str, default: float) -> float:
    """The tolerance of `backend` where the manifest records one per backend (an int8 version, measured
    on those backends when it was made), else `default`; ModelError for a backend it was not measured on."""
    from runtime.backends import measured_devices

    recorded = manifest.onnx.sample_tolerance
    if not recorded:
        return default
    if backend not in recorded:
        devices = " or ".join(f"--device {device}" for device in measured_devices(recorded)) or \
            f"a backend among {', '.join(recorded)}"
        raise ModelError(f"{folder}: its samples were measured on {', '.join(recorded)} only (an int8 version's "
                         f"outputs differ from backend to backend), not on {backend}; verify it with {devices}.")
    return max(default, recorded[backend])


def smooth_field(channels: int, patch: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A (1, C, *patch) input with image-like spatial correlation, unit variance, float32."""
    rng = np.random.default_rng(seed)
    field = rng.normal(size=(1, channels, *patch)).astype(np.float32)
    for axis in range(2, field.ndim):
        field = (field + np.roll(field, 1, axis) + np.roll(field, -1, axis)) / 3
    return np.ascontiguousarray(field / max(float(field.std()), 1e-8), dtype=np.float32)


def store_samples(version_dir: Path, onnx_file: str, input_name: str, output_name: str,
                  inputs: list[np.ndarray], source: Path | str | None = None, batched: bool = False) -> None:
    """Save each input and what the model gives for it now (onnxruntime, CPU) under samples/.
    ModelError where an output is not all finite: a model that gives NaN or infinity on an
    ordinary input would give it, or a wrong answer, in use; and, with `batched`, where it mixes
    the windows of a batch (`refuse_batch_mixing`). `source` names the model."""
    from runtime.backends import open_backend

    folder = version_dir / SAMPLES_DIR
    folder.mkdir(exist_ok=True)
    backend = open_backend(version_dir / onnx_file, input_name, output_name, device="cpu")
    outputs = []
    for index, array in enumerate(inputs):
        outputs.append(backend(array))
        _refuse_non_finite(outputs[-1], f"sample input {index}", source or version_dir / onnx_file)
        np.save(folder / f"input_{index}.npy", array, allow_pickle=False)
        np.save(folder / f"output_{index}.npy", outputs[-1], allow_pickle=False)
    if batched and inputs:
        refuse_batch_mixing(backend, inputs[0], outputs[0], source or version_dir / onnx_file)


def _refuse_non_finite(output: np.ndarray, given: str, source: Path | str) -> None:
    """ModelError where the output the model at `source` gave for the input `given` names holds NaN
    or infinity: it would give them, or a wrong answer, in use."""
    bad = int(np.count_nonzero(~np.isfinite(output)))
    if bad:
        raise ModelError(f"{source} gives non-finite values (NaN or infinity) in {bad:,} of the {output.size:,} values "
                         f"of its output for {given}; a model must give finite values for every input it may be "
                         "given: check the graph for a log, square root or division of values that can be 0 or "
                         "negative.")
