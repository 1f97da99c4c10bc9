"""Subjects to training samples through the runtime's own reading and preprocessing, so a model
sees in training exactly the numbers it will see in the clinic."""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from runtime.errors import InputError
from runtime.io import read_label, read_scan, to_model_axes
from runtime.preprocess import Volume, run_steps, transfer
from trainer.config import Config
from trainer.sampling import Sample
from trainer.subjects import Subject

log = logging.getLogger(__name__)


def _label_indices(label_values: np.ndarray, config: Config, subject: Subject) -> np.ndarray:
    """Label values -> class indices 0..K-1; a value that is no class is an error."""
    values = np.array([c.value for c in config.classes])
    lookup = {int(v): i for i, v in enumerate(values)}
    present = np.unique(label_values)
    unknown = [int(v) for v in present if int(v) not in lookup]
    if unknown:
        raise InputError(f"subject {subject.subject_id}: label {subject.label} holds values {unknown} that are no "
                         f"class of data.classes ({', '.join(map(str, values))}); add them or fix the label map.")
    indices = np.zeros(label_values.shape, dtype=np.int64)
    for value, index in lookup.items():
        indices[label_values == value] = index
    return indices


def _target(config: Config, subject: Subject) -> int | float | None:
    if subject.label is None:
        return None
    if config.task == "classification":
        return [c.value for c in config.classes].index(int(subject.label))  # type: ignore[arg-type]
    return float(subject.label)  # type: ignore[arg-type]


def load_sample(config: Config, subject: Subject) -> Sample:
    """Read and preprocess one subject (and move its label map onto the preprocessed grid)."""
    scan = read_scan(subject.channels)
    array, spacing = to_model_axes(scan.array_zyx, scan.spacing_zyx, config.axis_order)
    min_shape = config.patch.size if config.task == "segmentation" else None
    volume, record = run_steps(Volume.from_array(array, spacing), config.preprocessing, min_shape=min_shape)
    label = None
    if config.task == "segmentation" and subject.label is not None:
        label_zyx = read_label(subject.label, scan)
        label_model = to_model_axes(label_zyx[np.newaxis], scan.spacing_zyx, config.axis_order)[0]
        label = transfer(record, _label_indices(label_model, config, subject), "nearest")[0]
    return Sample(subject_id=subject.subject_id, image=np.ascontiguousarray(volume.array, dtype=np.float32),
                  label=label, target=None if config.task == "segmentation" else _target(config, subject))


def load_samples(config: Config, subjects: Sequence[Subject]) -> dict[str, Sample]:
    """Every subject, preprocessed once and kept in memory for all folds."""
    samples = {}
    for subject in subjects:
        samples[subject.subject_id] = load_sample(config, subject)
    log.info("preprocessed %d subjects", len(samples))
    return samples
