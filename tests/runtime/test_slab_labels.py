"""Labels made a slab at a time from the preprocessed rows as they come (runtime.slab_labels)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import runtime.slab_labels as slab_labels
from runtime.manifest import ClassSpec
from runtime.postprocess import label_index
from runtime.preprocess import Cropped, Record, invert
from tests.modelkit import make_manifest


def many_classes(count: int):
    manifest = make_manifest("0" * 64)
    return dataclasses.replace(manifest, classes=tuple(ClassSpec(v, f"c{v}") for v in range(count)))


@pytest.mark.parametrize("activation", [None, "softmax"])
def test_past_256_classes_a_slab_outside_the_crop_does_not_narrow_the_label_map(monkeypatch, activation) -> None:
    """The first slab lies wholly outside the crop box (all background); class 299 inside it must
    survive as 299, not wrap around in a byte."""
    monkeypatch.setattr(slab_labels, "SLAB_BYTES", 8)
    record = Record((10, 2), (1.0, 1.0), (4, 2), (1.0, 1.0), (Cropped((10, 2), ((6, 10), (0, 2))),))
    manifest = many_classes(300)
    rows = np.zeros((300, 4, 2), np.float32)
    rows[299] = 5.0
    labels = slab_labels.SlabLabels(record, manifest, activation)
    labels.add(0, rows)
    index = labels.finish()[0]
    assert index.dtype == np.uint16
    np.testing.assert_array_equal(index[6:], 299)
    np.testing.assert_array_equal(index[:6], 0)


def test_rows_given_in_uneven_blocks_make_the_labels_of_the_whole_map(monkeypatch) -> None:
    monkeypatch.setattr(slab_labels, "SLAB_BYTES", 3 * 4 * 2 * 7)
    record = Record((30, 7), (1.0, 1.0), (20, 7), (1.0, 1.0), (Cropped((30, 7), ((4, 24), (0, 7))),))
    manifest = many_classes(3)
    raw = np.random.default_rng(2).normal(size=(3, 20, 7)).astype(np.float32)
    labels = slab_labels.SlabLabels(record, manifest, "softmax")
    for first, stop in ((0, 3), (3, 4), (4, 15), (15, 20)):
        labels.add(first, raw[:, first:stop])
    exp = np.exp(raw - raw.max(axis=0))
    whole = invert(record, exp / exp.sum(axis=0), np.array([1, 0, 0], np.float32), "linear")
    np.testing.assert_array_equal(labels.finish()[0], label_index(whole, manifest))
