"""The picture of each subject a fold scores: its truth and its prediction over its image."""
from __future__ import annotations

import numpy as np

from runtime.slide.outputs import default_colors
from trainer.pictures import ALPHA, GAP, MAX_SIDE, MIN_WIDTH, file_name, picture, picture_slice, write_pictures


def test_the_slice_holding_most_truth_is_drawn_with_the_truth_left_and_the_prediction_right(tmp_path):
    image = np.random.default_rng(0).normal(size=(1, 9, 40, 50)).astype(np.float32)
    label = np.zeros((9, 40, 50), np.int64)
    label[3, 5:10, 5:10] = 1                              # a small finding on slice 3
    label[6, 10:30, 10:30] = 2                            # the most truth: slice 6
    label[6, 0:2, :] = -1                                 # unannotated voxels: no class drawn
    probabilities = np.zeros((3, 9, 40, 50), np.float32)
    probabilities[0] = 1.0
    probabilities[1, 6, 20:35, 30:45] = 2.0               # predicted elsewhere, as another class
    drawn = picture(picture_slice(image, label, probabilities), 3)
    scale = -(-MIN_WIDTH // (2 * 50 + GAP))
    assert drawn.shape == (40 * scale, (2 * 50 + GAP) * scale, 3) and drawn.dtype == np.uint8
    small = drawn[::scale, ::scale]
    left, right = small[:, :50], small[:, 50 + GAP:]
    colors = default_colors(3)
    background = np.zeros_like(probabilities)
    background[0] = 1.0
    grey = picture(picture_slice(image[:, 6], np.zeros((40, 50), np.int64), background[:, 6]), 3)
    grey = grey[::scale, ::scale][:, :50].astype(float)

    def blended(color: tuple[int, int, int]) -> np.ndarray:
        return np.rint((1 - ALPHA) * grey + ALPHA * np.asarray(color, float))

    truth, found = (slice(12, 28), slice(12, 28)), (slice(22, 33), slice(32, 43))      # inside their outlines
    assert np.abs(left[truth] - blended(colors[2])[truth]).max() <= 1
    assert np.array_equal(left[found][:, 4:], grey[found][:, 4:])        # no truth right of column 35
    assert np.abs(right[found] - blended(colors[1])[found]).max() <= 1
    assert np.array_equal(right[truth][:8, :8], grey[truth][:8, :8])     # no prediction at rows 12-19, columns 12-19
    assert np.array_equal(left[0:2], grey[0:2])                          # unannotated voxels: grey
    assert (small[:, 50:50 + GAP] == 255).all()
    flat = picture_slice(image[:, 0], label[6], probabilities[:, 6])    # a 2D image whole
    assert picture(flat, 3).shape == drawn.shape
    write_pictures(tmp_path, [("case/1", flat), ("case_2", flat)], 3)
    write_pictures(tmp_path, [("case_2", flat)], 3)                     # a later best epoch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_2.png"]


def test_a_large_slice_is_kept_small_and_a_model_of_many_classes_is_drawn():
    """A 2000-pixel image is kept at most MAX_SIDE a side until drawn; 300 classes, past the
    overlay's distinct colours, repeat them."""
    image = np.zeros((1, 2000, 1500), np.float32)
    label = np.zeros((2000, 1500), np.int64)
    label[:1000] = 299
    last = np.zeros(300, np.float32)
    last[299] = 1.0
    probabilities = np.broadcast_to(last[:, None, None], (300, 2000, 1500))         # class 299 everywhere
    kept = picture_slice(image, label, probabilities)
    assert max(kept.grey.shape) <= MAX_SIDE and kept.truth.dtype == np.uint16 and int(kept.predicted.max()) == 299
    assert picture(kept, 300).shape[0] == kept.grey.shape[0]


def test_an_id_that_is_no_file_name_is_made_one_that_no_other_id_shares():
    assert file_name("patient-07") == "patient-07"
    assert file_name("a/b") != file_name("a_b") and "/" not in file_name("a/b")
    assert not file_name("../x").startswith(".")
