"""End-to-end prediction with real ONNX models: invariants of the whole path, real scans, all tasks."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from export import graphs
from runtime.backends import openvino_available
from runtime.backends.execution import run_plan
from runtime.commands.cli import main
from runtime.errors import InputError, ModelError
from runtime.io import read_scan
import runtime.slab_labels as slab_labels
from runtime.predict import load_model, predict_scan
from runtime.window.grid import window_grid
from tests.conftest import missing
from tests.modelkit import blob_volume, make_model, manifest_dict, nearly_flat, run_failing, window, write_scan

IDENTITY_CLASSES = [{"value": 0, "name": "a"}, {"value": 1, "name": "b"}]
PASS_THROUGH = {"activation": "none", "label_rule": "argmax", "threshold": 0.5, "ensemble": "mean"}


def _two_channel_scan(tmp_path: Path) -> list[Path]:
    first = blob_volume((19, 37, 29), seed=1)
    second = np.flip(blob_volume((19, 37, 29), seed=2), axis=2).copy()
    spacing, direction = (0.8, 0.9, 2.5), (0, 1, 0, 1, 0, 0, 0, 0, -1)
    return [write_scan(tmp_path / f"c{i}.nii.gz", a, spacing, direction) for i, a in enumerate((first, second))]


# onnxruntime takes gathered batches; OpenVINO cuts the windows in its graph, several in flight
DEVICES = ["cpu", pytest.param("openvino", marks=pytest.mark.skipif(
    not openvino_available(), reason="the OpenVINO backend is an optional extra"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("overlap", [0.0, 0.3, 0.5, 0.75])
@pytest.mark.parametrize("blending", ["gaussian", "constant"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_identity_model_reproduces_its_preprocessed_input(tmp_path, overlap, blending, batch_size, device):
    paths = _two_channel_scan(tmp_path)
    model_dir = make_model(
        tmp_path / "repo", graphs.identity(2, 3), channels=["c0", "c1"], classes=IDENTITY_CLASSES,
        output=PASS_THROUGH, preprocessing=[{"name": "zscore", "params": {"region": "whole"}}],
        window=window(overlap=overlap, blending=blending, batch_size=batch_size, patch_size=[8, 16, 12]),
    )
    scan = read_scan(paths)
    prediction = predict_scan(load_model(model_dir, device=device), scan)
    expected = (scan.array_zyx - scan.array_zyx.mean(axis=(1, 2, 3), keepdims=True)) / scan.array_zyx.std(
        axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(prediction.probabilities_zyx, expected, atol=2e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("axis_order", ["zyx", "xyz"])
def test_identity_with_mirroring_and_axis_order_is_exact(tmp_path, axis_order, device):
    array = blob_volume((12, 30, 22))
    path = write_scan(tmp_path / "scan.nrrd", array, (1.0, 1.2, 3.0))
    patch = [10, 16, 16] if axis_order == "zyx" else [16, 16, 10]
    model_dir = make_model(
        tmp_path / "repo", graphs.identity(2, 3), channels=["a", "b"], classes=IDENTITY_CLASSES,
        output=PASS_THROUGH, window=window(patch_size=patch, mirror_axes=[0, 1, 2]), axis_order=axis_order,
    )
    scan = read_scan([path, path])
    prediction = predict_scan(load_model(model_dir, device=device), scan)
    np.testing.assert_allclose(prediction.probabilities_zyx[0], array, rtol=1e-6, atol=1e-4)


def test_openvino_compiles_its_window_cutting_graph_when_the_model_loads(tmp_path, caplog):
    """The first image does not wait for it: loading compiles the graph for the manifest's batch,
    and an odd last batch is filled up instead of needing a graph of its own."""
    if not openvino_available():
        missing("OpenVINO is not installed: pip install '.[openvino]' (the dev extra has it)")
    path = write_scan(tmp_path / "scan.nii.gz", blob_volume((16, 24, 24)))
    model_dir = make_model(tmp_path / "repo", graphs.scaled(2, 3, 0.5), channels=["a", "b"],
                           classes=IDENTITY_CLASSES, output=PASS_THROUGH,
                           window=window(patch_size=[8, 16, 16], batch_size=5))
    caplog.set_level(logging.INFO, logger="runtime.backends.openvino_backend")
    model = load_model(model_dir, device="openvino")
    compiled = [r.getMessage() for r in caplog.records if "window-cutting graph" in r.getMessage()]
    assert len(compiled) == 1 and "(5, 2, 8, 16, 16)" in compiled[0]
    caplog.clear()
    scan = read_scan([path, path])
    prediction = predict_scan(model, scan)
    assert len(window_grid((16, 24, 24), (8, 16, 16), 0.5)) % 5 == 2  # a last batch of two
    assert not [r for r in caplog.records if "window-cutting graph" in r.getMessage()]
    np.testing.assert_allclose(prediction.probabilities_zyx, 0.5 * scan.array_zyx, rtol=1e-5, atol=1e-4)


def test_openvino_gathers_when_its_cutting_graph_does_not_compile(tmp_path, monkeypatch):
    if not openvino_available():
        missing("OpenVINO is not installed: pip install '.[openvino]' (the dev extra has it)")
    from runtime.backends import openvino_backend

    def broken(graph, key):
        raise RuntimeError("no Slice here")

    monkeypatch.setattr(openvino_backend, "_cutting_graph", broken)
    path = write_scan(tmp_path / "scan.nii.gz", blob_volume((16, 24, 24)))
    model_dir = make_model(tmp_path / "repo", graphs.scaled(2, 3, 0.5), channels=["a", "b"],
                           classes=IDENTITY_CLASSES, output=PASS_THROUGH,
                           window=window(patch_size=[8, 16, 16], mirror_axes=[1]))
    scan = read_scan([path, path])
    prediction = predict_scan(load_model(model_dir, device="openvino"), scan)
    np.testing.assert_allclose(prediction.probabilities_zyx, 0.5 * scan.array_zyx, rtol=1e-5, atol=1e-4)


def _brain_model(tmp_path: Path) -> Path:
    return make_model(
        tmp_path / "repo", graphs.bright_structures(3),
        preprocessing=[{"name": "resample", "params": {"spacing": [3.0, 1.5, 1.5]}},
                       {"name": "crop_nonzero", "params": {"margin": 2}},
                       {"name": "zscore", "params": {"region": "nonzero"}}],
        window=window(patch_size=[8, 48, 48], skip_background=True),
    )


def test_real_scan_comes_back_on_exactly_its_own_grid(tmp_path, data_dir):
    """Brain MR: direction diag(1,-1,1), 0.78 x 0.78 x 6.5 mm, resampled, cropped and back."""
    source = data_dir / "radiology" / "pyradiomics_brain1_image.nrrd"
    out, probs = tmp_path / "mask.nii.gz", tmp_path / "probs.nii.gz"
    result = CliRunner().invoke(main, ["predict", str(source), "--model", str(_brain_model(tmp_path)),
                                       "--output", str(out), "--probabilities", str(probs), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    original, mask = sitk.ReadImage(str(source)), sitk.ReadImage(str(out))
    assert mask.GetSize() == original.GetSize()
    np.testing.assert_allclose(mask.GetSpacing(), original.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(mask.GetOrigin(), original.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(mask.GetDirection(), original.GetDirection(), atol=1e-6)
    probabilities = sitk.GetArrayFromImage(sitk.ReadImage(str(probs)))
    assert probabilities.shape == (2, *sitk.GetArrayFromImage(original).shape)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
    labels = sitk.GetArrayFromImage(mask)
    assert set(np.unique(labels)) <= {0, 1} and 0 < labels.mean() < 0.3


def test_skipping_background_windows_keeps_the_result_inside_the_foreground(tmp_path, data_dir):
    source = data_dir / "radiology" / "pyradiomics_brain1_image.nrrd"
    scan = read_scan([source])
    skipped = predict_scan(load_model(_brain_model(tmp_path / "a"), device="cpu"), scan)
    full_dir = make_model(
        tmp_path / "b", graphs.bright_structures(3),
        preprocessing=manifest_dict(preprocessing=[{"name": "resample", "params": {"spacing": [3.0, 1.5, 1.5]}},
                                                   {"name": "crop_nonzero", "params": {"margin": 2}},
                                                   {"name": "zscore", "params": {"region": "nonzero"}}])["preprocessing"],
        window=window(patch_size=[8, 48, 48], skip_background=False),
    )
    full = predict_scan(load_model(full_dir, device="cpu"), scan)
    np.testing.assert_array_equal(skipped.labels_zyx, full.labels_zyx)
    np.testing.assert_allclose(skipped.probabilities_zyx, full.probabilities_zyx, atol=1e-5)


class _CountingBackend:
    """A real backend that counts the windows it is given."""

    def __init__(self, backend) -> None:
        self.backend, self.name, self.on_cpu, self.windows = backend, backend.name, backend.on_cpu, 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.windows += batch.shape[0]
        return self.backend(batch)

    def borrow(self, batch: np.ndarray) -> np.ndarray:
        self.windows += batch.shape[0]
        return self.backend.borrow(batch)

    def run(self, source, planned, merger, progress=None) -> None:
        run_plan(self.borrow, source, planned, merger, progress)  # every window passes through borrow

    def prepare(self, batch_shape: tuple[int, ...]) -> None:
        pass


def test_skipping_air_on_a_real_ct_with_a_foreground_step(tmp_path, data_dir):
    """The CT series' air (below -900 HU) is background: its windows are not run, and nothing changes in the body."""
    scan = read_scan([data_dir / "dicom" / "totalseg_ct_series"])
    steps = [{"name": "foreground", "params": {"min": -900}}, {"name": "clip", "params": {"min": -1000, "max": 1000}},
             {"name": "zscore", "params": {"region": "whole"}}]
    runs = {}
    for skip in (True, False):
        model_dir = make_model(tmp_path / str(skip), graphs.bright_structures(3), preprocessing=steps,
                               window=window(patch_size=[16, 96, 96], batch_size=4, skip_background=skip))
        model = load_model(model_dir, device="cpu")
        counting = _CountingBackend(model.backend)
        runs[skip] = (predict_scan(dataclasses.replace(model, backend=counting), scan), counting.windows)
    (skipped, run_skip), (full, run_full) = runs[True], runs[False]
    body = scan.array_zyx[0] >= -900
    grid = window_grid(body.shape, (16, 96, 96), 0.5)
    assert run_full == len(grid) == 200
    assert run_skip == sum(1 for w in grid if body[w].any()) < 0.9 * run_full
    np.testing.assert_array_equal(skipped.labels_zyx[body], full.labels_zyx[body])
    np.testing.assert_allclose(skipped.probabilities_zyx[:, body], full.probabilities_zyx[:, body], atol=1e-5)
    assert 0 < skipped.labels_zyx.mean() < 0.5


def test_dicom_series_reads_the_same_volume_as_simpleitk(data_dir):
    folder = data_dir / "dicom" / "totalseg_ct_series"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    expected = reader.Execute()
    scan = read_scan([folder])
    np.testing.assert_array_equal(scan.array_zyx[0], sitk.GetArrayFromImage(expected).astype(np.float32))
    assert scan.array_zyx.shape == (1, 20, 512, 512)
    np.testing.assert_allclose(scan.reference.GetSpacing(), expected.GetSpacing())
    np.testing.assert_allclose(scan.reference.GetDirection(), expected.GetDirection())


def test_a_folder_without_a_dicom_series_is_one_error_and_no_itk_warning(tmp_path, capfd):
    (tmp_path / "empty").mkdir()
    (tmp_path / "nifti").mkdir()
    write_scan(tmp_path / "nifti" / "scan.nii.gz", blob_volume((4, 8, 8)))
    for folder in (tmp_path / "empty", tmp_path / "nifti"):
        with pytest.raises(InputError, match="is a folder without a DICOM series"):
            read_scan([folder])
    assert capfd.readouterr().err == ""  # ITK writes its warnings to the process's stderr itself
    assert sitk.ProcessObject.GetGlobalWarningDisplay()


def test_a_folder_of_two_dicom_series_names_both(tmp_path, data_dir, capfd):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for series in ("totalseg_ct_series", "dcmqi_ct3"):
        for file in sorted((data_dir / "dicom" / series).iterdir()):
            (mixed / f"{series}_{file.name}").symlink_to(file)
    with pytest.raises(InputError) as error:
        read_scan([mixed])
    message = str(error.value)
    assert message.startswith(f"{mixed} holds 2 DICOM series (") and message.endswith("put one series per folder.")
    named = message[message.index("(") + 1:message.index(")")].split("; ")
    assert len(named) == 2 and all(named), message
    assert capfd.readouterr().err == ""


def test_dicom_series_predicts_on_its_own_grid(tmp_path, data_dir):
    folder = data_dir / "dicom" / "dcmqi_ct3"
    model_dir = make_model(tmp_path / "repo", graphs.bright_structures(3),
                           preprocessing=[{"name": "clip", "params": {"min": -200, "max": 300}},
                                          {"name": "zscore", "params": {"region": "whole"}}],
                           window=window(patch_size=[3, 128, 128], overlap=0.25, batch_size=4))
    out = tmp_path / "ct_mask.nrrd"
    result = CliRunner().invoke(main, ["predict", str(folder), "--model", str(model_dir), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert sitk.ReadImage(str(out)).GetSize() == (512, 512, 3)


def test_a_2d_classifier_on_a_volume_leaves_its_all_zero_slices_out_of_the_mean(tmp_path):
    """An all-zero slice alone is refused; in a volume (padding) it is not averaged in either, nor is
    one of padding (-2000 throughout); a volume of such slices alone is refused."""
    volume = blob_volume((7, 20, 24)).astype(np.float32) + 50.0
    volume[:2] = 0
    volume[6] = -2000
    model_dir = make_model(tmp_path / "repo", graphs.channel_classifier(1, 2, 2), task="classification",
                           dimensions=2, axis_order="yx",
                           classes=[{"value": 0, "name": "a"}, {"value": 1, "name": "b"}],
                           preprocessing=[{"name": "resize", "params": {"shape": [16, 16]}},
                                          {"name": "normalize", "params": {"mean": [100], "std": [50]}}],
                           window=window(mode="whole", patch_size=[16, 16]))
    model = load_model(model_dir, device="cpu")
    whole = predict_scan(model, read_scan([write_scan(tmp_path / "volume.nrrd", volume)])).scores
    slices = [predict_scan(model, read_scan([write_scan(tmp_path / f"slice{i}.nrrd", volume[i])])).scores
              for i in range(2, 6)]
    np.testing.assert_allclose(whole, np.mean(slices, axis=0), atol=1e-6)
    assert np.ptp([score[1] for score in slices]) > 1e-3          # the slices' scores differ: the mean says which
    with pytest.raises(InputError, match="every voxel is 0, so there is nothing to predict from"):
        read_scan([write_scan(tmp_path / "blank.nrrd", volume[0])])
    steps = np.repeat(np.arange(1.0, 4.0, dtype=np.float32), 20 * 24).reshape(3, 20, 24)    # each slice one value
    with pytest.raises(InputError, match="every slice of the volume holds one value"):
        predict_scan(model, read_scan([write_scan(tmp_path / "steps.nrrd", steps)]))


@pytest.mark.parametrize("device", DEVICES)
def test_two_dimensional_model_on_2d_image_and_slice_by_slice_on_a_volume(tmp_path, device):
    volume = blob_volume((5, 40, 33))
    model_dir = make_model(tmp_path / "repo", graphs.identity(2, 2), dimensions=2, axis_order="yx",
                           channels=["a", "b"], classes=IDENTITY_CLASSES, output=PASS_THROUGH,
                           window=window(patch_size=[16, 16], mirror_axes=[1]))
    model = load_model(model_dir, device=device)
    image_2d = write_scan(tmp_path / "slice.nrrd", volume[2], (0.5, 0.5))
    flat = predict_scan(model, read_scan([image_2d, image_2d]))
    np.testing.assert_allclose(flat.probabilities_zyx[1], volume[2], atol=1e-4)
    path_3d = write_scan(tmp_path / "vol.nrrd", volume)
    stacked = predict_scan(model, read_scan([path_3d, path_3d]))
    assert stacked.probabilities_zyx.shape == (2, *volume.shape)
    np.testing.assert_allclose(stacked.probabilities_zyx[0], volume, atol=1e-4)


def _difference_along_last_axis() -> onnx.ModelProto:
    """A 2D model that is not the same turned: channel 1 = input[..., j + 1] - input[..., j] along the
    model's last axis (zero past the end), channel 0 = 0."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.zeros((2, 1, 1, 2), dtype=np.float32)
    weight[1, 0, 0] = [-1.0, 1.0]
    node = helper.make_node("Conv", ["input", "weight"], ["output"], kernel_shape=[1, 2], pads=[0, 0, 0, 1])
    graph = helper.make_graph([node], "difference", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                     ["n", 1, "a", "b"])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 2, "a", "b"])],
                              initializer=[numpy_helper.from_array(weight, "weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("axis_order", ["xy", "yx"])
def test_a_2d_model_runs_over_a_volumes_axial_slices_in_its_own_axis_order(tmp_path, axis_order):
    """Each z slice, laid out as the model reads a 2D image (x first for `xy`), whatever the axis
    order: the volume's slice k comes out as slice k given as a 2D image does."""
    volume = blob_volume((4, 40, 33))
    patch = [33, 40] if axis_order == "xy" else [40, 33]            # a whole slice: no window edges inside
    model_dir = make_model(tmp_path / "repo", _difference_along_last_axis(), dimensions=2, axis_order=axis_order,
                           classes=IDENTITY_CLASSES, output=PASS_THROUGH, window=window(patch_size=patch))
    model = load_model(model_dir, device="cpu")
    stacked = predict_scan(model, read_scan([write_scan(tmp_path / "vol.nrrd", volume)])).probabilities_zyx[1]
    along = 1 if axis_order == "xy" else 2                            # y for a model reading (x, y)
    expected = np.diff(volume, axis=along)
    kept = (slice(None), slice(0, 39), slice(None)) if along == 1 else (slice(None), slice(None), slice(0, 32))
    np.testing.assert_allclose(stacked[kept], expected, atol=1e-4)
    flat = predict_scan(model, read_scan([write_scan(tmp_path / "slice.nrrd", volume[2])])).probabilities_zyx[1]
    np.testing.assert_allclose(stacked[2], flat, atol=1e-5)


def _pairs_along_z() -> onnx.ModelProto:
    """A 3D model whose answer depends on where a window starts along z: each voxel becomes the mean
    of the pair of slices (2k, 2k + 1) of the window that holds it, as a network's stride-2 step
    and its upsampling do; two equal channels."""
    from onnx import TensorProto, helper, numpy_helper

    scales = numpy_helper.from_array(np.array([1, 1, 2, 1, 1], dtype=np.float32), "scales")
    nodes = [helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[2, 1, 1], strides=[2, 1, 1]),
             helper.make_node("Resize", ["pooled", "", "scales"], ["upsampled"], mode="nearest"),
             helper.make_node("Concat", ["upsampled", "upsampled"], ["output"], axis=1)]
    spatial = ["d", "h", "w"]
    graph = helper.make_graph(nodes, "pairs", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                               ["n", 1, *spatial])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 2, *spatial])],
                              initializer=[scales])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("centred", [False, True])
def test_an_axis_shorter_than_the_patch_is_padded_at_its_end_or_centred_by_a_pad_step(tmp_path, centred):
    """A scan of 5 slices under a patch of 8: padded at the end (slices 0-1, 2-3 and 4 with a zero
    are averaged), or, with `pad` to the patch as the last step, 1 slice before and 2 after as
    nnU-Net and MONAI pad (slice 0 with a zero, then 1-2 and 3-4)."""
    volume = blob_volume((5, 16, 16)) + 1.0
    steps = [{"name": "pad", "params": {"shape": [8, 16, 16]}}] if centred else []
    model_dir = make_model(tmp_path / "repo", _pairs_along_z(), classes=IDENTITY_CLASSES, output=PASS_THROUGH,
                           preprocessing=steps, window=window(patch_size=[8, 16, 16]))
    prediction = predict_scan(load_model(model_dir, device="cpu"), read_scan([write_scan(tmp_path / "s.nrrd", volume)]))
    before = 1 if centred else 0
    padded = np.pad(volume, ((before, 3 - before), (0, 0), (0, 0)))
    pairs = np.repeat(padded.reshape(4, 2, 16, 16).mean(axis=1), 2, axis=0)
    np.testing.assert_allclose(prediction.probabilities_zyx[0], pairs[before:before + 5], rtol=1e-6)


def test_a_segmentation_model_of_the_whole_resized_image_comes_back_on_the_scans_grid(tmp_path):
    """window.mode whole for segmentation: the image resized to the patch, one run, the
    probabilities activated and resized back to the scan's grid; labels alone agree with them."""
    ramp = np.broadcast_to(np.linspace(0.0, 1.0, 40, dtype=np.float32), (10, 30, 40))
    paths = [write_scan(tmp_path / "a.nii.gz", 1.0 - ramp), write_scan(tmp_path / "b.nii.gz", ramp)]
    model_dir = make_model(tmp_path / "repo", graphs.identity(2, 3), channels=["a", "b"], classes=IDENTITY_CLASSES,
                           output=PASS_THROUGH, preprocessing=[{"name": "resize", "params": {"shape": [8, 16, 16]}}],
                           window=window(mode="whole", patch_size=[8, 16, 16]))
    model = load_model(model_dir, device="cpu")
    prediction = predict_scan(model, read_scan(paths))
    assert prediction.probabilities_zyx.shape == (2, 10, 30, 40)
    np.testing.assert_allclose(prediction.probabilities_zyx[1], ramp, atol=0.03)
    assert np.mean(prediction.labels_zyx == (ramp > 0.5)) > 0.97
    alone = predict_scan(model, read_scan(paths), probabilities=False)
    np.testing.assert_array_equal(alone.labels_zyx, prediction.labels_zyx)


def test_classification_on_the_whole_resized_image(tmp_path):
    array = blob_volume((10, 20, 20))
    path = write_scan(tmp_path / "scan.nii.gz", array)
    model_dir = make_model(
        tmp_path / "repo", graphs.channel_classifier(1, 3, 3), task="classification",
        classes=[{"value": 0, "name": "low"}, {"value": 1, "name": "mid"}, {"value": 2, "name": "high"}],
        preprocessing=[{"name": "rescale", "params": {"out_min": 0, "out_max": 1}},
                       {"name": "resize", "params": {"shape": [8, 16, 16]}}],
        window=window(mode="whole", patch_size=[8, 16, 16]),
    )
    prediction = predict_scan(load_model(model_dir, device="cpu"), read_scan([path]))
    scan = read_scan([path]).array_zyx[0]
    rescaled = (scan - scan.min()) / (scan.max() - scan.min())
    resized = sitk.GetArrayFromImage(sitk.Resample(  # the mean changes little under linear resizing
        sitk.GetImageFromArray(rescaled), [16, 16, 8], sitk.Transform(), sitk.sitkLinear,
        (0, 0, 0), (20 / 16, 20 / 16, 10 / 8)))
    weight, bias = graphs.classifier_weights(1, 3)
    logits = weight @ np.array([resized.mean()]) + bias
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(prediction.scores, expected, atol=0.02)
    np.testing.assert_allclose(prediction.scores.sum(), 1.0, atol=1e-5)
    assert prediction.label == int(np.argmax(expected))


@pytest.mark.parametrize("device", DEVICES)
def test_regression_averages_over_windows(tmp_path, device):
    array = np.full((12, 24, 24), 7.0, dtype=np.float32)
    array[:, :, 12:] = 3.0
    path = write_scan(tmp_path / "scan.nii.gz", array)
    model_dir = make_model(tmp_path / "repo", graphs.mean_regressor(1, 3), task="regression",
                           classes=[{"value": 0, "name": "age"}], output=PASS_THROUGH,
                           window=window(patch_size=[12, 24, 12], overlap=0.0))
    prediction = predict_scan(load_model(model_dir, device=device), read_scan([path]))
    np.testing.assert_allclose(prediction.scores, [5.0], rtol=1e-5)
    assert prediction.label is None


def test_regression_targets_are_their_outputs_by_value_whatever_their_order(tmp_path):
    """A target's value is the index of its output: listed second but of value 0, it is output 0,
    in the printed values and the --output row alike. One target of value 1 (as a training config
    may name it) is the model's one output."""
    import csv

    path = write_scan(tmp_path / "scan.nii.gz", blob_volume((10, 20, 20)))
    model_dir = make_model(tmp_path / "repo", graphs.channel_classifier(1, 3, 2), task="regression",
                           classes=[{"value": 1, "name": "second"}, {"value": 0, "name": "first"}], output=PASS_THROUGH,
                           window=window(mode="whole", patch_size=[8, 16, 16]),
                           preprocessing=[{"name": "resize", "params": {"shape": [8, 16, 16]}}])
    raw = predict_scan(load_model(model_dir, device="cpu"), read_scan([path])).scores
    assert abs(raw[0] - raw[1]) > 0.1
    result = CliRunner().invoke(main, ["predict", str(path), "--model", str(model_dir), "--output",
                                       str(tmp_path / "values.csv"), "--quiet"])
    assert result.exit_code == 0, result.output
    [row] = list(csv.DictReader((tmp_path / "values.csv").open()))
    assert float(row["first"]) == pytest.approx(raw[0], abs=1e-5)
    assert float(row["second"]) == pytest.approx(raw[1], abs=1e-5)
    printed = dict(part.split("=") for part in result.output.splitlines()[0].split(", ")[1:])
    assert [float(printed["first"]), float(printed["second"])] == pytest.approx(raw, abs=1e-5)
    from runtime.manifest import parse_manifest
    from runtime.postprocess import scored_values

    single = parse_manifest(manifest_dict(task="regression", classes=[{"value": 1, "name": "age"}], output=PASS_THROUGH,
                                          files={"model.onnx": "0" * 64}))
    assert [(spec.name, value) for spec, value in scored_values(np.array([63.5]), single)] == [("age", 63.5)]


def test_csv_run_scores_each_of_several_targets_against_its_own_column(tmp_path):
    """A model of two targets (listed out of their order) takes label_<target> columns: each target
    is scored against its own, over the subjects that give it; one label column is refused."""
    import csv

    model_dir = make_model(tmp_path / "repo", graphs.channel_classifier(1, 3, 2), task="regression",
                           classes=[{"value": 1, "name": "second"}, {"value": 0, "name": "first"}], output=PASS_THROUGH,
                           window=window(mode="whole", patch_size=[8, 16, 16]),
                           preprocessing=[{"name": "resize", "params": {"shape": [8, 16, 16]}}])
    model = load_model(model_dir, device="cpu")
    raw, lines = [], ["subject_id,image,label_first,label_second"]
    for i in range(4):
        path = write_scan(tmp_path / f"s{i}.nii.gz", blob_volume((10, 20, 20), seed=i))
        raw.append(predict_scan(model, read_scan([path])).scores)
        lines.append(f"s{i},{path.name},{i * 0.5},{'' if i == 3 else i - 1.0}")
    (tmp_path / "subjects.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "preds"
    result = CliRunner().invoke(main, ["predict", "--csv", str(tmp_path / "subjects.csv"), "--model", str(model_dir),
                                       "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [(r["label_first"], r["label_second"]) for r in rows] == [("0.0", "-1.0"), ("0.5", "0.0"),
                                                                      ("1.0", "1.0"), ("1.5", "")]
    summary = {r["metric"]: float(r["value"]) for r in csv.DictReader((out / "summary.csv").open())}
    first = np.array([scores[0] for scores in raw]) - np.arange(4) * 0.5
    second = np.array([scores[1] for scores in raw[:3]]) - np.array([-1.0, 0.0, 1.0])
    assert summary["mae_first"] == pytest.approx(np.abs(first).mean(), abs=1e-5)
    assert summary["mae_second"] == pytest.approx(np.abs(second).mean(), abs=1e-5)
    assert abs(summary["mae_first"] - summary["mae_second"]) > 0.1
    assert "mae" not in summary
    (tmp_path / "one.csv").write_text("subject_id,image,label\ns0,s0.nii.gz,1.0\n")
    run_failing(["predict", "--csv", str(tmp_path / "one.csv"), "--model", str(model_dir), "--output-dir",
                 str(tmp_path / "none")], "column label holds one number", "2 targets (second, first)",
                "label_second, label_first")
    assert not (tmp_path / "none").exists()


def test_csv_run_writes_every_subject_and_its_metrics(tmp_path):
    rows = ["subject_id,image,label"]
    for i in range(3):
        array = blob_volume((12, 30, 30), seed=i)
        write_scan(tmp_path / f"s{i}.nii.gz", array)
        inside = array[array != 0]
        truth = ((array - inside.mean()) / inside.std() > graphs.BRIGHT_THRESHOLD).astype(np.uint8)
        write_scan(tmp_path / f"s{i}_label.nii.gz", truth)
        rows.append(f"s{i},s{i}.nii.gz,s{i}_label.nii.gz")
    (tmp_path / "subjects.csv").write_text("\n".join(rows) + "\n")
    model_dir = make_model(tmp_path / "repo", graphs.bright_structures(3),
                           preprocessing=[{"name": "zscore", "params": {"region": "nonzero"}}],
                           window=window(patch_size=[8, 16, 16], skip_background=True))
    out = tmp_path / "preds"
    result = CliRunner().invoke(main, ["predict", "--csv", str(tmp_path / "subjects.csv"), "--model", str(model_dir),
                                       "--output-dir", str(out), "--save-probabilities"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.csv", "s0.nii.gz", "s0_probabilities.nii.gz", "s1.nii.gz", "s1_probabilities.nii.gz",
        "s2.nii.gz", "s2_probabilities.nii.gz", "summary.csv"]
    metrics = (out / "metrics.csv").read_text().splitlines()
    assert metrics[0] == ("subject_id,dice_structure,iou_structure,sensitivity_structure,specificity_structure,"
                          "precision_structure,hd95_structure,nsd_structure,dice_mean") and len(metrics) == 4
    for line in metrics[1:]:
        dice, iou, sensitivity, specificity, precision, hd95, nsd, _ = map(float, line.split(",")[1:])
        assert dice > 0.8 and iou == pytest.approx(dice / (2 - dice), abs=1e-5)
        assert min(sensitivity, specificity, precision, nsd) > 0.7 and 0 <= hd95 < 5
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0] == "metric,mean,std,n" and summary[1].startswith("dice_structure,")
    assert any(line.startswith("hd95_structure,") and line.endswith(",3") for line in summary)


def test_csv_run_of_a_classifier_reports_accuracy_and_auc(tmp_path):
    rows = ["subject_id,image,label"]
    for i, level in enumerate([-0.9, -0.3, 0.3, 0.9]):
        write_scan(tmp_path / f"s{i}.nii.gz", nearly_flat((6, 8, 8), level + 1e-3))
        rows.append(f"s{i},s{i}.nii.gz,{int(level > 0)}")
    (tmp_path / "subjects.csv").write_text("\n".join(rows) + "\n")
    model_dir = make_model(tmp_path / "repo", graphs.channel_classifier(1, 3, 2), task="classification",
                           window=window(patch_size=[6, 8, 8], mode="whole"))
    out = tmp_path / "preds"
    result = CliRunner().invoke(main, ["predict", "--csv", str(tmp_path / "subjects.csv"), "--model", str(model_dir),
                                       "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    predictions = (out / "predictions.csv").read_text().splitlines()
    assert predictions[0] == "subject_id,predicted,probability_background,probability_structure,label"
    assert all(b"\r" not in (out / name).read_bytes() for name in ("predictions.csv", "summary.csv", "confusion.csv"))
    assert [line.split(",")[1] for line in predictions[1:]] == ["0", "0", "1", "1"]
    summary = dict(line.split(",") for line in (out / "summary.csv").read_text().splitlines()[1:])
    assert float(summary["accuracy"]) == 1.0 and float(summary["auc"]) == 1.0 and summary["n"] == "4"
    assert float(summary["precision_structure"]) == float(summary["recall_structure"]) == 1.0
    assert float(summary["f1_background"]) == 1.0
    assert (out / "confusion.csv").read_text().splitlines() == [
        "true,predicted_background,predicted_structure", "background,2,0", "structure,0,2"]


def test_confident_scores_and_small_targets_are_written_and_scored_whole_not_rounded_to_zero(tmp_path):
    """Probabilities of 1e-11 to 1e-8 order the subjects (AUC 0.25; rounded to 0 they tie, 0.5);
    a regression's errors of 1e-4 are no 0."""
    rows = ["subject_id,image,label"]
    for i, (level, label) in enumerate([(-12, 1), (-11, 0), (-10, 1), (-9, 0)]):
        write_scan(tmp_path / f"s{i}.nii.gz", nearly_flat((6, 8, 8), level))
        rows.append(f"s{i},s{i}.nii.gz,{label}")
    table = _csv(tmp_path, rows)
    model_dir = make_model(tmp_path / "repo", graphs.channel_classifier(1, 3, 2), task="classification",
                           window=window(patch_size=[6, 8, 8], mode="whole"))
    out = tmp_path / "preds"
    result = CliRunner().invoke(main, ["predict", "--csv", str(table), "--model", str(model_dir),
                                       "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    scores = [float(line.split(",")[3]) for line in (out / "predictions.csv").read_text().splitlines()[1:]]
    assert scores == sorted(scores) and 1e-12 < scores[0] < scores[-1] < 1e-7, scores
    summary = dict(line.split(",") for line in (out / "summary.csv").read_text().splitlines()[1:])
    assert float(summary["auc"]) == 0.25 and float(summary["accuracy"]) == 0.5
    run_failing(["predict", "--csv", str(table), "--model", str(model_dir), "--output-dir", str(tmp_path / "p"),
                 "--save-probabilities"], "--save-probabilities writes a segmentation's probability maps",
                "a classification model, whose probabilities predictions.csv holds")
    assert not (tmp_path / "p").exists()
    for i, level in enumerate([1e-3, 2e-3]):
        write_scan(tmp_path / f"r{i}.nii.gz", nearly_flat((6, 8, 8), level))
    table = _csv(tmp_path, ["subject_id,image,label", "r0,r0.nii.gz,0.0011", "r1,r1.nii.gz,0.0021"])
    regression = make_model(tmp_path / "regression", graphs.mean_regressor(1, 3), task="regression", name="adc",
                            classes=[{"value": 0, "name": "adc"}],
                            output={"activation": "none", "label_rule": "argmax", "threshold": 0.5, "ensemble": "mean"},
                            window=window(mode="whole", patch_size=[6, 8, 8]))
    result = CliRunner().invoke(main, ["predict", "--csv", str(table), "--model", str(regression),
                                       "--output-dir", str(tmp_path / "adc")])
    assert result.exit_code == 0, result.output
    summary = dict(line.split(",") for line in (tmp_path / "adc" / "summary.csv").read_text().splitlines()[1:])
    assert float(summary["mae"]) == pytest.approx(1e-4, rel=1e-3)
    assert float(summary["mse"]) == pytest.approx(1e-8, rel=1e-2)


def test_subjects_without_a_label_among_labelled_ones_are_named_and_left_out_of_the_counted_metrics(tmp_path):
    for i, level in enumerate([-0.9, -0.3, 0.3, 0.9]):
        write_scan(tmp_path / f"s{i}.nii.gz", nearly_flat((6, 8, 8), level + 1e-3))
    model_dir = make_model(tmp_path / "repo", graphs.channel_classifier(1, 3, 2), task="classification",
                           window=window(patch_size=[6, 8, 8], mode="whole"))
    table = _csv(tmp_path, ["subject_id,image,label", "s0,s0.nii.gz,1", "s1,s1.nii.gz,", "s2,s2.nii.gz,1",
                            "s3,s3.nii.gz,"])
    result = CliRunner().invoke(main, ["predict", "--csv", str(table), "--model", str(model_dir), "--output-dir",
                                       str(tmp_path / "preds")])
    assert result.exit_code == 0, result.output
    assert (f"warning: {table}: 2 of 4 subject(s) have no label in column label (s1, s3): they are predicted but "
            "not scored, and the metrics are of the others") in result.stderr
    summary = dict(line.split(",") for line in (tmp_path / "preds" / "summary.csv").read_text().splitlines()[1:])
    assert summary["n"] == "2" and float(summary["accuracy"]) == 0.5                 # s0 is predicted 0
    assert len((tmp_path / "preds" / "predictions.csv").read_text().splitlines()) == 5


def _csv(folder: Path, rows: list[str]) -> Path:
    (folder / "subjects.csv").write_text("\n".join(rows) + "\n")
    return folder / "subjects.csv"


def test_csv_label_cells_are_checked_before_any_subject_runs_and_a_class_may_be_named(tmp_path):
    """A classifier's label may be a class value or name; a value that is no class, or a regression
    label that is no finite number (NaN made every summary figure NaN), is refused with its line
    before any subject runs, nothing written."""
    for i, level in enumerate([-0.9, 0.9]):
        write_scan(tmp_path / f"s{i}.nii.gz", nearly_flat((6, 8, 8), level + 1e-3))
    classifier = make_model(tmp_path / "repo", graphs.channel_classifier(1, 3, 2), task="classification",
                            window=window(patch_size=[6, 8, 8], mode="whole"))
    regressor = make_model(tmp_path / "repo2", graphs.mean_regressor(1, 3), task="regression",
                           classes=[{"value": 0, "name": "age"}], output=PASS_THROUGH,
                           window=window(patch_size=[6, 8, 8], mode="whole"))
    out = tmp_path / "preds"
    bad = _csv(tmp_path, ["subject_id,image,label", "s0,s0.nii.gz,2.5", "s1,s1.nii.gz,nan"])
    run_failing(["predict", "--csv", str(bad), "--model", str(classifier), "--output-dir", str(out)],
                "line 2: label 2.5 is none of the model's classes (0 background, 1 structure)",
                "line 3: label 'nan' is not a class value or name")
    run_failing(["predict", "--csv", str(bad), "--model", str(regressor), "--output-dir", str(out)],
                "line 3: label 'nan' is not a finite number (where a subject has none, leave the cell empty: it is "
                "predicted, not scored)")
    assert not out.exists()
    named = _csv(tmp_path, ["subject_id,image,label", "s0,s0.nii.gz,background", "s1,s1.nii.gz,structure"])
    result = CliRunner().invoke(main, ["predict", "--csv", str(named), "--model", str(classifier),
                                       "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    summary = dict(line.split(",") for line in (out / "summary.csv").read_text().splitlines()[1:])
    assert float(summary["accuracy"]) == 1.0


@pytest.mark.parametrize("kind", ["fractions", "colours"])
def test_a_label_map_of_fractions_or_colours_is_refused_not_read_as_other_classes(tmp_path, kind):
    """A mask saved as 0 / 0.9999 (or resampled linearly) read as integers was all background, and
    scored a good model Dice 0; a colour label map stopped the run with a traceback. Each is one
    error naming the file."""
    array = blob_volume((12, 30, 30))
    write_scan(tmp_path / "s0.nii.gz", array)
    truth = (array > 0).astype(np.float32)
    label = tmp_path / "s0_label.nii.gz"
    if kind == "fractions":
        write_scan(label, truth * np.float32(0.9999))
    else:
        image = sitk.GetImageFromArray(np.stack([truth] * 3, axis=-1).astype(np.uint8), isVector=True)
        sitk.WriteImage(image, str(label))
    model_dir = make_model(tmp_path / "repo", graphs.bright_structures(3),
                           window=window(patch_size=[8, 16, 16]))
    csv_path = _csv(tmp_path, ["subject_id,image,label", "s0,s0.nii.gz,s0_label.nii.gz"])
    result = CliRunner().invoke(main, ["predict", "--csv", str(csv_path), "--model", str(model_dir), "--output-dir",
                                       str(tmp_path / "preds")])
    said = result.output
    assert result.exit_code == 1 and "error: 1 of 1 subject(s) failed" in said, said
    assert "s0_label.nii.gz is not a label map" in said and "Traceback" not in said, said
    assert ("not whole numbers" if kind == "fractions" else "3 values per voxel") in said, said


def test_an_rgb_file_named_in_the_red_green_and_blue_columns_is_its_three_channels(tmp_path):
    """As the trainer reads a subjects table: one file named in consecutive channel columns."""
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "s0.png")
    classes = [{"value": 0, "name": "r"}, {"value": 1, "name": "g"}, {"value": 2, "name": "b"}]
    model_dir = make_model(tmp_path / "repo", graphs.identity(3, 2), dimensions=2, axis_order="yx",
                           channels=["R", "G", "B"], classes=classes, output=PASS_THROUGH,
                           window=window(patch_size=[20, 24]))
    csv_path = _csv(tmp_path, ["subject_id,R,G,B", "s0,s0.png,s0.png,s0.png"])
    out = tmp_path / "preds"
    result = CliRunner().invoke(main, ["predict", "--csv", str(csv_path), "--model", str(model_dir),
                                       "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    [written] = [p for p in out.iterdir() if p.name.startswith("s0")]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(written)))
    np.testing.assert_array_equal(labels.reshape(20, 24), np.argmax(rgb, axis=-1))
    grey = rgb[..., 1]                          # one grey file in two columns is each column's channel
    Image.fromarray(grey).save(tmp_path / "g0.png")
    two = make_model(tmp_path / "repo2", graphs.identity(2, 2), dimensions=2, axis_order="yx",
                     channels=["soft", "bone"], classes=IDENTITY_CLASSES, output=PASS_THROUGH,
                     window=window(patch_size=[20, 24]))
    csv_path = _csv(tmp_path, ["subject_id,soft,bone", "g0,g0.png,g0.png"])
    result = CliRunner().invoke(main, ["predict", "--csv", str(csv_path), "--model", str(two), "--output-dir",
                                       str(tmp_path / "grey"), "--save-probabilities"])
    assert result.exit_code == 0, result.output


def test_sigmoid_model_labels_by_threshold(tmp_path):
    array = blob_volume((10, 24, 20))
    path = write_scan(tmp_path / "scan.nii.gz", array)
    model_dir = make_model(tmp_path / "repo", graphs.scaled(1, 3, 2.0),
                           preprocessing=[{"name": "zscore", "params": {"region": "whole"}}],
                           output={"activation": "sigmoid", "label_rule": "threshold", "threshold": 0.7,
                                   "ensemble": "mean"},
                           classes=[{"value": 0, "name": "background"}, {"value": 5, "name": "lesion"}])
    prediction = predict_scan(load_model(model_dir, device="cpu"), read_scan([path]))
    z = (array - array.mean()) / array.std()
    expected_probability = 1 / (1 + np.exp(-2 * z))
    np.testing.assert_allclose(prediction.probabilities_zyx[0], expected_probability, atol=1e-5)
    decided = np.abs(expected_probability - 0.7) > 1e-4
    np.testing.assert_array_equal(prediction.labels_zyx[decided], np.where(expected_probability > 0.7, 5, 0)[decided])
    assert prediction.labels_zyx.dtype == np.uint8


def _three_blobs(tmp_path: Path) -> list[Path]:
    """Three channels with their blobs in different places, all 0 in the first two slices and past
    x = 30 (so cropping removes voxels, and 16-wide windows there hold only background)."""
    shape = (14, 40, 50)
    arrays = [blob_volume(shape, seed=1), np.roll(blob_volume(shape, seed=2), 5, axis=1),
              np.roll(blob_volume(shape, seed=3), -4, axis=2)]
    for array in arrays:
        array[:2] = 0
        array[..., 30:] = 0
    return [write_scan(tmp_path / f"c{i}.nii.gz", a, (0.9, 1.1, 2.0), (0, 1, 0, 1, 0, 0, 0, 0, -1))
            for i, a in enumerate(arrays)]


SOFTMAX = {"activation": "softmax", "label_rule": "argmax", "threshold": 0.5, "ensemble": "mean"}
CROP_ZSCORE = [{"name": "crop_nonzero", "params": {"margin": 1}}, {"name": "zscore", "params": {"region": "nonzero"}}]
ZSCORE = [{"name": "zscore", "params": {"region": "nonzero"}}]
RESAMPLE = [{"name": "resample", "params": {"spacing": [2.5, 1.3, 1.0]}}]


@pytest.mark.parametrize("case", ["crop+zscore", "skip background", "xyz + mirroring", "resample", "values 0,2,5"])
def test_label_map_alone_equals_the_label_map_of_the_probabilities(tmp_path, case):
    """probabilities=False takes the labels from the undivided sums, or brings them back a slab at
    a time where a resample is undone; they must not change."""
    classes = [{"value": v, "name": n} for v, n in zip((0, 2, 5) if case == "values 0,2,5" else (0, 1, 2), "abc")]
    steps = {"resample": RESAMPLE, "skip background": ZSCORE}.get(case, CROP_ZSCORE)
    settings: dict = {"preprocessing": steps, "output": SOFTMAX,
                      "classes": classes, "channels": ["a", "b", "c"]}
    patch = [6, 16, 16]
    if case == "xyz + mirroring":
        settings["axis_order"], patch = "xyz", [16, 16, 6]
    extra = {"mirror_axes": [0, 2]} if case == "xyz + mirroring" else {}
    settings["window"] = window(patch_size=patch, skip_background=case == "skip background", **extra)
    model = load_model(make_model(tmp_path / "repo", graphs.identity(3, 3), **settings), device="cpu")
    paths = _three_blobs(tmp_path)
    full = predict_scan(model, read_scan(paths))
    alone = predict_scan(model, read_scan(paths), probabilities=False)
    assert alone.probabilities_zyx is None
    assert alone.labels_zyx.dtype == full.labels_zyx.dtype == np.uint8
    assert len(np.unique(full.labels_zyx)) == 3
    np.testing.assert_array_equal(alone.labels_zyx, full.labels_zyx)


def test_overwrite_lets_preprocessing_reuse_the_scan_array_and_changes_nothing_else(tmp_path):
    model = load_model(make_model(tmp_path / "repo", graphs.identity(3, 3), preprocessing=CROP_ZSCORE,
                                  output=SOFTMAX, channels=["a", "b", "c"],
                                  classes=[{"value": v, "name": n} for v, n in zip((0, 1, 2), "abc")],
                                  window=window(patch_size=[6, 16, 16])), device="cpu")
    scan = read_scan(_three_blobs(tmp_path))
    before = scan.array_zyx.copy()
    kept = predict_scan(model, scan)
    np.testing.assert_array_equal(scan.array_zyx, before)
    reused = predict_scan(model, scan, overwrite=True)
    assert not np.array_equal(scan.array_zyx, before)
    np.testing.assert_array_equal(reused.labels_zyx, kept.labels_zyx)
    np.testing.assert_array_equal(reused.probabilities_zyx, kept.probabilities_zyx)


@pytest.mark.parametrize("slab_bytes", [1, 3 * 4 * 4 * 33 * 29, 2**30])
def test_labels_alone_come_slab_by_slab_and_equal_the_argmax_of_the_probabilities(tmp_path, monkeypatch, slab_bytes):
    """With a resample to undo, labels alone are brought back a slab of rows at a time (one row, a
    few, all) instead of as K whole class maps: the same labels, ties to the first class included."""
    monkeypatch.setattr(slab_labels, "SLAB_BYTES", slab_bytes)
    classes = [{"value": v, "name": n} for v, n in ((0, "background"), (2, "liver"), (5, "spleen"), (7, "kidney"))]
    model = load_model(make_model(tmp_path / "repo", graphs.identity(4, 3), channels=["a", "b", "c", "d"],
                                  classes=classes, output=PASS_THROUGH,
                                  preprocessing=[{"name": "resample", "params": {"spacing": [2.0, 1.6, 1.3]}}]),
                       device="cpu")
    rng = np.random.default_rng(3)
    arrays = [blob_volume((17, 33, 29), seed=seed) for seed in range(4)]
    arrays[3] = arrays[2].copy()                                  # two classes tie everywhere: the first must win
    arrays[1] = np.round(rng.random((17, 33, 29)) * 3).astype(np.float32)
    paths = [write_scan(tmp_path / f"c{i}.nii.gz", a, (0.9, 1.1, 2.4)) for i, a in enumerate(arrays)]
    scan = read_scan(paths)
    full = predict_scan(model, scan, probabilities=True)
    alone = predict_scan(model, scan, probabilities=False)
    assert alone.probabilities_zyx is None
    np.testing.assert_array_equal(alone.labels_zyx, full.labels_zyx)
    assert set(np.unique(full.labels_zyx)) >= {0, 2, 5} and 7 not in np.unique(full.labels_zyx)


def test_a_classifier_said_to_give_probabilities_that_gives_logits_is_refused_not_reported(tmp_path):
    """Read with activation none, a classifier's values are its reported probabilities (a CSV's
    columns, a DICOM SR's Probability): logits there were reported as probabilities of 457 and -447."""
    scan = write_scan(tmp_path / "s.nii.gz", nearly_flat((6, 8, 8), 40.0))
    logits = make_model(tmp_path / "repo", graphs.channel_classifier(1, 3, 2), task="classification",
                        output=PASS_THROUGH, window=window(patch_size=[6, 8, 8], mode="whole"), preprocessing=[])
    out = tmp_path / "out.csv"
    run_failing(["predict", str(scan), "--model", str(logits), "--output", str(out)],
                "returned scores from", "but its output section says activation none: a graph that gives "
                "probabilities, from 0 to 1", "set output.activation to the softmax or sigmoid")
    assert not out.exists()
    honest = make_model(tmp_path / "honest", graphs.channel_classifier(1, 3, 2), task="classification",
                        window=window(patch_size=[6, 8, 8], mode="whole"), preprocessing=[])
    result = CliRunner().invoke(main, ["predict", str(scan), "--model", str(honest), "--output", str(out)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("shape", "said"), [
    ((2, 3, 4, 8, 8), "Its spatial size [4, 8, 8] is not the window's [8, 16, 16]"),
    ((1, 3, 8, 16, 16), "It keeps not the batch of 2 window(s) it was given"),
    ((2, 5, 8, 16, 16), "Fix the manifest's classes or re-export the model."),
    ((2, 3, 8, 16), "Its rank differs")])
def test_an_output_of_another_shape_says_which_axis_breaks_the_promise(shape, said):
    from runtime.manifest import parse_manifest
    from runtime.postprocess import check_output

    manifest = parse_manifest(manifest_dict(classes=[{"value": 0, "name": "background"}, {"value": 1, "name": "a"},
                                                     {"value": 2, "name": "b"}], files={"model.onnx": "0" * 64}))
    with pytest.raises(ModelError) as caught:
        check_output(np.zeros(shape, np.float32), (2, 1, 8, 16, 16), manifest)
    assert said in str(caught.value)
