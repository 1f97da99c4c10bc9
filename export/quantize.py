"""`python -m export quantize VERSION --calibration subjects.csv`: an int8 version of a model, made
by post-training quantization (NNCF) from windows of real subjects, and kept only where its labels
agree with the float version's on subjects it was not calibrated on.

The CSV is the one `runtime predict --csv` reads (subject_id and one column per channel). Its last
rows (a fifth, at least one) are held out; the others are run through the float model by the
runtime, and the preprocessed windows its backend is given are the calibration data, so the int8
graph is calibrated on exactly what it will see. NNCF inserts quantize/dequantize pairs into the
ONNX graph (OpenVINO and onnxruntime then run its convolutions in int8). The held-out subjects are
predicted by both; the share of voxels whose labels agree must reach `min_agreement` (99.5 % by
default), or nothing is written. The new version carries the same manifest but its model file, the
samples rerun on it, and a `quantization` record in its provenance; the runtime takes it like any
version.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtime.errors import InputError
from runtime.manifest import Manifest, load_manifest, sha256_of, write_manifest
from runtime.predict import Model

DEFAULT_WINDOWS = 300
DEFAULT_AGREEMENT = 0.995
HELD_OUT_SHARE = 0.2


@dataclass(frozen=True)
class Agreement:
    subject_id: str
    voxels: int
    agreeing: int
    float_s: float
    int8_s: float

    @property
    def share(self) -> float:
        return self.agreeing / max(1, self.voxels)


class Recording:
    """A backend that hands every batch to `inner` and keeps up to `limit` of the windows it saw."""

    name = "recording"

    def __init__(self, inner: Any, limit: int) -> None:
        self.inner, self.limit, self.windows = inner, limit, []
        self.on_cpu = inner.on_cpu

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        room = self.limit - len(self.windows)
        if room > 0:
            self.windows.extend(np.array(window, dtype=np.float32) for window in batch[:room])
        return self.inner(batch)

    borrow = __call__

    def run(self, source: Any, plan: Any, merger: Any, progress: Any = None) -> None:
        from runtime.backends.execution import run_plan

        run_plan(self, source, plan, merger, progress)

    def prepare(self, batch_shape: tuple[int, ...]) -> None:
        self.inner.prepare(batch_shape)


def quantize_version(version_dir: Path, csv_path: Path, windows: int = DEFAULT_WINDOWS,
                     min_agreement: float = DEFAULT_AGREEMENT, say: Callable[[str], None] = print) -> Path:
    """Write the int8 version of the model version at `version_dir`; its folder."""
    nncf, onnx = _modules()
    from runtime.commands.subjects import read_subjects

    manifest, folder = load_manifest(version_dir)
    if manifest.window.mode != "sliding" or manifest.modality != "radiology":
        raise InputError(f"model {manifest.name} is a {manifest.modality} model on {manifest.window.mode} windows; "
                         "quantize calibrates on a radiology model's sliding windows.")
    subjects = read_subjects(csv_path, manifest)
    if len(subjects) < 2:
        raise InputError(f"{csv_path} holds {len(subjects)} subject(s); give at least 2 (one or more to calibrate on, "
                         "one held out to check the int8 labels against the float ones).")
    held = max(1, math.ceil(HELD_OUT_SHARE * len(subjects)))
    calibration, held_out = subjects[:-held], subjects[-held:]
    samples = _calibration_windows(folder, manifest, calibration, windows, say)
    say(f"calibrating on {len(samples)} window(s) of {len(calibration)} subject(s) ...")
    graph = onnx.load(str(folder / manifest.onnx.file))
    started = time.perf_counter()
    quantized = nncf.quantize(graph, nncf.Dataset(samples, lambda window: {manifest.onnx.input: window[None]}),
                              subset_size=len(samples))
    say(f"quantized in {time.perf_counter() - started:.1f} s; checking {len(held_out)} held-out subject(s) ...")
    with tempfile.TemporaryDirectory(prefix="medflow-int8-") as scratch:
        int8_path = Path(scratch) / manifest.onnx.file
        onnx.save(quantized, str(int8_path))
        results = _agreements(folder, manifest, int8_path, held_out, say)
        voxels = sum(r.voxels for r in results)
        share = sum(r.agreeing for r in results) / max(1, voxels)
        speedup = sum(r.float_s for r in results) / max(1e-9, sum(r.int8_s for r in results))
        say(f"label agreement on held-out subjects: {100 * share:.3f} % of {voxels:,} voxels; int8 runs "
            f"{speedup:.2f}x the float speed")
        if share < min_agreement:
            raise InputError(f"the int8 labels agree with the float ones on {100 * share:.3f} % of the held-out "
                             f"voxels, under the {100 * min_agreement:g} % required; nothing was written. Calibrate "
                             "on more subjects (or windows), or keep the float version.")
        record = {"method": "int8 post-training quantization (NNCF)", "from_version": manifest.version,
                  "calibration_subjects": len(calibration), "calibration_windows": len(samples),
                  "held_out_subjects": len(held_out), "label_agreement": round(share, 6),
                  "speedup_held_out": round(speedup, 3)}
        return _write_version(folder, manifest, int8_path, record)


def _modules() -> tuple[Any, Any]:
    try:
        import nncf
        import onnx
    except ImportError as error:
        raise InputError(f"quantize needs NNCF and onnx ({error}); pip install 'medflow[quantize]'.") from None
    return nncf, onnx


def _calibration_windows(folder: Path, manifest: Manifest, subjects: list, limit: int,
                         say: Callable[[str], None]) -> list[np.ndarray]:
    """The preprocessed windows the float model's backend is given for the subjects, at most
    `limit`, spread over the subjects."""
    from runtime.backends import open_backend
    from runtime.io import read_scan
    from runtime.predict import predict_scan

    backend = open_backend(folder / manifest.onnx.file, manifest.onnx.input, manifest.onnx.output, device="cpu")
    per_subject = max(1, limit // len(subjects))
    windows: list[np.ndarray] = []
    for subject in subjects:
        recording = Recording(backend, per_subject)
        predict_scan(Model(manifest, folder, recording), read_scan(subject.channels), overwrite=True)
        windows.extend(recording.windows)
        say(f"  {subject.subject_id}: {len(recording.windows)} window(s)")
    return windows[:limit]


def _agreements(folder: Path, manifest: Manifest, int8_path: Path, subjects: list,
                say: Callable[[str], None]) -> list[Agreement]:
    from runtime.backends import open_backend
    from runtime.io import read_scan
    from runtime.predict import predict_scan

    models = {name: Model(manifest, folder, open_backend(path, manifest.onnx.input, manifest.onnx.output,
                                                         device="auto"))
              for name, path in (("float", folder / manifest.onnx.file), ("int8", int8_path))}
    results = []
    for subject in subjects:
        scan = read_scan(subject.channels)
        labels, seconds = {}, {}
        for name, model in models.items():
            predict_scan(model, scan)                                   # warm: the timing below is steady
            started = time.perf_counter()
            labels[name] = predict_scan(model, scan).labels_zyx
            seconds[name] = time.perf_counter() - started
        result = Agreement(subject.subject_id, int(labels["float"].size),
                           int(np.count_nonzero(labels["float"] == labels["int8"])), seconds["float"], seconds["int8"])
        say(f"  {subject.subject_id}: {100 * result.share:.3f} % of the labels agree; float {result.float_s:.2f} s, "
            f"int8 {result.int8_s:.2f} s")
        results.append(result)
    return results


def _write_version(folder: Path, manifest: Manifest, int8_path: Path, record: dict[str, Any]) -> Path:
    """The new version: the float version's files but its model file (int8) and its samples (their
    outputs rerun on the int8 model), the manifest's provenance recording the quantization."""
    from export.triton import copy_adapter, record_version
    from export.versions import staged_version
    from runtime.commands.verify import SAMPLES_DIR, store_samples

    model_dir = folder.parent
    with staged_version(model_dir) as (version, staging):
        files: dict[str, str] = {}
        for name in manifest.files:
            if name == manifest.onnx.file or name.startswith(f"{SAMPLES_DIR}/") or name == "model.py":
                continue
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / name, target)
            files[name] = sha256_of(target)
        shutil.copyfile(int8_path, staging / manifest.onnx.file)
        files[manifest.onnx.file] = sha256_of(staging / manifest.onnx.file)
        adapter = copy_adapter(staging)
        files[adapter.name] = sha256_of(adapter)
        inputs = sorted((folder / SAMPLES_DIR).glob("input_*.npy")) if (folder / SAMPLES_DIR).is_dir() else []
        if inputs:
            store_samples(staging, manifest.onnx.file, manifest.onnx.input, manifest.onnx.output,
                          [np.load(path, allow_pickle=False) for path in inputs])
            for path in sorted((staging / SAMPLES_DIR).iterdir()):
                files[f"{SAMPLES_DIR}/{path.name}"] = sha256_of(path)
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        provenance = {**manifest.provenance, "created": created, "quantization": record}
        new = dataclasses.replace(manifest, version=version, files=files, provenance=provenance)
        write_manifest(new, staging)
    record_version(model_dir, new)
    return model_dir / str(version)
