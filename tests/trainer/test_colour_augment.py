"""The colour augmentations of histology models (hed, brightness, contrast, saturation, hue) on real RGB
arrays: a known colour moves the way the transform says, a zero-strength setting gives the image
back, parameters are checked like the other augmentations', and only RGB images are taken."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchio as tio
from skimage.color import rgb2hed

from runtime.errors import InputError
from tests.slidekit import tissue_image
from trainer.augment import COLOUR_AUGMENTATIONS, build_augmentation, check_augmentation

NUCLEUS = (110, 70, 160)      # haematoxylin-dark purple: every stain amount of rgb2hed is positive


def _apply(config: dict, rgb: np.ndarray, label: np.ndarray | None = None, seed: int = 0) -> tio.Subject:
    """`config` applied (always) to (rows, columns, 3) 0-255 RGB, as a 2-D subject with an optional label map."""
    fields = {"image": tio.ScalarImage(tensor=torch.from_numpy(
        np.ascontiguousarray(np.moveaxis(rgb.astype(np.float32), -1, 0))[..., None]))}
    if label is not None:
        fields["label"] = tio.LabelMap(tensor=torch.from_numpy(label.astype(np.int64))[None, ..., None])
    torch.manual_seed(seed)
    return build_augmentation({name: {**params, "probability": 1.0} for name, params in config.items()}, 2)(
        tio.Subject(**fields))


def _rgb(subject: tio.Subject) -> np.ndarray:
    return np.moveaxis(subject["image"].data[..., 0].numpy(), 0, -1)


def _colour(rgb: tuple[int, int, int]) -> np.ndarray:
    return np.tile(np.array(rgb, np.float32), (4, 4, 1))


@pytest.mark.parametrize("config", [
    {"hed": {"scale": 0, "shift": 0}}, {"brightness": {"factor": 0}}, {"contrast": {"factor": 0}},
    {"saturation": {"factor": 0}}, {"hue": {"shift": 0}},
])
def test_a_zero_strength_setting_gives_the_image_back(config):
    image, _ = tissue_image(48, 64, seed=2)
    out = _rgb(_apply(config, image))
    assert np.allclose(out, image, atol=1e-3), np.abs(out - image).max()


def test_more_of_every_stain_scales_rgb2hed_and_darkens_the_colour():
    before = rgb2hed(np.array([[NUCLEUS]], np.uint8))[0, 0]
    assert (before > 0).all()
    out = _rgb(_apply({"hed": {"scale": [1.5, 1.5], "shift": 0}}, _colour(NUCLEUS)))
    assert (out < np.array(NUCLEUS)).all()
    after = rgb2hed(out[:1, :1].astype(np.float64) / 255)[0, 0]
    assert np.allclose(after, 1.5 * before, rtol=1e-4), (after, before)


def test_a_stain_shift_stains_the_glass():
    glass = (242, 242, 240)
    out = _rgb(_apply({"hed": {"scale": 0, "shift": [0.02, 0.02]}}, _colour(glass)))
    assert (out < np.array(glass) - 10).all()


def test_brightness_contrast_saturation_and_hue_move_a_known_colour_the_expected_way():
    purple = _colour(NUCLEUS)
    assert np.allclose(_rgb(_apply({"brightness": {"factor": [1.5, 1.5]}}, purple)), np.array(NUCLEUS) * 1.5)
    grey = 0.299 * 110 + 0.587 * 70 + 0.114 * 160
    assert np.allclose(_rgb(_apply({"saturation": {"factor": [0, 0]}}, purple)), grey, atol=1e-3)
    red = _colour((200, 0, 0))
    assert np.allclose(_rgb(_apply({"hue": {"shift": [1 / 3, 1 / 3]}}, red))[0, 0], (0, 200, 0), atol=1e-3)
    halves = np.concatenate([_colour((60, 60, 60)), _colour((160, 160, 160))])
    flat = _rgb(_apply({"contrast": {"factor": [0, 0]}}, halves))
    assert np.allclose(flat, 110, atol=1e-3)
    steep = _rgb(_apply({"contrast": {"factor": [2, 2]}}, halves))
    assert np.allclose(steep[0, 0], 10) and np.allclose(steep[-1, 0], 210)


def test_values_stay_within_0_255_and_label_maps_do_not_move():
    image, truth = tissue_image(48, 64, seed=3)
    subject = _apply({"brightness": {"factor": [3, 3]}, "hed": {"scale": 0.5, "shift": 0.05}}, image, truth)
    out = _rgb(subject)
    assert out.min() >= 0 and out.max() <= 255 and out.max() == 255
    assert np.array_equal(subject["label"].data[0, ..., 0].numpy(), truth)


def test_the_same_seed_replays_the_same_colours():
    image, _ = tissue_image(48, 64, seed=4)
    config = {name: {} for name in COLOUR_AUGMENTATIONS}
    first, again, other = (_rgb(_apply(config, image, seed=s)) for s in (7, 7, 8))
    assert np.array_equal(first, again) and not np.allclose(first, other)


def test_only_rgb_images_are_taken():
    grey = np.zeros((1, 8, 8, 1), np.float32)
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(grey)))
    with pytest.raises(InputError, match="augmentation saturation changes RGB colours; the image has 1 channel"):
        build_augmentation({"saturation": {"probability": 1.0}}, 2)(subject)


@pytest.mark.parametrize(("name", "params", "expected"), [
    ("hed", {"probability": 0.5, "scale": 1.5}, "scale: a single number must be >= 0 and < 1, got 1.5"),
    ("hed", {"probability": 0.5, "scale": [0, 1]}, "scale: a range [min, max] of scale factors needs min > 0"),
    ("hed", {"probability": 0.5, "shift": [0.1, -0.1]}, "shift: a range [min, max] needs min <= max"),
    ("brightness", {"probability": 0.5, "factor": -0.1}, "factor: a single number must be >= 0 and < 1, got -0.1"),
    ("contrast", {"probability": 0.5, "factor": [-1, 1]}, "factor: a range [min, max] needs min >= 0"),
    ("saturation", {"probability": 0.5, "factor": "lots"}, "factor: must be a number or a range [min, max]"),
    ("hue", {"probability": 0.5, "shift": 0.6}, "shift: a single number must be in [0, 0.5]"),
    ("hue", {"probability": 0.5, "shift": [-0.6, 0]}, "shift: a range [min, max] needs -0.5 <= min <= max <= 0.5"),
    ("hue", {"shift": 0.1}, "probability: missing"),
    ("brightness", {"probability": 0.5, "gain": 2}, "gain: unknown parameter; known ones are probability, factor"),
])
def test_parameters_are_checked(name, params, expected):
    problems = check_augmentation(name, params, 2)
    assert any(p.startswith(expected) for p in problems), problems
