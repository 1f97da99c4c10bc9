"""The check an int8 graph must pass before `export quantize` writes it, on subjects it was not
calibrated on and on every CPU backend installed (each rounds its integer arithmetic its own way):
the share of voxels whose int8 label equals the float one, and each foreground class's Dice between
the int8 and the float label maps, pooled over the subjects, so that a large background cannot hide
a changed structure. Where the CSV gives label maps, both graphs are also scored against them (for
information: the gate compares int8 with float, not with the labels).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from runtime import metrics
from export.quantize_source import named_subject
from runtime.commands.subjects import Subject
from runtime.contract import ClassSpec
from runtime.errors import MedflowError
from runtime.manifest import Manifest, label_ignore, label_relabel
from runtime.predict import Model


@dataclass(frozen=True)
class Overlap:
    """Voxels of one class in a label map, in the map it is compared with, and in both."""

    first: int = 0
    second: int = 0
    both: int = 0

    def __add__(self, other: Overlap) -> Overlap:
        return Overlap(self.first + other.first, self.second + other.second, self.both + other.both)

    @property
    def dice(self) -> float | None:
        """None where the class is in neither map."""
        total = self.first + self.second
        return None if total == 0 else 2 * self.both / total


def class_overlaps(first: np.ndarray, second: np.ndarray, classes: Sequence[ClassSpec]) -> dict[str, Overlap]:
    """Each class's Overlap of label map `first` with `second`."""
    overlaps = {}
    for spec in classes:
        tp, fp, fn, _ = metrics.overlap_counts(first, second, spec.value)
        overlaps[spec.name] = Overlap(tp + fp, tp + fn, tp)
    return overlaps


def _annotated(labels: np.ndarray, reference: np.ndarray, ignore: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The labels and the reference at the reference's annotated voxels (all of them without `ignore`)."""
    return (labels, reference) if ignore is None else metrics.annotated(labels, reference, ignore)


def _pooled(a: Mapping[str, Overlap], b: Mapping[str, Overlap]) -> dict[str, Overlap]:
    return {name: a.get(name, Overlap()) + b[name] for name in b}


def dice_text(overlaps: Mapping[str, Overlap]) -> str:
    return ", ".join(f"{name} {'absent' if o.dice is None else f'{o.dice:.4f}'}" for name, o in overlaps.items())


@dataclass(frozen=True)
class Measure:
    """One backend's int8 labels against its float ones over the held-out subjects, pooled; with
    both scored against the subjects' label maps where the CSV gives them."""

    backend: str
    voxels: int = 0
    agreeing: int = 0
    classes: Mapping[str, Overlap] = dataclasses.field(default_factory=dict)
    float_s: float = 0.0
    int8_s: float = 0.0
    scored: Mapping[str, Mapping[str, Overlap]] = dataclasses.field(default_factory=dict)
    labelled: int = 0

    @property
    def share(self) -> float:
        return self.agreeing / max(1, self.voxels)

    @property
    def speedup(self) -> float:
        return self.float_s / max(1e-9, self.int8_s)

    def add(self, labels: Mapping[str, np.ndarray], seconds: Mapping[str, float], reference: np.ndarray | None,
            classes: Sequence[ClassSpec], ignore: int | None = None) -> Measure:
        """This Measure with one subject's labels added; scored against `reference` where given, at
        its voxels other than `ignore` (the value of unannotated ones)."""
        scored = dict(self.scored)
        if reference is not None:
            scored = {name: _pooled(scored.get(name, {}), class_overlaps(*_annotated(labels[name], reference, ignore),
                                                                         classes))
                      for name in labels}
        return dataclasses.replace(
            self, voxels=self.voxels + int(labels["float"].size),
            agreeing=self.agreeing + int(np.count_nonzero(labels["float"] == labels["int8"])),
            classes=_pooled(self.classes, class_overlaps(labels["int8"], labels["float"], classes)),
            float_s=self.float_s + seconds["float"], int8_s=self.int8_s + seconds["int8"], scored=scored,
            labelled=self.labelled + (reference is not None))

    def failures(self, min_agreement: float, min_dice: float) -> list[str]:
        """What falls short of the thresholds, in words; empty where nothing does. A class in
        neither predicted label map (float, int8) of any held-out subject falls short of any
        `min_dice` above 0: nothing checked its int8 labels."""
        found = [f"{self.backend}: {100 * self.share:.3f} % of the voxels agree, under {100 * min_agreement:g} %"] \
            if self.share < min_agreement else []
        if min_dice <= 0:
            return found
        for name, overlap in self.classes.items():
            if overlap.dice is None:
                found.append(f"{self.backend}: {name} is in neither the float nor the int8 prediction of the held-out "
                             "subject(s), so nothing checked its int8 labels (the CSV's last rows are held out: end it "
                             "with subjects on which the float model finds it)")
            elif overlap.dice < min_dice:
                found.append(f"{self.backend}: {name}'s Dice int8 vs float {overlap.dice:.4f}, under {min_dice:g}")
        return found

    def summary(self) -> str:
        return (f"{self.backend}: {100 * self.share:.3f} % of {self.voxels:,} voxels agree; Dice int8 vs float: "
                f"{dice_text(self.classes)}; int8 runs {self.speedup:.2f}x the float speed")

    def against_labels(self) -> str | None:
        if not self.labelled:
            return None
        return (f"  against the label maps of {self.labelled} subject(s): float {dice_text(self.scored['float'])}; "
                f"int8 {dice_text(self.scored['int8'])}")

    def record(self) -> dict[str, Any]:
        figures: dict[str, Any] = {
            "label_agreement": round(self.share, 6), "speedup": round(self.speedup, 3),
            "dice": {name: None if o.dice is None else round(o.dice, 6) for name, o in self.classes.items()}}
        if self.labelled:
            figures["dice_against_labels"] = {
                which: {name: None if o.dice is None else round(o.dice, 6) for name, o in overlaps.items()}
                for which, overlaps in self.scored.items()}
        return figures


def measure_backends(folder: Path, manifest: Manifest, int8_path: Path, subjects: Sequence[Subject],
                     devices: Sequence[str], say: Callable[[str], None]) -> list[Measure]:
    """Each device's Measure of the int8 graph at `int8_path` against the version's float graph
    on `subjects`, with a line said per subject and device."""
    from runtime.io import read_scan

    pairs = {device: _pair(folder, manifest, int8_path, device) for device in devices}
    measures = {device: Measure(pair["int8"].backend.name) for device, pair in pairs.items()}
    foreground = manifest.classes[1:]
    for index, subject in enumerate(subjects):
        with named_subject(subject):
            scan = read_scan(subject.channels)
            reference = _reference(subject, scan, manifest, say)
        for device, pair in pairs.items():
            labels, seconds = _predicted(pair, scan, warm=index == 0)
            measures[device] = measures[device].add(labels, seconds, reference, foreground, label_ignore(manifest))
            one = Measure(measures[device].backend).add(labels, seconds, None, foreground)
            say(f"  {subject.subject_id} on {one.backend}: {100 * one.share:.3f} % agree, Dice "
                f"{dice_text(one.classes)}; float {one.float_s:.2f} s, int8 {one.int8_s:.2f} s")
    return list(measures.values())


def _pair(folder: Path, manifest: Manifest, int8_path: Path, device: str) -> dict[str, Model]:
    from runtime.backends import open_backend

    return {name: Model(manifest, folder, open_backend(path, manifest.onnx.input, manifest.onnx.output,
                                                       device=device))
            for name, path in (("float", folder / manifest.onnx.file), ("int8", int8_path))}


def _predicted(pair: Mapping[str, Model], scan: Any, warm: bool) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Each model's label map of `scan` and the seconds it took (after a first run where `warm`:
    compiling and first allocations are not timed)."""
    from runtime.predict import predict_scan

    labels, seconds = {}, {}
    for name, model in pair.items():
        if warm:
            predict_scan(model, scan, probabilities=False)
        started = time.perf_counter()
        labels[name] = predict_scan(model, scan, probabilities=False).labels_zyx
        seconds[name] = time.perf_counter() - started
    return labels, seconds


def _reference(subject: Subject, scan: Any, manifest: Manifest, say: Callable[[str], None]) -> np.ndarray | None:
    """The subject's label map as the model's classes (its training's relabelling applied, where
    recorded, to a map that is not in the classes already); None without one, or where it cannot be
    read on the scan's grid (said)."""
    from runtime.io import read_label

    if subject.label is None:
        return None
    try:
        label = read_label(subject.label, scan, classes=manifest.classes)
    except MedflowError as error:
        say(f"  {subject.subject_id}: its label map is not scored ({error})")
        return None
    mapping, ignore = label_relabel(manifest), label_ignore(manifest)
    held, known = {int(v) for v in np.unique(label)}, {spec.value for spec in manifest.classes}
    if mapping is not None and not metrics.in_classes_already(held, mapping, known, ignore):
        label = metrics.relabel(label, mapping, ignore)
    return label


def sample_tolerances(int8_path: Path, manifest: Manifest, inputs: Sequence[np.ndarray],
                      devices: Sequence[str]) -> dict[str, float]:
    """Per backend of `devices`: twice the largest difference of its int8 outputs for the sample
    `inputs` from onnxruntime's (which the samples store), relative to their magnitude, run with its
    own threads and with one thread (which changes the rounding on some); at least SAMPLE_TOLERANCE."""
    from runtime.backends import open_backend
    from runtime.commands.verify import SAMPLE_TOLERANCE

    def opened(device: str, threads: int | None = None) -> Any:
        return open_backend(int8_path, manifest.onnx.input, manifest.onnx.output, device=device, threads=threads)

    stored = opened("cpu")
    expected = [stored(array) for array in inputs]
    tolerances = {}
    for device in devices:
        runs = [opened(device), opened(device, threads=1)]
        worst = max(float(np.max(np.abs(run(array) - out))) / max(1.0, float(np.max(np.abs(out))))
                    for run in runs for array, out in zip(inputs, expected))
        tolerances[runs[0].name] = max(SAMPLE_TOLERANCE, _round_up(2 * worst))
    return tolerances


def _round_up(value: float) -> float:
    """`value` rounded up to two significant digits."""
    if value <= 0:
        return 0.0
    scale = 10.0 ** (math.floor(math.log10(value)) - 1)
    return round(math.ceil(value / scale) * scale, 12)
