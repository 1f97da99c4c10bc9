"""Training batches: random patches through a TorchIO queue (segmentation) or whole images (classification, regression).

Frames: a `Sample` holds arrays in the model's axis order, image `(C, *spatial)` and label
`(*spatial)`; TorchIO sees `(C, *spatial)` in 3-D and `(C, *spatial, 1)` in 2-D (see
trainer/augment.py). Batches come back in our frame: image `(B, C, *patch)`, label `(B, *patch)`.

Reproducibility: every random draw of a loader (subject order, augmentation, patch centres) comes
from its own torch random state started from `seed`, swapped in around each item it produces, so two
loaders built with the same seed yield the same batches whatever else uses torch's global generator.
Worker processes are seeded from that state too.
"""
from __future__ import annotations

import logging
import random
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torchio as tio
from torch.utils.data import DataLoader, Dataset, get_worker_info

from runtime.errors import InputError
from trainer.augment import RandomRot90

log = logging.getLogger(__name__)

SAMPLERS = ("uniform", "label")

# The class index of a voxel no one annotated (data.ignore_value): no loss or metric counts it.
IGNORED = -1


@dataclass
class Sample:
    """One subject, preprocessed: image `(C, *spatial)` float32, label `(*spatial)` int64 class indices
    (IGNORED where unannotated) or None, target or None."""

    subject_id: str
    image: np.ndarray
    label: np.ndarray | None = None
    target: float | int | None = None
    spacing: tuple[float, ...] | None = None    # mm per spatial axis of `image`, where known
    # Validation as the runtime predicts: the voxels non-zero as read, on `image`'s grid (the windows
    # holding none are skipped, where inference.skip_background says so), and, where preprocessing
    # moved the grid, what it did (`record`) and the label's class indices on the grid as read
    # (`reference`, in the model's axes, `reference_spacing` mm), which the prediction is scored on.
    foreground: np.ndarray | None = None
    record: Any = None
    reference: np.ndarray | None = None
    reference_spacing: tuple[float, ...] | None = None


# ---------------------------------------------------------------- seeding


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: seed Python's and NumPy's generators from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_generator(seed: int) -> torch.Generator:
    """A CPU torch generator started from `seed`."""
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return generator


class PrivateRandom:
    """A torch CPU random state of its own, made the global one only while `active()` runs (in the main process)."""

    def __init__(self, seed: int) -> None:
        self.state = make_generator(seed).get_state()

    @contextmanager
    def active(self) -> Iterator[None]:
        if get_worker_info() is not None:  # workers are seeded by their DataLoader
            yield
            return
        outer = torch.get_rng_state()
        torch.set_rng_state(self.state)
        try:
            yield
        finally:
            self.state = torch.get_rng_state()
            torch.set_rng_state(outer)


# ---------------------------------------------------------------- subjects


def _tensor(array: np.ndarray, dtype: np.dtype) -> torch.Tensor:
    """A tensor sharing the array's memory where it already has `dtype` (TorchIO copies subjects before changing them)."""
    array = np.ascontiguousarray(array, dtype=dtype)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def to_subject(sample: Sample, dimensions: int) -> tio.Subject:
    """The sample as a TorchIO subject: "image" a ScalarImage, "label" a LabelMap when there is one; identity affine.

    The tensors share the sample's memory where its dtypes already fit; TorchIO transforms copy before they change.
    """
    image = np.asarray(sample.image)
    if image.ndim != dimensions + 1:
        raise InputError(f"subject {sample.subject_id}: image has shape {image.shape}; expected (C, *spatial) "
                         f"with {dimensions} spatial axes.")
    tensor = _tensor(image, np.float32)
    fields: dict[str, Any] = {"subject_id": sample.subject_id}
    fields["image"] = tio.ScalarImage(tensor=tensor if dimensions == 3 else tensor[..., None])
    if sample.label is not None:
        fields["label"] = tio.LabelMap(tensor=_label_tensor(sample, image.shape[1:], dimensions))
    return tio.Subject(**fields)


def _label_tensor(sample: Sample, spatial: tuple[int, ...], dimensions: int) -> torch.Tensor:
    label = np.asarray(sample.label)
    if label.shape != spatial:
        raise InputError(f"subject {sample.subject_id}: label has shape {label.shape} but the image's grid is "
                         f"{spatial}; label and image must share one grid.")
    tensor = _tensor(label, np.int64)[None]
    return tensor if dimensions == 3 else tensor[..., None]


def _torchio_shape(shape: Sequence[int], dimensions: int) -> tuple[int, ...]:
    return tuple(int(n) for n in shape) + ((1,) if dimensions == 2 else ())


class PadToShape(tio.SpatialTransform):
    """Pad every image at the end of each axis shorter than `shape` with 0, as the runtime pads before its sliding window."""

    def __init__(self, shape: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shape = tuple(int(n) for n in shape)
        self.args_names = ["shape"]

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        for image in self.get_images(subject):
            missing = [max(0, want - have) for want, have in zip(self.shape, image.spatial_shape)]
            if any(missing):
                widths = [w for m in reversed(missing) for w in (0, m)]
                image.set_data(torch.nn.functional.pad(image.data, widths))
        return subject


# ---------------------------------------------------------------- samplers


class FallbackLabelSampler(tio.LabelSampler):
    """Label-weighted patch centres; a volume where no weighted class can be a centre gets uniform centres instead of an error."""

    def process_probability_map(self, probability_map: torch.Tensor, subject: tio.Subject) -> np.ndarray:
        data = probability_map[0].numpy().astype(np.float64)
        self.clear_probability_borders(data, self.patch_size)
        if data.sum() == 0:
            log.warning("subject %s has no voxel of the weighted classes away from its border; its patch centres "
                        "are drawn uniformly", subject.get("subject_id", "?"))
            data = np.ones_like(data)
            self.clear_probability_borders(data, self.patch_size)
        return data / data.sum()


def is_annotated(sample: Sample) -> bool:
    """Whether a sample's label holds a voxel that is not IGNORED."""
    return sample.label is not None and bool(np.any(np.asarray(sample.label) != IGNORED))


def annotated(label: np.ndarray) -> np.ndarray:
    """The class indices of a label's annotated voxels, flat."""
    return label[label != IGNORED]


def _label_weights(samples: Sequence[Sample], label_probabilities: Mapping[int, float] | None) -> dict[int, float]:
    """Weights per class index: as given, or equal over every class index found in the labels."""
    if label_probabilities is not None:
        weights = {int(k): float(v) for k, v in label_probabilities.items()}
        if any(k < 0 for k in weights) or any(v < 0 for v in weights.values()) or sum(weights.values()) <= 0:
            raise InputError(f"label_probabilities {dict(label_probabilities)} must map class indices >= 0 to "
                             "weights >= 0 with a positive sum.")
        return weights
    counts = [np.bincount(annotated(np.asarray(sample.label))) for sample in samples]
    present = np.zeros(max(len(c) for c in counts), dtype=bool)
    for count in counts:
        present[:len(count)] |= count > 0
    return {int(c): 1.0 for c in np.flatnonzero(present)}


def make_sampler(samples: Sequence[Sample], sampler: str, patch_size: Sequence[int], dimensions: int,
                 label_probabilities: Mapping[int, float] | None) -> tio.data.PatchSampler:
    """The TorchIO patch sampler named by the config's `patch.sampler`."""
    shape = _torchio_shape(patch_size, dimensions)
    if sampler == "uniform":
        return tio.UniformSampler(shape)
    if sampler == "label":
        weights = _label_weights(samples, label_probabilities)
        return FallbackLabelSampler(shape, label_name="label", label_probabilities=weights)
    raise InputError(f"patch sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")


# ---------------------------------------------------------------- loaders


class _Seeded(Dataset):
    """Items of `source` drawn under the loader's own random state."""

    def __init__(self, source: Any, seed: int) -> None:
        self.source = source
        self.random = PrivateRandom(seed)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Any:
        with self.random.active():
            return self.source[index]


def _patch_batch(patches: Sequence[tio.Subject], dimensions: int) -> dict[str, Any]:
    """Stack TorchIO patches into our frame: image (B, C, *patch) float32, label (B, *patch) int64."""
    images = torch.stack([patch["image"].data for patch in patches]).float()
    labels = torch.stack([patch["label"].data[0] for patch in patches]).round().long()
    if dimensions == 2:
        images, labels = images[..., 0], labels[..., 0]
    return {"image": images, "label": labels, "subject_id": [patch["subject_id"] for patch in patches]}


def _check_patch_args(patch_size: Sequence[int], dimensions: int, per_volume: int, queue_length: int) -> None:
    if dimensions not in (2, 3) or len(patch_size) != dimensions or any(int(n) < 1 for n in patch_size):
        raise InputError(f"patch size {list(patch_size)} must have {dimensions} positive lengths (one per axis).")
    if per_volume < 1 or queue_length < 1:
        raise InputError(f"patches per volume ({per_volume}) and queue length ({queue_length}) must be >= 1.")


def patch_loader(samples: Sequence[Sample], *, patch_size: Sequence[int], sampler: str,
                 label_probabilities: Mapping[int, float] | None, per_volume: int, queue_length: int,
                 workers: int, batch_size: int, augmentation: tio.Transform | None, dimensions: int,
                 seed: int, task: str | None = None) -> DataLoader:
    """Training batches: patches for segmentation, whole images with targets for classification and regression.

    Segmentation batches: {"image": (B, C, *patch) float32, "label": (B, *patch) int64, "subject_id"}.
    Whole-image batches: {"image": (B, C, *spatial) float32, "target": (B,), "subject_id"}; the target is
    int64 for classification (class indices) and float32 for regression. Without `task`, samples with
    labels mean segmentation and int targets mean classification. `patch_size`, `sampler`,
    `label_probabilities` (class index -> weight), `per_volume` and `queue_length` apply to segmentation only.
    """
    if not samples:
        raise InputError("no training subjects: the training set of this fold is empty.")
    unlabelled = [sample.subject_id for sample in samples if sample.label is None]
    segmentation = task == "segmentation" or (task is None and not unlabelled)
    if segmentation and unlabelled:
        raise InputError(f"segmentation subjects without a label map: {', '.join(unlabelled[:10])}; "
                         "every training subject needs one.")
    if segmentation:
        return _segmentation_loader(samples, patch_size, sampler, label_probabilities, per_volume, queue_length,
                                    workers, batch_size, augmentation, dimensions, seed)
    classes = task == "classification" if task is not None else None
    return whole_image_loader(samples, workers=workers, batch_size=batch_size, augmentation=augmentation,
                              dimensions=dimensions, seed=seed, classes=classes)


def _segmentation_loader(samples: Sequence[Sample], patch_size: Sequence[int], sampler: str,
                         label_probabilities: Mapping[int, float] | None, per_volume: int, queue_length: int,
                         workers: int, batch_size: int, augmentation: tio.Transform | None, dimensions: int,
                         seed: int) -> DataLoader:
    _check_patch_args(patch_size, dimensions, per_volume, queue_length)
    pad = PadToShape(_torchio_shape(patch_size, dimensions))
    transform = pad if augmentation is None else tio.Compose([augmentation, pad])
    subjects = tio.SubjectsDataset([to_subject(s, dimensions) for s in samples], transform=transform)
    queue = tio.Queue(subjects, max_length=queue_length, samples_per_volume=per_volume,
                      sampler=make_sampler(samples, sampler, patch_size, dimensions, label_probabilities),
                      num_workers=workers, start_background=False)
    return DataLoader(_Seeded(queue, seed), batch_size=batch_size, num_workers=0, shuffle=False,
                      generator=make_generator(seed), collate_fn=partial(_patch_batch, dimensions=dimensions))


class _WholeImages(Dataset):
    """Whole images with their targets, augmented one by one."""

    def __init__(self, samples: Sequence[Sample], augmentation: tio.Transform | None, dimensions: int,
                 classes: bool) -> None:
        self.samples = samples
        self.augmentation = augmentation
        self.dimensions = dimensions
        self.dtype = torch.int64 if classes else torch.float32

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        subject = to_subject(sample, self.dimensions)
        if self.augmentation is not None:
            subject = self.augmentation(subject)
        image = subject["image"].data.float()
        if self.dimensions == 2:
            image = image[..., 0]
        return {"image": image, "target": torch.tensor(sample.target, dtype=self.dtype),
                "subject_id": sample.subject_id}


def _is_class_index(target: Any) -> bool:
    return isinstance(target, (int, np.integer)) and not isinstance(target, bool)


def _check_whole_images(samples: Sequence[Sample]) -> None:
    missing = [s.subject_id for s in samples if s.target is None]
    if missing:
        raise InputError(f"subjects without a target value: {', '.join(missing[:10])}; every subject needs one.")
    shapes = {tuple(np.shape(s.image)) for s in samples}
    if len(shapes) > 1:
        raise InputError(f"whole-image batches need one image shape, found {sorted(shapes)}; "
                         "add a resize step to the preprocessing.")


def whole_image_loader(samples: Sequence[Sample], *, workers: int, batch_size: int,
                       augmentation: tio.Transform | None, dimensions: int, seed: int,
                       classes: bool | None = None) -> DataLoader:
    """Shuffled batches of whole images and targets; int64 targets when `classes` (default: all targets are ints).

    The augmentation's quarter turns are limited to shape-keeping ones so that the images stack.
    """
    _check_whole_images(samples)
    if classes is None:
        classes = all(_is_class_index(sample.target) for sample in samples)
    images = _WholeImages(samples, keeping_shape(augmentation), dimensions, classes)
    return DataLoader(_Seeded(images, seed), batch_size=batch_size, shuffle=True, num_workers=workers,
                      generator=make_generator(seed), worker_init_fn=seed_worker, persistent_workers=workers > 0)


def keeping_shape(augmentation: tio.Transform | None) -> tio.Transform | None:
    """The augmentation with every `RandomRot90` set to keep the image shape (a copy where one changes)."""
    if isinstance(augmentation, tio.Compose):
        return tio.Compose([keeping_shape(t) for t in augmentation.transforms], p=augmentation.probability)
    if isinstance(augmentation, RandomRot90) and not augmentation.keep_shape:
        return RandomRot90(augmentation.axes, keep_shape=True, p=augmentation.probability)
    return augmentation
