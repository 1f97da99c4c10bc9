"""A 2D model's subjects stored as volumes one slice thick (a NIfTI of one slice) are read as the
2D images they are, in the model's axis order, as the runtime runs a 2D model over a volume."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from trainer.config import load_config
from trainer.data import load_sample
from trainer.subjects import read_subjects


@pytest.mark.parametrize("axis_order", ["yx", "xy"])
def test_a_volume_one_slice_thick_is_a_2d_subject_in_the_models_axis_order(tmp_path, axis_order):
    values = np.arange(60, dtype=np.float32).reshape(1, 6, 10)           # value = 10 y + x
    (tmp_path / "table").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(values), str(tmp_path / "table" / "s.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray((values > 30).astype(np.uint8)), str(tmp_path / "table" / "l.nii.gz"))
    (tmp_path / "table" / "subjects.csv").write_text("subject_id,t1,label\na,s.nii.gz,l.nii.gz\n")
    data = {"name": "flat", "task": "segmentation", "modality": "radiology", "dimensions": 2, "axis_order": axis_order,
            "data": {"csv": "table/subjects.csv", "channels": ["t1"], "label": "label",
                     "classes": {0: "background", 1: "bright"}},
            "patch": {"size": [32, 32]}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    config = load_config(tmp_path / "config.yaml")
    sample = load_sample(config, read_subjects(config)[0])
    expected = values[0] if axis_order == "yx" else values[0].T
    assert sample.image.shape == (1, 32, 32) and sample.label.shape == (32, 32)
    np.testing.assert_array_equal(sample.image[0, :expected.shape[0], :expected.shape[1]], expected)
    np.testing.assert_array_equal(sample.label[:expected.shape[0], :expected.shape[1]], expected > 30)
