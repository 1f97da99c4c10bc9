"""`python -m export quantize VERSION --calibration subjects.csv`: an int8 version of a model, made
by post-training quantization (NNCF) from windows of real subjects, and kept only where its labels
agree with the float version's on subjects it was not calibrated on, on every CPU backend installed.

VERSION is a float32 version folder, or a model folder (its newest float32 version is taken, and
said); an int8 or float16 version is refused. The CSV is the one `runtime predict --csv` reads
(subject_id and one column per channel); every row's scans are opened before any work. Its last rows
(a fifth, at least one) are held out; the others are run through the float model by the runtime, and
the preprocessed windows its backend is given are the calibration data, so the int8 graph is
calibrated on exactly what it will see. NNCF inserts quantize/dequantize pairs into the ONNX graph
(weights symmetric per channel, activations asymmetric: NNCF's mixed preset, since a network's
PReLU and normalised activations are not centred on zero; on a trained 3D UNet it raised each
class's Dice int8 against float by about 0.01 on both CPU backends over the symmetric preset),
except around the layers whose input reaches them through an operator without weights (a UNet's
concatenated skip connections, pooling), which stay float: OpenVINO's int8 result for those is not
what the graph defines (`unquantized_inputs`).
The held-out subjects are predicted by both graphs on each CPU backend (`export.quantize_gate`):
the share of voxels whose labels agree must reach `min_agreement`, and every foreground class's Dice
between the two label maps `min_dice`, on every backend, or nothing is written. The new version
carries the float version's manifest but its model file, `onnx.fp16` false, the samples rerun on it
with a tolerance per backend measured, and a `quantization` record in its provenance in place of the
float graph's checks; the runtime takes it like any version.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from export.quantize_gate import Measure, measure_backends, sample_tolerances
from export.quantize_source import checked_subjects, named_subject, source_version
from runtime.errors import InputError, install_hint
from runtime.manifest import Manifest, sha256_of, write_manifest
from runtime.predict import Model

DEFAULT_WINDOWS = 300
DEFAULT_AGREEMENT = 0.995
DEFAULT_DICE = 0.99
HELD_OUT_SHARE = 0.2
# The float graph's own checks, which do not hold for the int8 graph made from it.
FLOAT_CHECKS = ("fp16_check", "parity_max_abs_diff")
# Operators NNCF quantizes by their weights.
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


class Recording:
    """A backend that hands every batch to `inner` and keeps `limit` of the windows it saw, drawn
    evenly at random from all of them (a reservoir, seeded: the same each run), so a subject's
    calibration windows come from the whole of it, not from its first rows alone."""

    name = "recording"

    def __init__(self, inner: Any, limit: int, seed: int = 0) -> None:
        self.inner, self.limit, self.windows = inner, limit, []
        self.on_cpu = inner.on_cpu
        self.seen, self._draw = 0, np.random.default_rng(seed)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        for window in batch:
            self.seen += 1
            if len(self.windows) < self.limit:
                self.windows.append(np.array(window, dtype=np.float32))
            elif (slot := int(self._draw.integers(0, self.seen))) < self.limit:
                self.windows[slot] = np.array(window, dtype=np.float32)
        return self.inner(batch)

    borrow = __call__

    def run(self, source: Any, plan: Any, merger: Any, progress: Any = None) -> None:
        from runtime.backends.execution import run_plan

        run_plan(self, source, plan, merger, progress)

    def prepare(self, batch_shape: tuple[int, ...]) -> None:
        self.inner.prepare(batch_shape)


def quantize_version(source: Path, csv_path: Path, windows: int = DEFAULT_WINDOWS,
                     min_agreement: float = DEFAULT_AGREEMENT, say: Callable[[str], None] = print,
                     min_dice: float = DEFAULT_DICE) -> Path:
    """Write the int8 version of the float32 model version at `source` (or of a model folder's
    newest float32 version); its folder."""
    nncf, onnx = _modules()
    from runtime.backends import cpu_order

    manifest, folder = source_version(source, say)
    subjects = checked_subjects(csv_path, manifest)
    if len(subjects) < 2:
        raise InputError(f"{csv_path} holds {len(subjects)} subject(s); give at least 2 (one or more to calibrate on, "
                         "one held out to check the int8 labels against the float ones).")
    held = max(1, math.ceil(HELD_OUT_SHARE * len(subjects)))
    calibration, held_out = subjects[:-held], subjects[-held:]
    samples, contributed = _calibration_windows(folder, manifest, calibration, windows, say)
    graph = named_nodes(onnx.load(str(folder / manifest.onnx.file)))
    say(f"calibrating on {len(samples)} window(s) of {contributed} subject(s) ...")
    started = time.perf_counter()
    dataset = nncf.Dataset(samples, lambda window: {manifest.onnx.input: window[None]})
    quantized, kept_float = _quantized(nncf, graph, dataset, len(samples))
    if kept_float:
        say(f"{len(kept_float)} layer(s) whose input reaches them unquantized (through a concatenation, pooling "
            f"or padding) kept float: {', '.join(kept_float)}")
    devices = cpu_order()
    say(f"quantized in {time.perf_counter() - started:.1f} s; checking {len(held_out)} held-out subject(s) on "
        f"{' and '.join(devices)} ...")
    with tempfile.TemporaryDirectory(prefix="medflow-int8-") as scratch:
        int8_path = Path(scratch) / manifest.onnx.file
        onnx.save(quantized, str(int8_path))
        measures = measure_backends(folder, manifest, int8_path, held_out, devices, say)
        _judge(measures, min_agreement, min_dice, say)
        inputs = _sample_inputs(folder)
        tolerances = sample_tolerances(int8_path, manifest, inputs, devices) if inputs else {}
        record = {"method": "int8 post-training quantization (NNCF)", "from_version": manifest.version,
                  "calibration_subjects": contributed, "calibration_windows": len(samples),
                  "held_out_subjects": len(held_out), "preset": "mixed", "float_layers": kept_float,
                  "min_agreement": min_agreement, "min_dice": min_dice,
                  "label_agreement": round(min(m.share for m in measures), 6),
                  "backends": {m.backend: {**m.record(), **({"sample_tolerance": tolerances[m.backend]}
                                                            if m.backend in tolerances else {})}
                               for m in measures}}
        return _write_version(folder, manifest, int8_path, inputs, tolerances, record)


def named_nodes(model: Any) -> Any:
    """`model` with a unique name on every node (NNCF addresses layers by name; an exporter may
    leave them blank)."""
    taken = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return model


def _quantized(nncf: Any, graph: Any, dataset: Any, size: int) -> tuple[Any, list[str]]:
    """`graph` quantized on `dataset`, with the layers `unquantized_inputs` finds kept float (NNCF
    run again without them, until none is left: at most three times); with those layers' names."""
    kept: list[str] = []
    for _ in range(3):
        quantized = nncf.quantize(graph, dataset, subset_size=size, preset=nncf.QuantizationPreset.MIXED,
                                  ignored_scope=nncf.IgnoredScope(names=kept) if kept else None)
        found = [name for name in unquantized_inputs(quantized) if name not in kept]
        if not found:
            return quantized, kept
        kept += found
    return quantized, kept


def unquantized_inputs(model: Any) -> list[str]:
    """The names of the layers whose weights the quantized `model` makes int8 but whose input it
    does not quantize itself, since the input reaches them through an operator without weights
    (a UNet's concatenation of its skip connection, max pooling, padding). OpenVINO's CPU plugin
    computes such a layer in int8 otherwise than the quantize/dequantize pairs define it
    (onnxruntime computes it as defined), so these stay float: on a small network whose last
    convolution reads the concatenation of two branches, OpenVINO's int8 logits were off by 5.4
    where onnxruntime's were off by 0.1 from float, and with that layer float both by 0.04; on a
    3D UNet, whose upsampling convolutions read its skip connections, a small structure's Dice
    int8 against float was 0.44 on OpenVINO and 0.85 on onnxruntime, and 0.85 on both with them
    float."""
    made_by = {name: node.op_type for node in model.graph.node for name in node.output}
    return [node.name for node in model.graph.node
            if node.op_type in WEIGHTED_OPS and len(node.input) > 1
            and made_by.get(node.input[1]) == "DequantizeLinear" and made_by.get(node.input[0]) != "DequantizeLinear"]


def _modules() -> tuple[Any, Any]:
    try:
        import nncf
        import onnx
    except ImportError as error:
        raise InputError(f"quantize needs NNCF and onnx ({error}); {install_hint('quantize')}.") from None
    nncf.set_log_level(logging.WARNING)        # its INFO lines would interleave with quantize's own
    return nncf, onnx


def _judge(measures: Sequence[Measure], min_agreement: float, min_dice: float, say: Callable[[str], None]) -> None:
    """Say each backend's figures; InputError where any falls short of a threshold."""
    for measure in measures:
        say(measure.summary())
        if (labels := measure.against_labels()) is not None:
            say(labels)
    failures = [failure for measure in measures for failure in measure.failures(min_agreement, min_dice)]
    if failures:
        raise InputError(f"the int8 labels fall short of the float ones on the held-out subjects: "
                         f"{'; '.join(failures)}; nothing was written. Calibrate on more subjects (or windows), or "
                         "keep the float version (--min-dice and --min-agreement set the thresholds).")


def _calibration_windows(folder: Path, manifest: Manifest, subjects: list, limit: int,
                         say: Callable[[str], None]) -> tuple[list[np.ndarray], int]:
    """The preprocessed windows the float model's backend is given for the subjects, at most
    `limit`, spread over the subjects; with how many subjects gave the windows kept."""
    from runtime.backends import open_backend
    from runtime.io import read_scan
    from runtime.predict import predict_scan

    backend = open_backend(folder / manifest.onnx.file, manifest.onnx.input, manifest.onnx.output, device="cpu")
    per_subject = max(1, limit // len(subjects))
    windows: list[np.ndarray] = []
    contributed = 0
    for subject in subjects:
        room = limit - len(windows)
        if room <= 0:
            say(f"  {subject.subject_id}: not run (--windows {limit} reached)")
            continue
        recording = Recording(backend, min(per_subject, room))
        with named_subject(subject):
            predict_scan(Model(manifest, folder, recording), read_scan(subject.channels), overwrite=True,
                         probabilities=False)
        windows.extend(recording.windows)
        contributed += bool(recording.windows)
        say(f"  {subject.subject_id}: {len(recording.windows)} of its {recording.seen} window(s)")
    if not windows:
        raise InputError(f"the calibration subjects gave no window (every window lay in the background); give "
                         f"subjects with {manifest.name}'s structures.")
    return windows, contributed


def _sample_inputs(folder: Path) -> list[np.ndarray]:
    from runtime.commands.verify import SAMPLES_DIR

    paths = sorted((folder / SAMPLES_DIR).glob("input_*.npy")) if (folder / SAMPLES_DIR).is_dir() else []
    return [np.load(path, allow_pickle=False) for path in paths]


def _write_version(folder: Path, manifest: Manifest, int8_path: Path, inputs: list[np.ndarray],
                   tolerances: dict[str, float], record: dict[str, Any]) -> Path:
    """The new version: the float version's files but its model file (int8) and its samples (their
    outputs rerun on the int8 model), the manifest no longer allowing fp16, with the samples'
    tolerance per backend, and its provenance recording the quantization in place of the float
    graph's checks."""
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
        if inputs:
            store_samples(staging, manifest.onnx.file, manifest.onnx.input, manifest.onnx.output, inputs,
                          f"the int8 graph of {folder}")
            for path in sorted((staging / SAMPLES_DIR).iterdir()):
                files[f"{SAMPLES_DIR}/{path.name}"] = sha256_of(path)
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        kept = {key: value for key, value in manifest.provenance.items() if key not in FLOAT_CHECKS}
        onnx_spec = dataclasses.replace(manifest.onnx, fp16=False, sample_tolerance=tolerances)
        new = dataclasses.replace(manifest, version=version, files=files, onnx=onnx_spec,
                                  provenance={**kept, "created": created, "quantization": record})
        write_manifest(new, staging)
    record_version(model_dir, new)
    return model_dir / str(version)
