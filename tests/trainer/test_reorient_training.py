"""Training reads a scan and its label map turned together by a first reorient step."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from tests.trainerkit import TINY_RUN, write_config
from trainer.config import load_config
from trainer.data import load_sample
from trainer.subjects import read_subjects


def test_a_scan_stored_lps_and_its_label_are_turned_to_ras_together(tmp_path, data_dir):
    ct = sitk.ReadImage(str(data_dir / "radiology" / "totalseg_example_ct_sm.nii.gz"))
    seg = sitk.ReadImage(str(data_dir / "radiology" / "totalseg_example_seg.nii.gz"))
    liver = sitk.Cast(seg == 5, sitk.sitkUInt8)
    sitk.WriteImage(sitk.DICOMOrient(ct, "LPS"), str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(sitk.DICOMOrient(liver, "LPS"), str(tmp_path / "liver.nii.gz"))
    (tmp_path / "subjects.csv").write_text("subject_id,image,label\nct,ct.nii.gz,liver.nii.gz\n")
    config = load_config(write_config(tmp_path, {**TINY_RUN, "preprocessing": [{"reorient": {"orientation": "RAS"}}]}))
    sample = load_sample(config, read_subjects(config)[0])
    np.testing.assert_array_equal(sample.image[0], sitk.GetArrayFromImage(ct).astype(np.float32))
    np.testing.assert_array_equal(sample.label, sitk.GetArrayFromImage(liver))
    assert sample.spacing == (3.0, 3.0, 3.0)
