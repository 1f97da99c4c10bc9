"""Augmentation: labels stay aligned with images, the 2-D singleton axis stays put, replays follow the seed."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio

from runtime.errors import InputError
from trainer.augment import AUGMENTATIONS, COLOUR_AUGMENTATIONS, RandomRot90, build_augmentation, check_augmentation
from trainer.sampling import Sample, to_subject

SPATIAL = {
    "flip": {"axes": None},
    "rotate90": {},
    "affine": {"scales": [0.9, 1.1], "degrees": [12, 20], "translation": [1, 2]},
    "elastic": {"control_points": 5, "max_displacement": 3},
}
INTENSITY = {
    "blur": {"std": [0.5, 1]},
    "noise": {"std": [0.1, 0.2]},
    "gamma": {"log_gamma": [0.2, 0.4]},
    "bias_field": {"coefficients": [0.3, 0.5]},
    "motion": {"degrees": [5, 10], "translation": [2, 4], "transforms": 2},
    "ghosting": {"num_ghosts": [2, 4], "intensity": [0.5, 1]},
    "spike": {"num_spikes": [1, 2], "intensity": [1, 3]},
}
BRIEF_EXAMPLE = {
    "flip": {"probability": 0.5, "axes": [0, 1, 2]},
    "rotate90": {"probability": 0.2, "axes": [1, 2]},
    "affine": {"probability": 0.3, "scales": 0.1, "degrees": 10, "translation": 0},
    "elastic": {"probability": 0.1, "control_points": 7, "max_displacement": 7.5},
    "anisotropy": {"probability": 0.1, "downsampling": [1.5, 4]},
    "blur": {"probability": 0.1, "std": [0, 1]},
    "noise": {"probability": 0.1, "std": 0.1},
    "gamma": {"probability": 0.1, "log_gamma": 0.3},
    "bias_field": {"probability": 0.1, "coefficients": 0.5},
    "motion": {"probability": 0.05, "degrees": 10, "translation": 10, "transforms": 2},
    "ghosting": {"probability": 0.05, "num_ghosts": [4, 10], "intensity": [0.5, 1]},
    "spike": {"probability": 0.05, "num_spikes": 1, "intensity": [1, 3]},
}


def labelled(dimensions: int) -> Sample:
    """Two boxes of different sizes (classes 1 and 2); image channel 0 is the label as float, channel 1 noise."""
    shape = (20, 26, 22)[:dimensions] if dimensions == 3 else (30, 36)
    label = np.zeros(shape, np.int64)
    label[tuple(slice(3, 3 + n) for n in (9, 11, 8)[:dimensions])] = 1
    label[tuple(slice(s - 8, s - 2) for s in shape)] = 2
    noise = np.random.default_rng(0).random(shape, dtype=np.float32)
    return Sample("s1", np.stack([label.astype(np.float32), noise]), label)


def one(name: str, params: dict, dimensions: int) -> tio.Transform:
    params = {key: value for key, value in params.items() if value is not None}
    compose = build_augmentation({name: {"probability": 1.0, **params}}, dimensions)
    assert isinstance(compose, tio.Compose) and len(compose.transforms) == 1
    return compose.transforms[0]


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.parametrize("dimensions", [2, 3])
@pytest.mark.parametrize("name", list(SPATIAL))
def test_spatial_transforms_move_label_with_image(name: str, dimensions: int) -> None:
    sample = labelled(dimensions)
    torch.manual_seed(1)
    out = one(name, SPATIAL[name], dimensions)(to_subject(sample, dimensions))
    image, label = out["image"].data, out["label"].data[0]
    assert image.ndim == 4 and (dimensions == 3 or image.shape[-1] == 1)
    moved = label.numpy()[..., 0] if dimensions == 2 else label.numpy()
    assert moved.shape != sample.label.shape or not np.array_equal(moved, sample.label), f"{name} did nothing"
    if name in ("flip", "rotate90"):  # exact permutations of voxels
        assert torch.equal(image[0], label.float())
    assert dice(image[0] > 0.5, label > 0) > 0.95  # a shift by one voxel scores below 0.9 here
    for c in (1, 2):
        kept = int((label == c).sum()) / int((sample.label == c).sum())
        assert 0.7 < kept < 1.4, f"{name} kept {kept:.2f} of class {c}: content left the plane"
        assert float(((image[0].round() == c) & (label == c)).sum()) / int((label == c).sum()) > 0.7


@pytest.mark.parametrize("dimensions", [2, 3])
def test_rotate90_is_an_exact_quarter_turn_in_its_plane(dimensions: int) -> None:
    cube = np.random.default_rng(1).integers(0, 3, (6, 6, 5)[:dimensions] if dimensions == 3 else (6, 6))
    sample = Sample("c", cube[None].astype(np.float32), cube)
    rotate = one("rotate90", {"axes": [0, 1]}, dimensions)
    seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        out = rotate(to_subject(sample, dimensions))
        label = out["label"].data[0].numpy()[..., 0] if dimensions == 2 else out["label"].data[0].numpy()
        k = next(k for k in (1, 2, 3) if np.array_equal(label, np.rot90(cube, k, axes=(0, 1))))
        seen.add(k)
        assert np.array_equal(out["image"].data[0].numpy().reshape(label.shape), label.astype(np.float32))
    assert seen == {1, 2, 3}


def test_rotate90_keep_shape_turns_a_non_square_plane_half_way_only() -> None:
    sample = labelled(3)
    rotate = RandomRot90(axes=(1, 2), keep_shape=True)
    for seed in range(4):
        torch.manual_seed(seed)
        out = rotate(to_subject(sample, 3))
        assert np.array_equal(out["label"].data[0].numpy(), np.rot90(sample.label, 2, axes=(1, 2)))


@pytest.mark.parametrize("dimensions", [2, 3])
def test_anisotropy_degrades_the_image_only(dimensions: int) -> None:
    sample = labelled(dimensions)
    torch.manual_seed(0)
    out = one("anisotropy", {"downsampling": [2, 3]}, dimensions)(to_subject(sample, dimensions))
    label = out["label"].data[0]
    assert np.array_equal(label.numpy().reshape(sample.label.shape), sample.label)
    assert not np.allclose(out["image"].data.numpy().reshape(sample.image.shape), sample.image)
    for c in (1, 2):
        assert dice(out["image"].data[0].round() == c, label == c) > 0.8


@pytest.mark.parametrize("dimensions", [2, 3])
@pytest.mark.parametrize("name", list(INTENSITY))
def test_intensity_transforms_change_the_image_and_never_the_label(name: str, dimensions: int) -> None:
    sample = labelled(dimensions)
    torch.manual_seed(2)
    out = one(name, INTENSITY[name], dimensions)(to_subject(sample, dimensions))
    assert np.array_equal(out["label"].data.numpy().reshape(sample.label.shape), sample.label)
    image = out["image"].data.numpy()
    assert image.shape == sample.image.shape + ((1,) if dimensions == 2 else ())
    assert not np.allclose(image.reshape(sample.image.shape), sample.image, atol=1e-3)
    assert np.isfinite(image).all()


def test_same_torch_seed_replays_the_same_augmentation() -> None:
    config = {name: {**params, "probability": 1.0} for name, params in BRIEF_EXAMPLE.items()}
    config["elastic"].update(control_points=5, max_displacement=3)
    augment = build_augmentation(config, 3)
    subject = to_subject(labelled(3), 3)
    outputs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        outputs.append(augment(subject))
    assert torch.equal(outputs[0]["image"].data, outputs[1]["image"].data)
    assert torch.equal(outputs[0]["label"].data, outputs[1]["label"].data)
    assert not torch.equal(outputs[0]["image"].data, outputs[2]["image"].data)


def test_the_documented_example_builds_every_augmentation_in_3d_and_2d() -> None:
    assert set(BRIEF_EXAMPLE) == set(AUGMENTATIONS) - set(COLOUR_AUGMENTATIONS)
    assert len(build_augmentation(BRIEF_EXAMPLE, 3).transforms) == 12
    planar = {**BRIEF_EXAMPLE, "flip": {"probability": 0.5, "axes": [0, 1]}, "rotate90": {"probability": 0.2}}
    assert len(build_augmentation(planar, 2).transforms) == 12
    assert build_augmentation({}, 3) is None and build_augmentation(None, 2) is None
    assert all(check_augmentation(name, params) == [] for name, params in BRIEF_EXAMPLE.items())


@pytest.mark.parametrize(("name", "params", "dimensions", "expected"), [
    ("flip", {"probability": 2}, 3, "probability: must be in [0, 1], got 2"),
    ("flip", {"axes": [0]}, 3, "probability: missing; give the chance (0 to 1) that the transform is applied"),
    ("flip", {"probability": 0.5, "axis": [0]}, 3, "axis: unknown parameter; known ones are probability, axes"),
    ("flip", {"probability": 0.5, "axes": [0, 2]}, 2, "axes: must be a list of distinct axes among 0..1, got [0, 2]"),
    ("rotate90", {"probability": 0.5, "axes": [0, 1, 2]}, 3, "axes: must name exactly 2 axes (the plane), got [0, 1, 2]"),
    ("affine", {"probability": 0.5, "scales": [0, 1.2]}, 3, "scales: a range [min, max] of scale factors needs min > 0, got [0, 1.2]"),
    ("affine", {"probability": 0.5, "degrees": [10, 5]}, 3, "degrees: a range [min, max] needs min <= max, got [10, 5]"),
    ("elastic", {"probability": 0.5, "control_points": 4}, 3, "control_points: must be an integer >= 5, got 4"),
    ("anisotropy", {"probability": 0.5, "downsampling": 0.5}, 3, "downsampling: a single number must be >= 1, got 0.5"),
    ("noise", {"probability": 0.5, "std": "big"}, 3, "std: must be a number or a range [min, max], got 'big'"),
    ("ghosting", {"probability": 0.5, "num_ghosts": 2.5}, 3,
     "num_ghosts: must be an integer >= 0 or a range [min, max] of integers >= 0, got 2.5"),
    ("motion", {"probability": 0.5, "transforms": None}, 3,
     "transforms: must not be null; leave the key out for its default"),
    ("swirl", {"probability": 0.5}, 3, "unknown augmentation 'swirl'; known ones are " + ", ".join(AUGMENTATIONS)),
    ("blur", 0.5, 3, "must be a mapping of parameters such as {probability: 0.5}, got 0.5"),
])
def test_check_augmentation_reports_what_and_where(name: str, params: object, dimensions: int, expected: str) -> None:
    assert check_augmentation(name, params, dimensions) == [expected]


def test_build_refuses_a_bad_section_naming_every_location() -> None:
    with pytest.raises(InputError) as caught:
        build_augmentation({"flip": {"probability": -1}, "twist": {}, "noise": {"probability": 1, "std": -1}}, 3)
    message = str(caught.value)
    assert "augmentation.flip.probability: must be in [0, 1], got -1" in message
    assert "augmentation.twist: unknown augmentation 'twist'" in message
    assert "augmentation.noise.std: a single number must be >= 0, got -1" in message


def test_resolved_configs_with_tuples_and_the_optional_keys_build() -> None:
    config = {
        "anisotropy": {"probability": 1.0, "downsampling": (2, 3), "axes": (1,)},
        "noise": {"probability": 1.0, "std": 0, "mean": 0.5},
        "bias_field": {"probability": 0.0, "coefficients": (0.1, 0.2), "order": 2},
    }
    assert all(check_augmentation(name, params, 2) == [] for name, params in config.items())
    profile = np.random.default_rng(2).random((1, 30, 1), dtype=np.float32)
    sample = Sample("rows", np.repeat(profile, 36, axis=2), np.zeros((30, 36), np.int64))  # constant along axis 1
    outputs = []
    for axis in (1, 0):
        config["anisotropy"]["axes"] = (axis,)
        torch.manual_seed(0)
        outputs.append(build_augmentation(config, 2)(to_subject(sample, 2))["image"].data[..., 0].numpy())
    inner = (slice(None), slice(3, -3), slice(3, -3))  # resampling back leaves the outermost voxels empty
    assert np.allclose(outputs[0][inner], sample.image[inner] + 0.5, atol=1e-5)  # noise: the mean; axis 1: void
    assert not np.allclose(outputs[1][inner], sample.image[inner] + 0.5, atol=1e-3)
