"""Segmentation and classification metrics against cases worked by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from runtime import metrics


def squares() -> tuple[np.ndarray, np.ndarray]:
    """One slice of 10 x 10: a 4 x 4 square predicted one voxel to the right of the reference's.
    By hand: TP 12, FP 4, FN 4, TN 80; every voxel of a one-slice mask is on its surface."""
    prediction, reference = np.zeros((1, 10, 10), np.uint8), np.zeros((1, 10, 10), np.uint8)
    prediction[0, 2:6, 3:7] = 1
    reference[0, 2:6, 2:6] = 1
    return prediction, reference


def test_overlap_scores_by_hand():
    scores = metrics.overlap_scores(*squares(), 1)
    assert scores == pytest.approx({"dice": 24 / 32, "iou": 12 / 20, "sensitivity": 12 / 16,
                                    "specificity": 80 / 84, "precision": 12 / 16})


def test_surface_scores_by_hand_in_millimetres():
    """12 of each square's 16 surface voxels lie on the other's surface; 4 lie one column away:
    1 mm at 1 mm spacing, 2 mm at 2 mm (past NSD's 1 mm tolerance)."""
    assert metrics.surface_scores(*squares(), 1, (1.0, 1.0, 1.0)) == pytest.approx({"hd95": 1.0, "nsd": 1.0})
    assert metrics.surface_scores(*squares(), 1, (1.0, 2.0, 2.0)) == pytest.approx({"hd95": 2.0, "nsd": 24 / 32})
    assert metrics.surface_scores(*squares(), 1, (1.0, 2.0, 2.0), tolerance_mm=2.0)["nsd"] == 1.0


def test_two_single_voxels_three_slices_apart_at_two_millimetres():
    prediction, reference = np.zeros((5, 3, 3), np.uint8), np.zeros((5, 3, 3), np.uint8)
    prediction[0, 1, 1] = reference[3, 1, 1] = 2
    scores = metrics.segmentation_scores(prediction, reference, 2, (2.0, 0.7, 0.7))
    assert scores["hd95"] == pytest.approx(6.0) and scores["nsd"] == 0.0 and scores["dice"] == 0.0


def test_a_small_structure_in_a_large_grid_scores_as_on_its_own_crop():
    prediction, reference = squares()
    big_p, big_r = np.zeros((40, 300, 300), np.uint8), np.zeros((40, 300, 300), np.uint8)
    big_p[20:21, 100:110, 200:210], big_r[20:21, 100:110, 200:210] = prediction[0], reference[0]
    big = metrics.surface_scores(big_p, big_r, 1, (1.0, 2.0, 2.0))
    assert big == pytest.approx({"hd95": 2.0, "nsd": 0.75})


def test_empty_masks_score_as_defined_and_undefined_ratios_are_nan():
    empty = np.zeros((3, 4, 4), np.uint8)
    one = empty.copy()
    one[1, 1, 1] = 1
    both_empty = metrics.segmentation_scores(empty, empty, 1, (1.0, 1.0, 1.0))
    assert both_empty["dice"] == both_empty["iou"] == both_empty["nsd"] == 1.0 and both_empty["hd95"] == 0.0
    assert math.isnan(both_empty["sensitivity"]) and math.isnan(both_empty["precision"])
    missed = metrics.segmentation_scores(empty, one, 1, (1.0, 1.0, 1.0))
    assert missed["sensitivity"] == 0.0 and math.isnan(missed["precision"])
    assert math.isnan(missed["hd95"]) and missed["nsd"] == 0.0


def test_per_class_precision_recall_f1_and_the_confusion_matrix_by_hand():
    truth = [0, 0, 0, 1, 1, 2]
    predicted = [0, 1, 0, 1, 2, 2]
    scores = metrics.per_class(predicted, truth, [0, 1, 2])
    assert scores[0] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8})
    assert scores[1] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5})
    assert scores[2] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3})
    np.testing.assert_array_equal(metrics.confusion(predicted, truth, [0, 1, 2]),
                                  [[2, 1, 0], [0, 1, 1], [0, 0, 1]])


def test_mean_std_leaves_undefined_values_out():
    assert metrics.mean_std([1.0, math.nan, 3.0]) == (2.0, math.sqrt(2.0))      # the sample deviation
    assert all(math.isnan(v) for v in metrics.mean_std([math.nan]))
    mean, std = metrics.mean_std([0.7])
    assert mean == 0.7 and math.isnan(std)                                        # none of one value


def test_a_map_one_voxel_thick_is_scored_as_the_image_of_its_other_axes():
    """A slice stored as a (1, y, x) volume scores as the 2D image a 2D model segments (only the
    square's rim is its surface), not as a slab whose faces are all surface."""
    prediction, reference = np.zeros((1, 12, 12), np.uint8), np.zeros((1, 12, 12), np.uint8)
    reference[0, 1:11, 1:11], prediction[0, 5:7, 5:7] = 1, 1          # a 10 x 10 square, a 2 x 2 one in its middle
    flat = metrics.class_scores(prediction, reference, [(1, "a")], (3.0, 1.0, 1.0))
    image = metrics.class_scores(prediction[0], reference[0], [(1, "a")], (1.0, 1.0))
    assert flat == image
    slab = metrics.surface_scores(prediction, reference, 1, (3.0, 1.0, 1.0))       # every voxel on the surface
    assert image["hd95_a"] == pytest.approx(math.hypot(4, 4)) and slab["hd95"] < image["hd95_a"]


@pytest.mark.filterwarnings("ignore::FutureWarning")          # MONAI 1.5+ on its own deprecated argument
@pytest.mark.parametrize("shape, spacing", [((24, 30, 28), (2.5, 0.8, 0.7)), ((40, 36), (0.5, 1.5))])
def test_hd95_and_nsd_are_monais_on_irregular_shapes(shape, spacing):
    """Irregular blobs (smoothed noise), whose surfaces a face and a full erosion find differently:
    the same figures as MONAI's compute_hausdorff_distance and compute_surface_dice."""
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice
    from scipy import ndimage

    rng = np.random.default_rng(7)
    blobs = [ndimage.gaussian_filter(rng.normal(size=shape), 2.0) > 0.05 for _ in range(2)]
    prediction, reference = (blob.astype(np.uint8) for blob in blobs)
    ours = metrics.surface_scores(prediction, reference, 1, spacing, tolerance_mm=1.0)

    def one_hot(mask: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([mask == 0, mask == 1])[None].astype(np.float32))

    hd95 = compute_hausdorff_distance(one_hot(prediction), one_hot(reference), percentile=95, spacing=list(spacing))
    nsd = compute_surface_dice(one_hot(prediction), one_hot(reference), class_thresholds=[1.0], spacing=list(spacing))
    assert ours["hd95"] == pytest.approx(float(hd95[0, 0]), rel=1e-5)
    assert ours["nsd"] == pytest.approx(float(nsd[0, 0]), rel=1e-5)
    full = ndimage.generate_binary_structure(len(shape), len(shape))
    assert not np.array_equal(ndimage.binary_erosion(blobs[0]), ndimage.binary_erosion(blobs[0], full))
