"""Sizing a prediction before it runs: the planned grid is the one preprocessing makes, and the
memory estimate bounds what the job really uses."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.manifest import Step, parse_manifest
from runtime.preprocess import Volume, planned_shape, run_steps
from runtime.sizing import MAX_ENLARGEMENT, job_size
from tests.modelkit import blob_volume, manifest_dict

STEP_LISTS = [
    [],
    [Step("resample", {"spacing": [2.0, 1.5, 0.7]})],
    [Step("resize", {"shape": [9, 30, 17]})],
    [Step("pad", {"shape": [30, 10, 50], "value": 0})],
    [Step("resample", {"spacing": [3.0, 3.0, 3.0]}), Step("pad", {"shape": [12, 12, 12], "value": 0})],
    [Step("crop_nonzero", {"margin": 0}), Step("resample", {"spacing": [1.0, 2.0, 2.0]})],
]


@pytest.mark.parametrize("steps", STEP_LISTS)
@pytest.mark.parametrize("min_shape", [None, (16, 32, 32)])
def test_the_planned_grid_is_the_grid_preprocessing_makes(steps, min_shape):
    array = blob_volume((20, 40, 36))[np.newaxis]
    spacing = (2.5, 1.1, 0.9)
    volume, _ = run_steps(Volume.from_array(array, spacing), steps, min_shape=min_shape)
    planned = planned_shape(steps, array.shape[1:], spacing, min_shape)
    if any(step.name == "crop_nonzero" for step in steps):
        assert all(p >= n for p, n in zip(planned, volume.spatial_shape))
    else:
        assert planned == volume.spatial_shape


def _manifest(spacing: list[float]) -> object:
    return parse_manifest(manifest_dict(preprocessing=[{"name": "resample", "params": {"spacing": spacing}}],
                                        files={"model.onnx": "0" * 64}))


def test_the_estimate_grows_with_the_grid_and_the_outputs():
    manifest = _manifest([1.0, 1.0, 1.0])
    labels = job_size(manifest, (50, 60, 70), (1.0, 1.0, 1.0), 1, probabilities=False)
    probabilities = job_size(manifest, (50, 60, 70), (1.0, 1.0, 1.0), 1, probabilities=True)
    finer = job_size(manifest, (50, 60, 70), (2.0, 2.0, 2.0), 1, probabilities=False)
    assert labels.planned == (50, 60, 70) and finer.planned == (100, 120, 140)
    assert labels.nbytes < probabilities.nbytes and labels.nbytes < finer.nbytes
    assert MAX_ENLARGEMENT == 64


def test_a_2d_model_on_a_volume_is_sized_on_its_axial_slices_in_the_model_s_order():
    """A 2D model reading (x, y) runs over a volume's z slices: 7 images of 33 x 40 (x, y), not 33
    images of the (y, z) planes."""
    for axis_order, expected in (("xy", (33, 40)), ("yx", (40, 33))):
        manifest = parse_manifest(manifest_dict(dimensions=2, axis_order=axis_order, files={"model.onnx": "0" * 64},
                                                window={**manifest_dict()["window"], "patch_size": [16, 16]}))
        size = job_size(manifest, (7, 40, 33), (3.0, 1.0, 0.5), 1, probabilities=False)
        assert (size.shape, size.images) == (expected, 7)
