"""Patch and whole-image loaders: shapes, dtypes, label-weighted centres, padding and seeded replay."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from runtime.errors import InputError
from trainer.augment import build_augmentation
from trainer.sampling import Sample, patch_loader, to_subject

FLIP = {"flip": {"probability": 0.5}}


def segmentation_samples(shape: tuple[int, ...], count: int = 2) -> list[Sample]:
    """Image channel 0 is the label (classes 0..2) as float, channel 1 noise; a small class-1 box and a class-2 box."""
    rng = np.random.default_rng(7)
    samples = []
    for i in range(count):
        label = np.zeros(shape, np.int64)
        label[tuple(slice(2 + i, 5 + i) for _ in shape)] = 1
        label[tuple(slice(n - 6, n - 2) for n in shape)] = 2
        image = np.stack([label.astype(np.float32), rng.random(shape, dtype=np.float32)])
        samples.append(Sample(f"s{i}", image, label))
    return samples


def loader(samples: list[Sample], dimensions: int, **overrides: Any) -> torch.utils.data.DataLoader:
    settings: dict[str, Any] = dict(
        patch_size=(8, 10, 6)[:dimensions], sampler="uniform", label_probabilities=None, per_volume=3,
        queue_length=6, workers=0, batch_size=2, augmentation=build_augmentation(FLIP, dimensions),
        dimensions=dimensions, seed=3,
    )
    return patch_loader(samples, **{**settings, **overrides})


def test_uniform_patches_have_our_frame_and_stay_aligned_in_3d() -> None:
    samples = segmentation_samples((14, 16, 12))
    originals = [(s.image.copy(), s.label.copy()) for s in samples]
    batches = list(loader(samples, 3, augmentation=build_augmentation({**FLIP, "rotate90": {"probability": 1}}, 3)))
    assert all(np.array_equal(s.image, i) and np.array_equal(s.label, l) for s, (i, l) in zip(samples, originals))
    assert len(batches) == 3  # 2 volumes x 3 patches, batches of 2
    for batch in batches:
        assert batch["image"].shape == (2, 2, 8, 10, 6) and batch["image"].dtype == torch.float32
        assert batch["label"].shape == (2, 8, 10, 6) and batch["label"].dtype == torch.int64
        assert torch.equal(batch["image"][:, 0], batch["label"].float())
    assert {sid for batch in batches for sid in batch["subject_id"]} == {"s0", "s1"}


def test_2d_patches_lose_the_singleton_axis() -> None:
    samples = segmentation_samples((20, 18))
    batch = next(iter(loader(samples, 2, patch_size=(8, 12), sampler="label")))
    assert batch["image"].shape == (2, 2, 8, 12) and batch["label"].shape == (2, 8, 12)
    assert torch.equal(batch["image"][:, 0], batch["label"].float())


@pytest.mark.parametrize("dimensions", [2, 3])
def test_label_sampler_centres_every_patch_on_the_weighted_class(dimensions: int) -> None:
    samples = segmentation_samples((16, 18, 14)[:dimensions])
    patch = (7, 9, 5)[:dimensions]
    batches = loader(samples, dimensions, patch_size=patch, sampler="label", label_probabilities={0: 0, 1: 1},
                     per_volume=5, queue_length=10, batch_size=5)
    centre = (slice(None),) + tuple(n // 2 for n in patch)
    centres = torch.cat([batch["label"][centre] for batch in batches])
    assert centres.shape == (10,) and bool((centres == 1).all())


def test_label_sampler_falls_back_to_uniform_centres_without_the_weighted_class() -> None:
    samples = segmentation_samples((12, 12, 12), count=1)
    samples[0].label[samples[0].label == 1] = 0
    batches = list(loader(samples, 3, sampler="label", label_probabilities={0: 0, 1: 1}, augmentation=None))
    assert sum(len(batch["label"]) for batch in batches) == 3


def test_volumes_smaller_than_the_patch_are_padded_at_the_end_with_zeros() -> None:
    samples = segmentation_samples((6, 12, 4))
    batch = next(iter(loader(samples, 3, augmentation=None, batch_size=6, sampler="label")))
    assert batch["image"].shape == (6, 2, 8, 10, 6)
    assert bool((batch["image"][:, :, 6:] == 0).all()) and bool((batch["image"][..., 4:] == 0).all())
    assert bool((batch["label"][:, 6:] == 0).all()) and bool((batch["label"][..., 4:] == 0).all())
    assert torch.equal(batch["image"][:, 0], batch["label"].float())


def test_uniform_patches_replay_from_the_seed_whatever_the_global_generator_does() -> None:
    samples = segmentation_samples((14, 16, 12))
    torch.manual_seed(0)
    first = [batch["image"] for batch in loader(samples, 3)]
    torch.manual_seed(99)
    torch.rand(5)
    second = [batch["image"] for batch in loader(samples, 3)]
    other = [batch["image"] for batch in loader(samples, 3, seed=4)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_the_global_generator_is_left_as_it_was() -> None:
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    list(loader(segmentation_samples((14, 16, 12)), 3))
    assert torch.equal(torch.rand(3), expected)


def whole_images(targets: list[Any], shape: tuple[int, ...] = (1, 10, 12, 8)) -> list[Sample]:
    rng = np.random.default_rng(1)
    return [Sample(f"c{i}", rng.random(shape, dtype=np.float32), None, t) for i, t in enumerate(targets)]


@pytest.mark.parametrize(("targets", "dtype"), [([0, 1, 1, 0, 2], torch.int64), ([0.5, 1.0, 2.5, 3.0, 4.0], torch.float32)])
def test_whole_image_batches_carry_targets(targets: list[Any], dtype: torch.dtype) -> None:
    samples = whole_images(targets)
    batches = list(loader(samples, 3, batch_size=2))
    assert [len(b["target"]) for b in batches] == [2, 2, 1]
    assert all(b["image"].shape[1:] == (1, 10, 12, 8) and b["image"].dtype == torch.float32 for b in batches)
    assert all(b["target"].dtype == dtype for b in batches)
    by_id = {sid: t for b in batches for sid, t in zip(b["subject_id"], b["target"].tolist())}
    assert by_id == {s.subject_id: s.target for s in samples}


def test_whole_image_order_and_augmentation_replay_from_the_seed() -> None:
    samples = whole_images([0, 1, 0, 1, 1, 0], (1, 12, 12))
    runs = [[(b["subject_id"], b["image"]) for b in loader(samples, 2, batch_size=3, seed=s)] for s in (8, 8, 9)]
    assert all(a[0] == b[0] and torch.equal(a[1], b[1]) for a, b in zip(runs[0], runs[1]))
    assert any(a[0] != b[0] or not torch.equal(a[1], b[1]) for a, b in zip(runs[0], runs[2]))
    assert runs[0][0][1].shape == (3, 1, 12, 12)


def test_whole_image_quarter_turns_keep_the_shape_so_images_stack() -> None:
    rotate = build_augmentation({"rotate90": {"probability": 1.0}, "noise": {"probability": 1.0, "std": 0,
                                                                              "mean": 0}}, 3)  # plane (1, 2): 12 x 8
    samples = whole_images([0, 1, 1, 0])
    originals = [s.image.copy() for s in samples]
    for seed in range(3):
        batch = next(iter(loader(samples, 3, augmentation=rotate, batch_size=4, seed=seed)))
        assert batch["image"].shape == (4, 1, 10, 12, 8)
        by_id = {s.subject_id: s.image for s in samples}
        assert all(np.array_equal(image.numpy(), np.rot90(by_id[sid], 2, axes=(2, 3)))
                   for sid, image in zip(batch["subject_id"], batch["image"]))
    assert not rotate.transforms[0].keep_shape  # the caller's augmentation is left as it was
    assert all(np.array_equal(s.image, o) for s, o in zip(samples, originals))


def test_whole_image_loader_refuses_mixed_shapes() -> None:
    mixed = whole_images([0]) + whole_images([1], (1, 10, 12, 9))
    with pytest.raises(InputError, match="one image shape"):
        loader(mixed, 3, augmentation=None)


def test_task_decides_the_target_type() -> None:
    samples = whole_images([40, 52, 61])  # regression targets that happen to be integers
    batch = next(iter(loader(samples, 3, batch_size=3, task="regression")))
    assert batch["target"].dtype == torch.float32 and sorted(batch["target"].tolist()) == [40.0, 52.0, 61.0]
    assert next(iter(loader(samples, 3, task="classification")))["target"].dtype == torch.int64


def test_to_subject_refuses_a_label_on_another_grid() -> None:
    sample = Sample("bad", np.zeros((1, 4, 5, 6), np.float32), np.zeros((4, 5, 7), np.int64))
    with pytest.raises(InputError, match="subject bad: label has shape"):
        to_subject(sample, 3)


@pytest.mark.parametrize("kind", ["patches", "whole images"])
def test_worker_processes_replay_from_the_seed_and_epochs_differ(kind: str) -> None:
    samples = segmentation_samples((14, 16, 12)) if kind == "patches" else whole_images([0, 1, 0, 1])
    first, second = (loader(samples, 3, workers=1) for _ in range(2))
    epoch_one = [batch["image"] for batch in first]
    assert all(torch.equal(a, b["image"]) for a, b in zip(epoch_one, second))
    assert not all(torch.equal(a, b["image"]) for a, b in zip(epoch_one, first))


def test_a_segmentation_set_missing_one_label_map_is_refused_by_name() -> None:
    samples = segmentation_samples((12, 12, 12))
    samples[1].label = None
    with pytest.raises(InputError, match="segmentation subjects without a label map: s1"):
        loader(samples, 3, task="segmentation")
