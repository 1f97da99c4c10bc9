"""Deterministic preprocessing: each step by hand, parameter checks, records and inversion, a real scan."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from runtime.errors import InputError, ManifestError, ModelError
from runtime.manifest import Step
from runtime.preprocess import (
    STEPS, Cropped, Padded, Volume, check_step, invert, invert_rows, rows_needed, run_steps, transfer,
)


def run(array: np.ndarray, spacing: tuple[float, ...], *steps: Step, mask: np.ndarray | None = None,
        min_shape: tuple[int, ...] | None = None):
    return run_steps(Volume.from_array(np.asarray(array, np.float32), spacing, mask), list(steps), min_shape)


ROW = np.array([[[-5.0, 0.0, 3.0, 10.0]]], np.float32)  # (C=1, 1, 4)


# --- intensity steps ---------------------------------------------------------------------------

def test_threshold_zeroes_voxels_outside_the_bounds():
    out, _ = run(ROW, (1, 1), Step("threshold", {"min": 0, "max": 5}))
    np.testing.assert_array_equal(out.array, [[[0, 0, 3, 0]]])
    out, _ = run(ROW, (1, 1), Step("threshold", {"min": 1}))
    np.testing.assert_array_equal(out.array, [[[0, 0, 3, 10]]])


def test_clip_clamps_to_the_bounds():
    out, _ = run(ROW, (1, 1), Step("clip", {"min": 0, "max": 5}))
    np.testing.assert_array_equal(out.array, [[[0, 0, 3, 5]]])
    out, _ = run(ROW, (1, 1), Step("clip", {"max": 5, "min": None}))
    np.testing.assert_array_equal(out.array, [[[-5, 0, 3, 5]]])


def test_rescale_defaults_to_the_image_range():
    out, _ = run(ROW, (1, 1), Step("rescale", {}))
    np.testing.assert_allclose(out.array, [[[0, 5 / 15, 8 / 15, 1]]], rtol=1e-6)


def test_rescale_with_explicit_input_range_clips():
    out, _ = run(ROW, (1, 1), Step("rescale", {"in_min": 0, "in_max": 5, "out_min": -1, "out_max": 1}))
    np.testing.assert_allclose(out.array, [[[-1, -1, 0.2, 1]]], rtol=1e-6)


def test_rescale_with_percentiles():
    low, high = -5 + 0.75 * 5, 3 + 0.25 * 7  # linear percentiles 25 and 75 of [-5, 0, 3, 10]
    out, _ = run(ROW, (1, 1), Step("rescale", {"percentiles": [25, 75]}))
    expected = np.clip((ROW - low) / (high - low), 0, 1)
    np.testing.assert_allclose(out.array, expected, rtol=1e-6)


def test_rescale_of_a_constant_image_gives_out_min():
    out, _ = run(np.full((1, 2, 2), 7.0), (1, 1), Step("rescale", {"out_min": -1, "out_max": 1}))
    np.testing.assert_array_equal(out.array, -1)


def test_zscore_whole():
    out, _ = run([[[1.0, 2.0], [3.0, 4.0]]], (1, 1), Step("zscore", {"region": "whole"}))
    np.testing.assert_allclose(out.array, (np.array([[[1, 2], [3, 4]]]) - 2.5) / np.sqrt(1.25), rtol=1e-6)


def test_zscore_nonzero_by_hand():
    out, _ = run([[[0.0, 2.0, 4.0], [0.0, 0.0, 6.0]]], (1, 1), Step("zscore", {"region": "nonzero"}))
    s = np.sqrt(8 / 3)
    np.testing.assert_allclose(out.array, [[[0, -2 / s, 0], [0, 0, 2 / s]]], rtol=1e-6, atol=1e-7)


def test_zscore_nonzero_leaves_background_zero_and_normalises_inside():
    rng = np.random.default_rng(0)
    image = np.zeros((1, 12, 10, 8), np.float32)
    image[0, 2:9, 3:8, 1:7] = rng.normal(100.0, 15.0, (7, 5, 6))
    out, _ = run(image, (1, 1, 1), Step("zscore", {"region": "nonzero"}))
    inside = image[0] != 0
    assert np.all(out.array[0][~inside] == 0)
    assert abs(out.array[0][inside].mean()) < 1e-5
    assert abs(out.array[0][inside].std() - 1) < 1e-5


def test_zscore_mask_region_uses_the_mask():
    image = np.array([[[1.0, 3.0, 10.0, 20.0]]], np.float32)
    mask = np.array([[True, True, False, False]])
    out, _ = run(image, (1, 1), Step("zscore", {"region": "mask"}), mask=mask)
    np.testing.assert_allclose(out.array, [[[-1, 1, 0, 0]]], rtol=1e-6)


def test_zscore_mask_region_without_a_mask_raises():
    with pytest.raises(InputError, match="needs a mask"):
        run(ROW, (1, 1), Step("zscore", {"region": "mask"}))


def test_zscore_of_a_constant_image_is_finite():
    out, _ = run(np.full((1, 3, 3), 5.0), (1, 1), Step("zscore", {"region": "whole"}))
    np.testing.assert_array_equal(out.array, 0)


def test_intensity_steps_apply_to_the_chosen_channels_only():
    image = np.stack([ROW[0], ROW[0] * 2])
    out, _ = run(image, (1, 1), Step("clip", {"min": 0, "max": 5, "channels": [1]}),
                 Step("rescale", {"channels": [0]}))
    np.testing.assert_allclose(out.array[0], [[0, 5 / 15, 8 / 15, 1]], rtol=1e-6)
    np.testing.assert_array_equal(out.array[1], [[0, 0, 5, 5]])


def test_missing_channel_raises():
    with pytest.raises(InputError, match=r"channels \[3\] do not exist"):
        run(ROW, (1, 1), Step("clip", {"min": 0, "channels": [3]}))


def test_the_callers_array_is_left_unchanged():
    volume = Volume.from_array(ROW.copy(), (1, 1))
    out, _ = run_steps(volume, [Step("clip", {"min": 0}), Step("zscore", {"region": "whole"})])
    np.testing.assert_array_equal(volume.array, ROW)
    assert out.array.dtype == np.float32 and not np.shares_memory(out.array, volume.array)


# --- foreground -------------------------------------------------------------------------------

AIR_AND_BODY = np.array([[[-1000.0, -1000.0, -1000.0, -1000.0, -1000.0],
                          [-1000.0, 40.0, -950.0, 60.0, -1000.0],
                          [-1000.0, -1000.0, -1000.0, -1000.0, -1000.0]]], np.float32)  # (1, 3, 5): CT-like


def test_foreground_step_redefines_the_foreground_from_intensities():
    volume = Volume.from_array(AIR_AND_BODY.copy(), (1, 1))
    assert volume.foreground.all()  # every voxel is non-zero
    out, record = run_steps(volume, [Step("foreground", {"min": -900})])
    np.testing.assert_array_equal(out.foreground, AIR_AND_BODY[0] >= -900)
    np.testing.assert_array_equal(out.array, AIR_AND_BODY)  # the image itself is not changed
    assert record.transforms == ()
    out, _ = run_steps(volume, [Step("foreground", {"min": -960, "max": 50})])
    np.testing.assert_array_equal(out.foreground, (AIR_AND_BODY[0] >= -960) & (AIR_AND_BODY[0] <= 50))


def test_foreground_step_takes_any_selected_channel():
    image = np.stack([AIR_AND_BODY[0], np.where(np.arange(5) == 0, 100.0, -1000.0)[None].repeat(3, 0)])
    both, _ = run(image, (1, 1), Step("foreground", {"min": -900}))
    first, _ = run(image, (1, 1), Step("foreground", {"min": -900, "channels": [0]}))
    second, _ = run(image, (1, 1), Step("foreground", {"min": -900, "channels": [1]}))
    np.testing.assert_array_equal(first.foreground, AIR_AND_BODY[0] >= -900)
    np.testing.assert_array_equal(second.foreground[:, 0], True)
    assert second.foreground.sum() == 3
    np.testing.assert_array_equal(both.foreground, first.foreground | second.foreground)


def test_crop_and_zscore_follow_a_foreground_step():
    out, record = run(AIR_AND_BODY, (1, 1), Step("foreground", {"min": -900}), Step("crop_nonzero", {}),
                      Step("zscore", {"region": "nonzero"}))
    assert record.transforms == (Cropped((3, 5), ((1, 2), (1, 4))),)
    np.testing.assert_allclose(out.array, [[[-1, 0, 1]]], atol=1e-6)  # 40 and 60 normalised; air between is 0
    np.testing.assert_array_equal(out.foreground, [[True, False, True]])


def test_foreground_step_after_a_resample_works_on_the_new_grid():
    out, _ = run(AIR_AND_BODY, (1, 1), Step("resample", {"spacing": [1, 0.5]}), Step("foreground", {"min": -500}))
    assert out.foreground.shape == (3, 10)
    np.testing.assert_array_equal(out.foreground, out.array[0] >= -500)


def test_a_foreground_with_its_holes_filled_is_the_region_a_zscore_reads():
    ring = np.zeros((1, 5, 5), np.float32)
    ring[0, 1:4, 1:4] = [[4, 8, 4], [8, 0, 8], [4, 8, 4]]          # a body with one zero voxel inside
    out, _ = run(ring, (1, 1), Step("foreground", {"fill_holes": True}), Step("zscore", {"region": "nonzero"}))
    expected = np.zeros((5, 5), bool)
    expected[1:4, 1:4] = True
    np.testing.assert_array_equal(out.foreground, expected)
    inside = ring[0, 1:4, 1:4]
    np.testing.assert_allclose(out.array[0, 1:4, 1:4], (inside - inside.mean()) / inside.std(), atol=1e-6)
    assert check_step("foreground", {"fill_holes": "yes"}) == ["fill_holes: must be true or false, got 'yes'"]
    assert check_step("foreground", {"max": 10, "fill_holes": True}) == []


def test_foreground_step_that_finds_nothing_is_refused():
    with pytest.raises(InputError, match=r"foreground: no voxel of channel\(s\) \[0\] lies within \[500, inf\]"):
        run(AIR_AND_BODY, (1, 1), Step("foreground", {"min": 500}))


# --- geometric steps ---------------------------------------------------------------------------

GRID = np.array([[[0.0, 1.0, 2.0, 3.0], [10.0, 11.0, 12.0, 13.0]]], np.float32)  # (1, 2, 4)


def test_resample_upsampling_keeps_voxel_zero_and_extrapolates_nearest():
    out, record = run(GRID, (1.0, 1.0), Step("resample", {"spacing": [1, 0.5]}))
    np.testing.assert_allclose(out.array[0, 0], [0, 0.5, 1, 1.5, 2, 2.5, 3, 3], atol=1e-6)
    np.testing.assert_allclose(out.array[0, 1], [10, 10.5, 11, 11.5, 12, 12.5, 13, 13], atol=1e-5)
    assert out.spacing == (1.0, 0.5) and record.shape == (2, 8)


def test_points_past_the_last_voxel_hold_only_the_axis_that_ran_out():
    """Resampling a ramp along x from 6.5 to 5 mm along z: the last output slice lies past the last
    input slice; along x it keeps the ramp (ITK's extrapolation alone gave 0 2 3 5 6 8 there)."""
    ramp = np.broadcast_to(np.arange(20, dtype=np.float32), (1, 2, 20, 20)).copy()
    out, _ = run(ramp, (6.5, 1.0, 1.0), Step("resample", {"spacing": [5.0, 1.5, 1.5]}))
    assert out.array.shape == (1, 3, 13, 13)                     # the last slice at 10 mm, past 6.5 + 3.25
    np.testing.assert_allclose(out.array[0, :, :, :6], np.broadcast_to([0, 1.5, 3, 4.5, 6, 7.5], (3, 13, 6)),
                               atol=1e-5)


def test_resample_downsampling_and_mask_stays_boolean():
    mask = np.array([[True, False, True, False], [False, False, False, True]])
    out, _ = run(GRID, (1.0, 1.0), Step("resample", {"spacing": [1, 2]}), mask=mask)
    np.testing.assert_allclose(out.array, GRID[:, :, ::2], atol=1e-6)
    assert out.mask.dtype == bool
    np.testing.assert_array_equal(out.mask, mask[:, ::2])


def test_resample_size_rounds_and_never_drops_to_zero():
    out, _ = run(np.ones((1, 3, 10)), (1.0, 0.4), Step("resample", {"spacing": [10, 1.5]}))
    assert out.spatial_shape == (1, 3)  # 3*1/10 -> 0 -> 1; 10*0.4/1.5 = 2.67 -> 3


def test_resize_aligns_the_outer_edges():
    out, record = run([[[0.0, 1.0]]], (1.0, 2.0), Step("resize", {"shape": [1, 4]}))
    np.testing.assert_allclose(out.array, [[[0, 0.25, 0.75, 1]]], atol=1e-6)
    assert out.spacing == (1.0, 1.0)
    back = invert(record, out.array, np.zeros(1))
    np.testing.assert_allclose(back, [[[0.125, 0.875]]], atol=1e-6)


def test_crop_nonzero_with_margin_clamped_to_the_image():
    image = np.zeros((1, 6, 7), np.float32)
    image[0, 2:4, 1:5] = 1
    image[0, 3, 4] = 2
    out, record = run(image, (1, 1), Step("crop_nonzero", {}))
    assert record.transforms == (Cropped((6, 7), ((2, 4), (1, 5))),)
    np.testing.assert_array_equal(out.array, image[:, 2:4, 1:5])
    assert out.foreground.all()
    _, record = run(image, (1, 1), Step("crop_nonzero", {"margin": 2}))
    assert record.transforms[0].box == ((0, 6), (0, 7))
    assert record.shape == (6, 7)


def test_crop_nonzero_of_an_empty_image_raises():
    with pytest.raises(InputError, match="no non-zero voxel"):
        run(np.zeros((1, 3, 3)), (1, 1), Step("crop_nonzero", {"margin": 0}))


def test_pad_is_symmetric_with_the_odd_voxel_after():
    image = np.arange(12, dtype=np.float32).reshape(1, 3, 4) + 1
    out, record = run(image, (1, 1), Step("pad", {"shape": [6, 3], "value": -1}))
    assert out.spatial_shape == (6, 4)
    assert record.transforms == (Padded((3, 4), ((1, 2), (0, 0))),)
    np.testing.assert_array_equal(out.array[:, 1:4], image)
    assert np.all(out.array[:, [0, 4, 5]] == -1)
    assert not out.foreground[[0, 4, 5]].any() and out.foreground[1:4].all()


def test_spacing_of_the_wrong_length_raises():
    with pytest.raises(InputError, match="has 3 values but the image has 2 spatial axes"):
        run(GRID, (1, 1), Step("resample", {"spacing": [1, 1, 1]}))
    with pytest.raises(InputError, match="has 3 values but the image has 2"):
        Volume.from_array(GRID, (1, 1, 1))


def test_invalid_step_refused_by_run_steps():
    with pytest.raises(ManifestError, match=r"step 0 \('clip'\).*give at least one bound"):
        run(GRID, (1, 1), Step("clip", {}))


# --- check_step ----------------------------------------------------------------------------------

def test_check_step_accepts_valid_steps_with_defaults():
    assert check_step("resample", {"spacing": [3, 1.5, 1.5]}) == []
    assert check_step("pad", {"shape": [64, 64]}) == []
    assert check_step("rescale", {"percentiles": [0.5, 99.5], "channels": [0]}) == []
    assert check_step("crop_nonzero", {}) == []
    assert check_step("foreground", {"min": -900}) == []
    assert check_step("normalize", {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}) == []
    assert check_step("histogram_standardise", {"landmarks": [[0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 100]]}) == []
    assert set(STEPS) == {"resample", "resize", "threshold", "clip", "rescale", "zscore", "crop_nonzero", "pad",
                          "foreground", "normalize", "reorient", "histogram_standardise"}
    assert check_step("foreground", {}) == ["min, max: give at least one bound (both are null), or fill_holes: true"]


def test_normalize_uses_the_given_statistics_per_channel():
    volume = Volume.from_array(np.stack([np.full((4, 5), 10.0), np.full((4, 5), 2.0)]).astype(np.float32), (1.0, 1.0))
    out, _ = run_steps(volume, [Step("normalize", {"mean": [4.0, 1.0], "std": [2.0, 0.5]})])
    assert np.allclose(out.array[0], 3.0) and np.allclose(out.array[1], 2.0)
    assert check_step("normalize", {"mean": [1, 2], "std": [1]}) == [
        "mean, std: give as many std values as mean values, got 2 and 1"]
    assert check_step("normalize", {"mean": [1], "std": [0]})[0].startswith("std: must be a non-empty list of numbers > 0")


def test_check_step_unknown_step_lists_the_known_ones():
    (problem,) = check_step("denoise", {})
    assert "unknown step 'denoise'" in problem and "resample" in problem and "zscore" in problem


def test_check_step_unknown_and_missing_keys():
    problems = check_step("resample", {"spacng": [1, 1]})
    assert any(p.startswith("spacng: unknown parameter") for p in problems)
    assert "spacing: missing (required)" in problems
    assert check_step("zscore", {}) == ["region: missing (required)"]


def test_check_step_bad_values():
    assert check_step("resample", {"spacing": [1, -1]}) == [
        "spacing: must be 2 or 3 positive numbers (one per spatial axis; null keeps the scan's spacing along an "
        "axis), got [1, -1]"]
    assert check_step("pad", {"shape": [64, 64.5]})[0].startswith("shape: must be 2 or 3 positive integers")
    assert check_step("zscore", {"region": "roi"})[0].startswith("region: must be one of whole, nonzero, mask")
    assert check_step("crop_nonzero", {"margin": -1})[0].startswith("margin: must be an integer >= 0")
    assert check_step("clip", {"min": True, "max": 1})[0].startswith("min: must be a number or null")
    assert check_step("threshold", {"channels": [0, 0], "min": 0})[0].startswith("channels:")
    assert check_step("zscore", ["whole"]) == ["params must be an object, got list"]


def test_check_step_relations_between_params():
    assert check_step("clip", {"min": None, "max": None}) == ["min, max: give at least one bound (both are null)"]
    assert "must not exceed" in check_step("threshold", {"min": 5, "max": 1})[0]
    assert "must be below" in check_step("rescale", {"out_min": 1, "out_max": 1})[0]
    assert check_step("rescale", {"in_min": 250, "in_max": 250}) == [
        "in_min, in_max: the input range is empty (both 250); give in_min below in_max"]
    assert check_step("clip", {"min": 100, "max": 100}) == [
        "min, max: the range is empty (both 100); give min below max"]
    assert "not both" in check_step("rescale", {"in_max": 1, "percentiles": [1, 99]})[0]


# --- records and inversion -----------------------------------------------------------------------

def smooth_field(shape: tuple[int, ...], spacing: tuple[float, ...]) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij")
    return (np.sin(z / 6) + np.cos(y / 8) + 0.5 * np.sin(x / 7 + 1)).astype(np.float32)[None]


def test_resample_then_invert_returns_a_smooth_field_on_the_exact_grid():
    spacing = (2.0, 1.0, 1.3)
    field = smooth_field((14, 23, 19), spacing)
    out, record = run(field + 3, spacing, Step("resample", {"spacing": [1.5, 2.5, 1.7]}))
    assert record.shape == (19, 9, 15)
    back = invert(record, out.array - 3, np.zeros(1))
    assert back.shape == field.shape
    # inside the coarse grid: two linear interpolations; per axis the error is at most
    # (h_forward^2 + h_back^2) / 8 * max|f''|, which sums to 0.056 over the three axes
    covered = (slice(None), slice(None), slice(0, 21))  # y voxels 21, 22 (21, 22 mm) lie past the coarse end (20 mm)
    np.testing.assert_allclose(back[covered], field[covered], atol=0.06)
    # past the end: nearest extrapolation, off by at most slope (1/8 per mm) * distance (2 mm) more
    np.testing.assert_allclose(back, field, atol=0.06 + 2 / 8)


def test_crop_pad_resample_chain_inverts_onto_the_original_grid():
    image = np.zeros((1, 20, 16, 12), np.float32)
    image[0, 5:12, 4:9, 3:7] = 1
    steps = [Step("crop_nonzero", {"margin": 1}), Step("pad", {"shape": [12, 8, 8]}),
             Step("resample", {"spacing": [2, 2, 3]})]
    out, record = run(image, (1.5, 1.0, 1.0), *steps)
    assert record.transforms[0].box == ((4, 13), (3, 10), (2, 8))
    assert out.spatial_shape == record.shape == (9, 4, 3)
    probabilities = np.empty((2, *record.shape), np.float32)
    probabilities[0], probabilities[1] = 0.25, 0.75
    back = invert(record, probabilities, np.array([1.0, 0.0]))
    assert back.shape == (2, 20, 16, 12)
    inside = np.zeros((20, 16, 12), bool)
    inside[4:13, 3:10, 2:8] = True
    np.testing.assert_array_equal(back[:, ~inside], np.array([[1.0], [0.0]]) * np.ones((1, (~inside).sum())))
    np.testing.assert_allclose(back[:, inside], np.array([[0.25], [0.75]]) * np.ones((1, inside.sum())), atol=1e-6)
    labels = invert(record, np.full((1, *record.shape), 3, np.uint8), np.zeros(1), "nearest")
    assert labels.dtype == np.uint8 and labels.shape == (1, 20, 16, 12)
    np.testing.assert_array_equal(labels[0], np.where(inside, 3, 0))


def test_min_shape_pads_at_the_end_and_inverts():
    image = np.arange(30, dtype=np.float32).reshape(1, 5, 6) + 1
    out, record = run(image, (1, 1), min_shape=(8, 4))
    assert out.spatial_shape == (8, 6)
    assert record.transforms == (Padded((5, 6), ((0, 3), (0, 0))),)
    np.testing.assert_array_equal(out.array[:, :5], image)
    assert np.all(out.array[:, 5:] == 0)
    back = invert(record, out.array * 2, np.zeros(1))
    np.testing.assert_array_equal(back, image * 2)


ROW_CHAINS = {
    "coarser": [Step("resample", {"spacing": [2.0, 1.5, 1.5]})],
    "finer": [Step("resample", {"spacing": [0.7, 1.5, 1.1]})],
    "resize down": [Step("resize", {"shape": [13, 20, 17]})],
    "resize up": [Step("resize", {"shape": [57, 20, 17]})],
    "crop, resample, pad": [Step("crop_nonzero", {"margin": 1}), Step("resample", {"spacing": [2.5, 1.0, 1.0]}),
                            Step("pad", {"shape": [30, 40, 40]})],
    "pad, crop": [Step("pad", {"shape": [50, 30, 30]}), Step("crop_nonzero", {"margin": 0})],
}


@pytest.mark.parametrize("chain", list(ROW_CHAINS))
@pytest.mark.parametrize("slab", [1, 3, 7, 41])
def test_inverting_slab_by_slab_from_the_rows_needed_gives_the_whole_inversion(chain, slab):
    """Rows of the original grid brought back from only the preprocessed rows `rows_needed`
    names, slab after slab, make what `invert` makes of the whole output (linear: up to the last
    bit of float32; nearest: exactly), the padding after the last row and the crop's fill included."""
    rng = np.random.default_rng(7)
    image = np.zeros((1, 41, 23, 19), np.float32)
    image[0, 5:33, 3:20, 2:17] = rng.random((28, 17, 15))
    _, record = run(image, (1.5, 0.8, 0.8), *ROW_CHAINS[chain], min_shape=(8, 8, 8))
    output = rng.random((3, *record.shape)).astype(np.float32)
    labels = np.argmax(output, axis=0)[np.newaxis].astype(np.uint8)
    fill = np.array([1, 0, 0], np.float32)
    for values, rule, tolerance in ((output, "linear", 1e-6), (labels, "nearest", 0)):
        pieces = []
        for first in range(0, 41, slab):
            stop = min(first + slab, 41)
            low, high = rows_needed(record, first, stop)
            pieces.append(invert_rows(record, values[:, low:high], low, first, stop, fill[:len(values)], rule))
        whole = invert(record, values, fill[:len(values)], rule)
        np.testing.assert_allclose(np.concatenate(pieces, axis=1), whole, rtol=0, atol=tolerance)


@pytest.mark.parametrize("spacings", [((1.5, 0.8, 0.8), (3.0, 1.5, 1.5)), ((1.5, 0.8, 0.8), (0.7, 1.5, 1.5)),
                                      ((1.0, 1.0, 1.0), (2.5, 2.0, 2.0))])
def test_a_large_channel_is_resampled_slab_by_slab_into_what_one_call_gives(monkeypatch, spacings):
    """Past SLAB_VOXELS ITK is given a slab of rows at a time: the same image (linear: up to the
    last bit), the same mask (nearest: exactly), with shifted origins too."""
    from runtime.preprocess import geometry

    before, after = spacings
    image = np.random.default_rng(0).random((1, 60, 30, 20)).astype(np.float32)
    shape = geometry.resampled_shape(image.shape[1:], before, after)
    origin = (0.75, 0.5, 0.5) if before == (1.0, 1.0, 1.0) else (0.0, 0.0, 0.0)
    results = []
    for voxels in (2**40, 700):
        monkeypatch.setattr(geometry, "SLAB_VOXELS", voxels)
        results.append((geometry.resample_array(image, before, shape, after, origin, False),
                        geometry.resample_array(image > 0.5, before, shape, after, origin, True)))
    (whole, whole_mask), (slabs, slab_mask) = results
    np.testing.assert_allclose(slabs, whole, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(slab_mask, whole_mask)


def test_inverting_rows_refuses_an_output_missing_rows_it_needs():
    _, record = run(np.ones((1, 20, 9, 9)), (2.0, 1.0, 1.0), Step("resample", {"spacing": [1.0, 1.0, 1.0]}))
    low, high = rows_needed(record, 5, 10)
    assert 0 < low < high < record.shape[0]
    output = np.ones((1, *record.shape), np.float32)
    with pytest.raises(ValueError, match="are needed"):
        invert_rows(record, output[:, low + 1:high], low + 1, 5, 10, np.zeros(1), "linear")


def test_invert_refuses_an_output_on_another_grid():
    _, record = run(GRID, (1, 1), Step("resample", {"spacing": [1, 0.5]}))
    with pytest.raises(ModelError, match=r"expected \(K, 2, 8\)"):
        invert(record, np.zeros((2, 2, 7), np.float32), np.zeros(2))


# --- a real scan ---------------------------------------------------------------------------------

def read_zyx(data_dir: Path, name: str) -> tuple[np.ndarray, tuple[float, ...]]:
    image = sitk.ReadImage(str(data_dir / "radiology" / name))
    return sitk.GetArrayFromImage(image), tuple(reversed(image.GetSpacing()))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


def test_real_brain_mr_round_trip(data_dir):
    image, spacing_zyx = read_zyx(data_dir, "pyradiomics_brain1_image.nrrd")
    label, _ = read_zyx(data_dir, "pyradiomics_brain1_label.nrrd")
    assert image.shape == (25, 256, 256)
    steps = [Step("resample", {"spacing": [3, 1.5, 1.5]}), Step("crop_nonzero", {}),
             Step("zscore", {"region": "nonzero"})]
    out, record = run_steps(Volume.from_array(image[None], spacing_zyx, mask=label > 0), steps)
    assert out.spacing == (3.0, 1.5, 1.5) and out.spatial_shape == record.shape
    inside = out.foreground
    assert abs(out.array[0][inside].mean()) < 1e-3 and abs(out.array[0][inside].std() - 1) < 1e-3
    one_hot = np.stack([~out.mask, out.mask]).astype(np.float32)
    nearest = invert(record, one_hot, np.array([1.0, 0.0]), "nearest")
    linear = invert(record, one_hot, np.array([1.0, 0.0]), "linear")
    assert nearest.shape == linear.shape == (2, 25, 256, 256)
    assert dice(nearest[1] > 0.5, label > 0) > 0.8
    assert dice(np.argmax(linear, axis=0) == 1, label > 0) > 0.8


def test_transfer_moves_a_label_map_exactly_as_the_image_moved():
    rng = np.random.default_rng(5)
    image = rng.random((1, 20, 24, 18)).astype(np.float32) + 1
    image[:, :3] = 0
    label = (rng.random((1, 20, 24, 18)) * 3).astype(np.int64)
    steps = (Step("crop_nonzero", {"margin": 1}), Step("resample", {"spacing": [2.0, 1.0, 1.5]}),
             Step("pad", {"shape": [12, 30, 12]}))
    volume, record = run_steps(Volume.from_array(image, (1.0, 1.0, 1.0)), steps)
    moved = transfer(record, label)
    assert moved.shape[1:] == volume.array.shape[1:] and moved.dtype == np.int64
    assert set(np.unique(moved)) <= {0, 1, 2}
    back = invert(record, moved, np.zeros(1, dtype=np.int64), "nearest")
    inside = np.zeros(label.shape[1:], bool)
    inside[3:] = True
    agree = (back[0] == label[0])[inside].mean()
    assert agree > 0.45  # nearest neighbour down-sampling by 2 in z keeps every second slice
    same_grid = transfer(run_steps(Volume.from_array(image, (1.0, 1.0, 1.0)), steps[:1])[1], label)
    np.testing.assert_array_equal(same_grid[0], label[0, 2:])
