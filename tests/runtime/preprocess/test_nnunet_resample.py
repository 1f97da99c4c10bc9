"""`resample: {method: nnunet}` against nnU-Net v2's own resampling functions, on real scans: the
image as nnU-Net preprocesses it, the outputs as nnU-Net brings them back, and the labels
`runtime predict` writes against nnU-Net's for the same per-voxel model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.preprocessing.resampling.default_resampling import (
    resample_data_or_seg_to_shape, resample_data_or_seg_to_spacing,
)
from onnx import TensorProto, helper, numpy_helper

from runtime.manifest import Step
from runtime.preprocess import (Volume, check_step, invert, invert_rows, planned_shape, rows_needed,
                                run_steps)
from runtime.preprocess import nnunet_resample
from tests.exportkit import base_spec, build, save_graph, write_spec

# (file, target spacing z, y, x): an MR of 6.5 mm slices (its slices resampled apart, nearest along
# z) and a CT of 3 mm voxels made finer along every axis together (a cubic spline in 3D).
SCANS = [("radiology/pyradiomics_brain1_image.nrrd", (3.0, 1.0, 1.0)),
         ("radiology/totalseg_example_ct_sm.nii.gz", (2.0, 1.5, 1.5))]


def read_zyx(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image).astype(np.float32), tuple(reversed(image.GetSpacing()))


def nnunet_forward(array: np.ndarray, spacing: tuple[float, ...], target: tuple[float, ...]) -> np.ndarray:
    return resample_data_or_seg_to_spacing(array[None], spacing, target, is_seg=False, order=3, order_z=0,
                                           force_separate_z=None)


def nnunet_back(output: np.ndarray, shape: tuple[int, ...], spacing: tuple[float, ...],
                target: tuple[float, ...]) -> np.ndarray:
    return resample_data_or_seg_to_shape(output, shape, target, spacing, is_seg=False, order=1, order_z=0,
                                         force_separate_z=None)


@pytest.mark.parametrize("name,target", SCANS)
def test_the_image_and_the_outputs_move_as_nnunet_moves_them(data_dir: Path, name: str,
                                                               target: tuple[float, ...]) -> None:
    array, spacing = read_zyx(data_dir / name)
    volume, record = run_steps(Volume.from_array(array[None], spacing),
                               [Step("resample", {"spacing": list(target), "method": "nnunet"})])
    expected = nnunet_forward(array, spacing, target)
    assert volume.array.shape == expected.shape
    assert np.abs(volume.array - expected).max() <= 1e-6 * np.abs(expected).max()

    logits = np.stack([expected[0] / 100.0, -expected[0] / 50.0])
    back = invert(record, logits, np.zeros(2, np.float32), "linear")
    reference = nnunet_back(logits, array.shape, spacing, target)
    assert back.shape == reference.shape
    assert np.abs(back - reference).max() <= 1e-5 * np.abs(reference).max()

    rows = []
    for first in range(0, array.shape[0], 4):
        stop = min(first + 4, array.shape[0])
        low, high = rows_needed(record, first, stop)
        rows.append(invert_rows(record, logits[:, low:high], low, first, stop, np.zeros(2, np.float32)))
    assert np.abs(np.concatenate(rows, axis=1) - back).max() <= 1e-5 * np.abs(back).max()


def test_a_large_channel_resampled_a_slab_at_a_time_matches_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    array = rng.normal(size=(1, 30, 41, 37)).astype(np.float32) * 100
    spacing, target = (1.2, 0.9, 1.1), (1.0, 1.5, 0.8)
    expected = nnunet_forward(array[0], spacing, target)
    monkeypatch.setattr(nnunet_resample, "SLAB_VOXELS", 5000)
    volume, _ = run_steps(Volume.from_array(array, spacing),
                          [Step("resample", {"spacing": list(target), "method": "nnunet"})])
    assert np.abs(volume.array - expected).max() <= 1e-6 * np.abs(expected).max()


def test_the_anisotropic_axis_is_found_in_any_axis_order() -> None:
    rng = np.random.default_rng(4)
    array = rng.normal(size=(32, 12, 30)).astype(np.float32)
    spacing, target = (0.8, 5.0, 0.8), (1.0, 2.5, 1.0)
    assert nnunet_resample.coarse_axis(spacing, target) == 1
    volume, _ = run_steps(Volume.from_array(array[None], spacing),
                          [Step("resample", {"spacing": list(target), "method": "nnunet"})])
    assert np.abs(volume.array - nnunet_forward(array, spacing, target)).max() <= 1e-6


def test_a_null_spacing_keeps_the_scans_spacing_along_its_axis_as_nnunets_2d_preprocessing_does() -> None:
    """nnU-Net's 2d configuration resamples each slice in its plane and leaves the slices as they are."""
    rng = np.random.default_rng(3)
    array = rng.normal(size=(7, 40, 30)).astype(np.float32)
    spacing, steps = (6.5, 0.7, 0.9), [Step("resample", {"spacing": [None, 1.0, 1.2], "method": "nnunet"})]
    volume, _ = run_steps(Volume.from_array(array[None], spacing), steps)
    assert volume.spacing == (6.5, 1.0, 1.2) and volume.spatial_shape == planned_shape(steps, array.shape, spacing)
    assert np.abs(volume.array - nnunet_forward(array, spacing, (6.5, 1.0, 1.2))).max() <= 1e-6
    assert check_step("resample", {"spacing": [None, None, None]}) == [
        "spacing: must be 2 or 3 positive numbers (one per spatial axis; null keeps the scan's spacing along an axis), "
        "got [None, None, None]"]
    assert check_step("resample", {"spacing": [None, 0.00001, 1]}) == [
        "spacing: must be numbers from 0.0001 to 10000 (mm), got [None, 1e-05, 1]"]


def test_method_is_checked() -> None:
    assert check_step("resample", {"spacing": [1, 1, 1], "method": "cubic"}) == [
        "method: must be one of linear, nnunet, got 'cubic'"]
    assert check_step("resample", {"spacing": [1, 1, 1], "method": "nnunet"}) == []


def voxel_logits_graph() -> object:
    """Per-voxel logits of three classes from one channel: 0, 2x - 1 and -2x - 1."""
    weight = np.array([0.0, 2.0, -2.0], np.float32).reshape(3, 1, 1, 1, 1)
    bias = np.array([0.0, -1.0, -1.0], np.float32)
    node = helper.make_node("Conv", ["input", "weight", "bias"], ["output"], kernel_shape=[1, 1, 1])
    graph = helper.make_graph(
        [node], "voxel_logits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 1, "z", "y", "x"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 3, "z", "y", "x"])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_runtime_predict_gives_nnunets_labels(data_dir: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from runtime.commands.cli import main

    path = data_dir / "radiology/pyradiomics_brain1_image.nrrd"
    array, spacing = read_zyx(path)
    mean, std, target = 300.0, 150.0, (3.0, 1.0, 1.0)
    spec = base_spec(classes={0: "background", 1: "bright", 2: "dark"},
                     preprocessing=[{"normalize": {"mean": [mean], "std": [std]}},
                                    {"resample": {"spacing": list(target), "method": "nnunet"}}],
                     patch={"size": [16, 64, 64]}, window={"skip_background": False},
                     output={"activation": "none", "label_rule": "argmax"})
    result = build(save_graph(tmp_path, voxel_logits_graph()), write_spec(tmp_path, spec), tmp_path / "repo")
    assert result.exit_code == 0, result.output
    out = tmp_path / "labels.nii.gz"
    result = CliRunner().invoke(main, ["predict", str(path), "--model", str(tmp_path / "repo" / "bright"),
                                       "--output", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output

    image = nnunet_forward((array - mean) / std, spacing, target)[0]
    logits = np.stack([np.zeros_like(image), 2 * image - 1, -2 * image - 1])
    expected = nnunet_back(logits, array.shape, spacing, target).argmax(axis=0)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert set(np.unique(expected)) == {0, 1, 2}
    assert np.mean(labels == expected) >= 0.9999
