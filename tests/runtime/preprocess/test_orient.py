"""Reorientation: a scan turned to a model's orientation (SimpleITK's decision, numpy views), and back."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import SimpleITK as sitk
from onnx import TensorProto, helper, numpy_helper

from runtime.io import read_scan
from runtime.predict import load_model, predict_scan
from runtime.preprocess.orient import Reorientation, orientation_problem
from runtime.validation import Problems
from runtime.contract import parse_steps
from tests.modelkit import make_model

REAL = ["radiology/pyradiomics_brain1_image.nrrd", "radiology/totalseg_example_ct_sm.nii.gz", "dicom/totalseg_ct_series"]


def _image(data_dir: Path, name: str) -> sitk.Image:
    path = data_dir / name
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        return reader.Execute()
    return sitk.ReadImage(str(path))


@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize("code", ["RAS", "LPS", "PIR"])
def test_turning_real_scans_gives_what_dicomorient_gives_and_turns_back_exactly(data_dir, name, code):
    for image in (_image(data_dir, name), sitk.PermuteAxes(_image(data_dir, name), [2, 0, 1])):
        turn = Reorientation.of(image.GetDirection(), code)
        expected = sitk.DICOMOrient(image, code)
        array = sitk.GetArrayFromImage(image)
        stacked = np.stack([array, array * 2])                        # channels lead
        turned = turn.apply(stacked)
        np.testing.assert_array_equal(turned[0], sitk.GetArrayFromImage(expected))
        np.testing.assert_array_equal(turned[1], sitk.GetArrayFromImage(expected) * 2)
        assert turn.spacing(tuple(reversed(image.GetSpacing()))) == pytest.approx(tuple(reversed(expected.GetSpacing())))
        np.testing.assert_array_equal(turn.undo(turned), stacked)


@pytest.mark.parametrize("value,ok", [("RAS", True), ("LPS", True), ("ASR", True), ("RAX", False), ("RRS", False),
                                      ("ras", False), ("RA", False), (3, False)])
def test_orientation_codes_are_three_capitals_one_of_each_pair(value, ok):
    assert (orientation_problem(value) is None) == ok


def test_reorient_must_come_first_and_only_for_3d():
    problems = Problems("config")
    parse_steps([{"zscore": {"region": "nonzero"}}, {"reorient": {"orientation": "RAS"}}], 3, 1, "preprocessing",
                problems, channels_from="data.channels")
    assert any("reorient must be the first step" in p for p in problems.items)
    flat = Problems("config")
    parse_steps([{"reorient": {"orientation": "RAS"}}], 2, 1, "preprocessing", flat, channels_from="data.channels")
    assert any("a 2D model cannot take it" in p for p in flat.items)


def x_gradient() -> onnx.ModelProto:
    """Two channels: 0, and the difference of the next and previous voxel along the array's last
    axis (x): class 1 where intensity rises along x. Turning the scan in x flips its answer."""
    weight = np.zeros((2, 1, 1, 1, 3), np.float32)
    weight[1, 0, 0, 0] = [-1.0, 0.0, 1.0]
    node = helper.make_node("Conv", ["input", "weight"], ["output"], kernel_shape=[1, 1, 3], pads=[0, 0, 1, 0, 0, 1])
    value = helper.make_tensor_value_info
    graph = helper.make_graph([node], "x_gradient", [value("input", TensorProto.FLOAT, ["b", 1, "z", "y", "x"])],
                              [value("output", TensorProto.FLOAT, ["b", 2, "z", "y", "x"])],
                              [numpy_helper.from_array(weight, "weight")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("reorient", [True, False])
def test_a_model_that_reorients_gives_one_answer_whatever_order_the_scan_is_stored_in(tmp_path, data_dir, reorient):
    """The real CT stored RAS and the same CT stored LPS (x and y reversed on disk, the same anatomy):
    with a reorient step the two label maps, each on its own grid, are one map in space; without it
    an x-sensitive model answers differently."""
    ct = sitk.ReadImage(str(data_dir / "radiology" / "totalseg_example_ct_sm.nii.gz"))
    sitk.WriteImage(ct, str(tmp_path / "ras.nii.gz"))
    sitk.WriteImage(sitk.DICOMOrient(ct, "LPS"), str(tmp_path / "lps.nii.gz"))
    steps = [{"name": "reorient", "params": {"orientation": "RAS"}}] if reorient else []
    model = load_model(make_model(tmp_path / "repo", x_gradient(), channels=["ct"], preprocessing=steps,
                                  window={"mode": "sliding", "patch_size": [16, 32, 32], "overlap": 0.25,
                                          "blending": "gaussian", "batch_size": 4, "mirror_axes": [],
                                          "skip_background": False}), device="cpu")
    labels = {}
    for name in ("ras", "lps"):
        scan = read_scan([tmp_path / f"{name}.nii.gz"])
        image = sitk.GetImageFromArray(predict_scan(model, scan, probabilities=False).labels_zyx)
        image.CopyInformation(scan.reference)
        labels[name] = sitk.GetArrayFromImage(sitk.DICOMOrient(image, "RAS"))
    assert 0.05 < labels["ras"].mean() < 0.95
    assert np.array_equal(labels["ras"], labels["lps"]) == reorient
