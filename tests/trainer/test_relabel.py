"""data.relabel: a multi-label map (TotalSegmentator's) trained as the few classes a model is for."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from tests.trainerkit import TINY_RUN, changed, problems_of, write_config
from trainer.config import config_hash, load_config, write_resolved
from trainer.data import check_labels, load_sample
from trainer.subjects import read_subjects

CLASSES = {0: "background", 1: "liver", 2: "kidneys"}


def _ct_table(folder, data_dir) -> None:
    radiology = data_dir / "radiology"
    (folder / "subjects.csv").write_text(f"subject_id,image,label\nct,{radiology / 'totalseg_example_ct_sm.nii.gz'},"
                                         f"{radiology / 'totalseg_example_seg.nii.gz'}\n")


def test_listed_values_become_their_classes_and_every_other_value_the_background(tmp_path, data_dir):
    _ct_table(tmp_path, data_dir)
    data = changed(TINY_RUN, data__classes=CLASSES, data__relabel={5: 1, 2: 2, 3: 2}, preprocessing=[])
    config = load_config(write_config(tmp_path, data))
    sample = load_sample(config, read_subjects(config)[0])
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "radiology" / "totalseg_example_seg.nii.gz")))
    expected = np.select([truth == 5, np.isin(truth, (2, 3))], [1, 2], 0)
    np.testing.assert_array_equal(sample.label, expected)
    assert (sample.label == 1).sum() > 1000 and (sample.label == 2).sum() > 100
    check_labels(config, read_subjects(config), lambda line: None)       # every value is a class once relabelled
    said: list[str] = []
    stray = load_config(write_config(tmp_path, {**data, "data": {**data["data"], "relabel": {5: 1, 2: 2, 999: 2}}},
                                     "stray.yaml"))
    check_labels(stray, read_subjects(stray), said.append)
    assert said[-1] == "warning: data.relabel maps value(s) [999] that no label map holds; check the values"
    write_resolved(config, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again.data.relabel == {5: 1, 2: 2, 3: 2} and config_hash(again) == config_hash(config)
    plain = load_config(write_config(tmp_path, changed(TINY_RUN, preprocessing=[]), "plain.yaml"))
    assert plain.data.relabel is None and "relabel" not in write_resolved(plain, tmp_path / "plain_resolved.yaml").read_text()


@pytest.mark.parametrize("relabel, task, expected", [
    ({5: 3}, "segmentation", "data.relabel: maps to values that are no class of data.classes (0, 1, 2): {5: 3}"),
    ({"liver": 1}, "segmentation", "data.relabel: must map label map values (integers from 0 to 65535) to class values"),
    ({}, "segmentation", "data.relabel: must map label map values"),
    ({10 ** 30: 1, 2: 2}, "segmentation", "data.relabel: must map label map values (integers from 0 to 65535)"),
    ({5: 1}, "classification", "data.relabel: maps the values of segmentation label maps; this model's task is "
                               "classification"),
    ({5: 1}, "segmentation", "data.relabel: reaches no value of class(es) kidneys, which would never be trained"),
    ({0: 1, 2: 2}, "segmentation", "data.relabel: maps 0, the background of every label map, to class 1"),
])
def test_a_wrong_relabel_is_refused_naming_it(tmp_path, relabel, task, expected):
    data = changed(TINY_RUN, task=task, data__classes=CLASSES, data__relabel=relabel)
    found = problems_of(tmp_path, data)
    assert any(problem.startswith(expected) for problem in found), found
