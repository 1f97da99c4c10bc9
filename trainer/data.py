"""Subjects to training samples through the runtime's own reading and preprocessing, so a model
sees in training exactly the numbers it will see in the clinic.

A radiology subject is preprocessed once, when it is read. A histology subject (an RGB patch of a
slide) is kept as read, 0-255 per channel, so colour augmentation sees real colours; its
preprocessing (intensity steps only) runs after augmentation on each image (`with_steps`) and on
each window in validation, as the runtime runs it on each window of a slide.
"""
from __future__ import annotations

import dataclasses

import itertools
import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torchio as tio

from runtime.errors import InputError
from runtime.io import read_label, read_scan, to_model_axes
from runtime.io.scan import label_on, scan_reference
from runtime.preprocess import Volume, run_steps, transfer
from runtime.preprocess.orient import reorient_code, reorientation
from runtime.preprocess.steps import Step
from trainer.config import Config, ConfigError, label_values_problem, relabelled
from trainer.sampling import IGNORED, Sample
from trainer.subjects import Subject, channel_files

log = logging.getLogger(__name__)


def _label_indices(label_values: np.ndarray, config: Config, subject: Subject) -> np.ndarray:
    """Label values -> class indices 0..K-1, and IGNORED where they are data.ignore_value; a value that
    is neither a class nor that is an error."""
    ignore = config.data.ignore_value
    problem = label_values_problem(label_values, subject.label, config.classes, ignore)
    if problem:
        raise InputError(f"subject {subject.subject_id}: {problem}.")
    lookup = {int(c.value): i for i, c in enumerate(config.classes)}
    indices = np.zeros(label_values.shape, dtype=np.int64)
    for value, index in lookup.items():
        indices[label_values == value] = index
    if ignore is not None:
        indices[label_values == ignore] = IGNORED
    return indices


def _target(config: Config, subject: Subject) -> int | float | None:
    if subject.label is None:
        return None
    if config.task == "classification":
        return [c.value for c in config.classes].index(int(subject.label))  # type: ignore[arg-type]
    return float(subject.label)  # type: ignore[arg-type]


def _channels(array: np.ndarray, subject: Subject) -> np.ndarray:
    """One channel per channel column from the channels of the files read once each (trainer.subjects):
    their components as they are, or, where every file has one, each repeated over its columns."""
    files = channel_files(subject.channels)
    if array.shape[0] == len(subject.channels):
        return array
    if array.shape[0] == len(files):
        runs = [len(list(run)) for _, run in itertools.groupby(subject.channels)]
        return np.repeat(array, runs, axis=0)
    raise InputError(f"subject {subject.subject_id}: its channel files give {array.shape[0]} channel(s) for "
                     f"{len(subject.channels)} channel columns; check the table with `trainer check`.")


@contextmanager
def naming(subject: Subject) -> Iterator[None]:
    """An InputError raised within names the subject and its files, where it does not already."""
    try:
        yield
    except ConfigError:
        raise
    except InputError as exc:
        if str(exc).startswith(f"subject {subject.subject_id}"):
            raise
        files = [str(path) for path in channel_files(subject.channels)]
        named = "" if any(path in str(exc) for path in files) else f" ({', '.join(files)})"
        raise InputError(f"subject {subject.subject_id}{named}: {exc}") from None


def load_sample(config: Config, subject: Subject) -> Sample:
    """Read and preprocess one subject (and move its label map onto the preprocessed grid); a histology
    subject is read only (see the module's docstring)."""
    scan = _flat(config, read_scan(channel_files(subject.channels)))
    steps = () if config.modality == "histology" else config.preprocessing
    turn = _turn(steps, scan)
    spacing_zyx = scan.spacing_zyx if turn is None else turn.spacing(scan.spacing_zyx)
    min_shape = config.patch.size if config.task == "segmentation" else None
    volume, record = run_steps(_model_volume(config, subject, scan, turn), steps, min_shape=min_shape)
    label, scored = None, {}
    if config.task == "segmentation" and subject.label is not None:
        label_zyx = read_label(subject.label, scan)
        label_zyx = label_zyx.reshape(scan.array_zyx.shape[1:])          # a 2D model's slice: (1, y, x) -> (y, x)
        if turn is not None:
            label_zyx = np.ascontiguousarray(turn.apply(label_zyx))
        label_model, spacing_model = to_model_axes(label_zyx[np.newaxis], spacing_zyx, config.axis_order)
        indices = _label_indices(relabelled(label_model, config), config, subject)
        label = transfer(record, indices, "nearest")[0]
        if record.transforms:                  # scored where the runtime scores: on the grid as read
            scored = {"record": record, "reference": _compact(indices[0]),
                      "reference_spacing": tuple(float(s) for s in spacing_model)}
    skips = config.task == "segmentation" and config.modality != "histology" and config.inference.skip_background
    return Sample(subject_id=subject.subject_id, image=np.ascontiguousarray(volume.array, dtype=np.float32),
                  label=label, target=None if config.task == "segmentation" else _target(config, subject),
                  spacing=tuple(float(s) for s in volume.spacing),
                  foreground=np.ascontiguousarray(volume.foreground) if skips else None, **scored)


def _compact(indices: np.ndarray) -> np.ndarray:
    """Class indices (and IGNORED) in the smallest signed integer type that holds them."""
    return indices.astype(np.int16) if int(indices.max(initial=0)) < 2 ** 15 else indices.astype(np.int32)


def _flat(config: Config, scan: Any) -> Any:
    """A volume one slice thick as the 2D image it is, for a 2D model (as the runtime runs a 2D
    model over a volume's slices); any other scan as it is."""
    if config.dimensions == 2 and scan.spatial_dims == 3 and scan.array_zyx.shape[1] == 1:
        return dataclasses.replace(scan, array_zyx=scan.array_zyx[:, 0], spacing_zyx=tuple(scan.spacing_zyx[1:]))
    return scan


def _model_volume(config: Config, subject: Subject, scan: Any, turn: Any) -> Volume:
    """The subject's channels as read, turned by `turn` (or not, when None), in the model's axis order."""
    channels_zyx, spacing_zyx = _channels(scan.array_zyx, subject), scan.spacing_zyx
    if turn is not None:
        channels_zyx, spacing_zyx = np.ascontiguousarray(turn.apply(channels_zyx)), turn.spacing(spacing_zyx)
    return Volume.from_array(*to_model_axes(channels_zyx, spacing_zyx, config.axis_order))


def preprocessed(config: Config, subject: Subject, steps: Sequence[Step]) -> Volume:
    """One radiology subject's image after `steps` (a leading part of the config's preprocessing, say),
    with no padding to the patch and no label."""
    return _preprocessed_scan(config, subject, _flat(config, read_scan(channel_files(subject.channels))), steps)


def _preprocessed_scan(config: Config, subject: Subject, scan: Any, steps: Sequence[Step]) -> Volume:
    volume, _ = run_steps(_model_volume(config, subject, scan, _turn(steps, scan)), steps, overwrite=True)
    return volume


def _turn(steps: Sequence[Step], scan: Any) -> Any:
    """The turn a first reorient step asks of a 3D scan (runtime.preprocess.orient); None otherwise."""
    return reorientation(steps, scan.reference.GetDirection()) if scan.spatial_dims == 3 else None


def check_labels(config: Config, subjects: Sequence[Subject], say: Callable[[str], None]) -> None:
    """Read every subject's label map (a segmentation's) on its scan's grid, as training will (the
    grid from the scan's header: its voxels are not read), and raise one ConfigError naming every
    subject whose map holds a value that is no class."""
    from runtime.validation import Problems
    from trainer.config import raise_problems

    problems = Problems(str(config.data.csv))
    labelled = [s for s in subjects if config.task == "segmentation" and s.label is not None]
    unseen = set(config.data.relabel or {})
    annotated = total = 0
    if not labelled:
        say(f"labels: a {config.task} table holds no label maps; its labels were checked with the table")
    for number, subject in enumerate(labelled, start=1):
        files = channel_files(subject.channels)
        try:
            values = label_on(subject.label, scan_reference(files), str(files[0]))
        except InputError as error:
            problems.add(f"subject {subject.subject_id}", str(error))
            continue
        unseen -= {int(v) for v in np.unique(values)} if unseen else set()
        problem = label_values_problem(relabelled(values, config), subject.label, config.classes,
                                       config.data.ignore_value)
        if problem:
            problems.add(f"subject {subject.subject_id}", problem)
        elif config.data.ignore_value is not None:
            found = int(np.count_nonzero(values != config.data.ignore_value))
            annotated, total = annotated + found, total + int(values.size)
            if not found:
                say(f"warning: subject {subject.subject_id}: label {subject.label} holds data.ignore_value "
                    f"({config.data.ignore_value}) alone: nothing of it is annotated, so it trains and scores nothing")
        say(f"labels: subject {number}/{len(labelled)} ({subject.subject_id}) read")
    if total:
        share = f"{100 * annotated / total:.3g}%"          # 3 digits: scribbles are a few thousandths of one
        say(f"labels: {share} of the label maps' voxels are annotated ({annotated:,} of {total:,}); "
            f"data.ignore_value ({config.data.ignore_value}) marks the rest")
    if labelled and unseen:
        say(f"warning: data.relabel maps value(s) {sorted(unseen)} that no label map holds; check the values")
    raise_problems(problems, f"subject table {config.data.csv}")


# Subjects an input profile is measured on at most, spread evenly over the table.
PROFILE_SUBJECTS = 50


def input_profile(config: Config, subjects: Sequence[Subject]) -> dict[str, Any] | None:
    """What the training scans look like as read and after preprocessing (runtime.profile): measured
    on up to PROFILE_SUBJECTS subjects drawn from the table; None for histology, whose slides are
    read tile by tile."""
    from runtime.profile import build_profile, channel_percentiles, scan_stats

    if config.modality == "histology" or not subjects:
        return None
    stats, preprocessed = [], []
    for subject in profile_sample(subjects, config.seed):
        with naming(subject):
            scan = read_scan(channel_files(subject.channels))
            stats.append(scan_stats(_channels(scan.array_zyx, subject), scan.spacing_zyx,
                                    scan.reference.GetDirection(), config.preprocessing if scan.spatial_dims == 3 else ()))
            preprocessed.append(channel_percentiles(_preprocessed_scan(config, subject, scan, config.preprocessing).array))
    reoriented = reorient_code(config.preprocessing) is not None and config.dimensions == 3
    return build_profile(stats, config.data.channels, preprocessed, reoriented)


def profile_sample(subjects: Sequence[Subject], seed: int) -> list[Subject]:
    """Up to PROFILE_SUBJECTS subjects drawn at random (from `seed`), in table order: every n-th row
    of a table whose rows alternate by class measured one class alone, and the model's own training
    images of the other then read as far outside what it saw."""
    if len(subjects) <= PROFILE_SUBJECTS:
        return list(subjects)
    chosen = np.random.default_rng(seed).choice(len(subjects), size=PROFILE_SUBJECTS, replace=False)
    return [subjects[int(index)] for index in sorted(chosen)]


def window_steps(config: Config) -> tuple[Step, ...]:
    """The preprocessing that runs on each training image and validation window: a histology model's
    steps; none for radiology, whose subjects were preprocessed when read."""
    return config.preprocessing if config.modality == "histology" else ()


def preprocess_window(image: np.ndarray, steps: Sequence[Step]) -> np.ndarray:
    """`steps` (intensity steps) run on one image (C, *spatial) float32, as the runtime runs them on a
    slide window."""
    if not steps:
        return image
    volume, _ = run_steps(Volume.from_array(image, (1.0,) * (image.ndim - 1)), steps)
    return np.ascontiguousarray(volume.array, dtype=np.float32)


class StepsTransform(tio.IntensityTransform):
    """The preprocessing `steps` run on the image of a TorchIO subject of `dimensions` spatial axes (a 2-D
    image travels as (C, y, x, 1), see trainer/augment.py); label maps are left as they are."""

    def __init__(self, steps: Sequence[Step], dimensions: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.steps = tuple(steps)
        self.dimensions = dimensions
        self.args_names = ["steps", "dimensions"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        for image in self.get_images(subject):
            data = image.data.numpy().astype(np.float32)
            flat = self.dimensions == 2
            done = preprocess_window(np.ascontiguousarray(data[..., 0] if flat else data), self.steps)
            image.set_data(torch.from_numpy(done[..., None] if flat else done))
        return subject


def with_steps(augmentation: tio.Transform | None, steps: Sequence[Step], dimensions: int) -> tio.Transform | None:
    """The augmentation followed by `steps` on each image; the augmentation alone when there are none."""
    if not steps:
        return augmentation
    return tio.Compose([*([augmentation] if augmentation is not None else []), StepsTransform(steps, dimensions)])


def load_samples(config: Config, subjects: Sequence[Subject]) -> dict[str, Sample]:
    """Every subject, preprocessed once and kept in memory for all folds."""
    samples = {}
    for subject in subjects:
        with naming(subject):
            samples[subject.subject_id] = load_sample(config, subject)
    log.info("preprocessed %d subjects", len(samples))
    return samples
