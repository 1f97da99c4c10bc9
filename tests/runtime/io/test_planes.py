"""2D images in a 3D world: a 2D NIfTI slice keeps its place in space, and slices of other planes
are refused where a 2D model would read them wrongly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from export import graphs
from runtime.commands.cli import main
from tests.modelkit import make_model, run_failing, window


def _bone_2d(folder: Path) -> Path:
    """A small real 2D segmentation model: CT numbers above about 300 are class 1."""
    return make_model(folder / "repository", graphs.bright_structures(2), dimensions=2, axis_order="yx",
                      preprocessing=[{"name": "normalize", "params": {"mean": [0], "std": [100]}}],
                      window=window(patch_size=[32, 32]))


def _slice_of_ct(data_dir: Path, folder: Path, z: int, name: str) -> Path:
    """Axial slice `z` of the shared CT saved as a 2D NIfTI whose sform places it where it lay in
    the volume (a 2D image holds its plane's place in 3D only in its header's affine)."""
    import nibabel

    volume = nibabel.load(data_dir / "radiology" / "totalseg_example_ct_sm.nii.gz")
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ [0, 0, z] + volume.affine[:3, 3]
    path = folder / name
    nibabel.save(nibabel.Nifti1Image(np.asarray(volume.dataobj)[:, :, z].astype(np.int16), affine), path)
    return path


def test_a_2d_nifti_slice_keeps_its_place_in_3d_and_its_probabilities_are_one_slice_of_channels(
        data_dir: Path, tmp_path: Path) -> None:
    import nibabel

    model = _bone_2d(tmp_path)
    scan = _slice_of_ct(data_dir, tmp_path, 15, "slice15.nii.gz")
    for labels, probabilities in (("labels.nii.gz", "probabilities.nii.gz"), ("labels.nii", "probabilities.nrrd")):
        result = CliRunner().invoke(main, ["predict", str(scan), "--model", str(model), "--output",
                                           str(tmp_path / labels), "--probabilities", str(tmp_path / probabilities)])
        assert result.exit_code == 0, result.output
    given = nibabel.load(scan)
    for name in ("labels.nii.gz", "labels.nii", "probabilities.nii.gz"):
        written = nibabel.load(tmp_path / name)
        np.testing.assert_allclose(written.affine, given.affine, atol=1e-4)      # z 139.3 mm, not 0
    assert nibabel.load(tmp_path / "labels.nii.gz").shape == given.shape
    assert nibabel.load(tmp_path / "probabilities.nii.gz").shape == (*given.shape, 1, 2)    # x, y, a slice, K
    in_nrrd = sitk.ReadImage(str(tmp_path / "probabilities.nrrd"))
    assert in_nrrd.GetSize() == (*given.shape, 1, 2)
    assert in_nrrd.GetOrigin()[2] == pytest.approx(given.affine[2, 3], abs=1e-3)      # its slice's z there too
    assert in_nrrd.GetSpacing()[2] == pytest.approx(3.0)
    assert (np.asarray(nibabel.load(tmp_path / "labels.nii.gz").dataobj) == 1).any()


def test_a_2d_label_or_channel_of_another_slice_is_refused(data_dir: Path, tmp_path: Path) -> None:
    import nibabel

    from runtime.errors import InputError
    from runtime.io import read_label, read_scan

    here, there = (_slice_of_ct(data_dir, tmp_path, z, f"slice{z}.nii.gz") for z in (15, 16))
    for image in (here, there):
        ct = nibabel.load(image)
        bone = nibabel.Nifti1Image((np.asarray(ct.dataobj) > 200).astype(np.uint8), ct.affine)
        nibabel.save(bone, tmp_path / image.name.replace("slice", "bone"))
    scan = read_scan([here])
    assert read_label(tmp_path / "bone15.nii.gz", scan).shape == (101, 122)
    label = nibabel.load(tmp_path / "bone15.nii.gz")
    thin = label.affine.copy()
    thin[:3, 2] /= 3                                       # another thickness: the same pixels in the same plane
    nibabel.save(nibabel.Nifti1Image(np.asarray(label.dataobj), thin), tmp_path / "thin15.nii.gz")
    np.testing.assert_array_equal(read_label(tmp_path / "thin15.nii.gz", scan),
                                  read_label(tmp_path / "bone15.nii.gz", scan))
    with pytest.raises(InputError, match="bone16.nii.gz and .*slice15.nii.gz lie in different planes"):
        read_label(tmp_path / "bone16.nii.gz", scan)
    with pytest.raises(InputError, match="slice16.nii.gz and .*slice15.nii.gz lie in different planes"):
        read_scan([here, there])


def test_a_coronal_slice_as_a_2d_nifti_or_as_a_volume_thin_along_y_is_refused_and_runs_with_its_thin_axis_last(
        data_dir: Path, tmp_path: Path) -> None:
    import nibabel

    volume = nibabel.load(data_dir / "radiology" / "totalseg_example_ct_sm.nii.gz")
    ct, affine = np.asarray(volume.dataobj).astype(np.int16), volume.affine
    coronal = affine[:, [0, 2, 1, 3]].copy()                 # x, then z; y (the thin axis) last
    coronal[:3, 3] = affine[:3, :3] @ [0, 30, 0] + affine[:3, 3]
    nibabel.save(nibabel.Nifti1Image(ct[:, 30, :], coronal), tmp_path / "coronal_2d.nii.gz")
    nibabel.save(nibabel.Nifti1Image(ct[:, 30:31, :], affine),
                 tmp_path / "thin_along_y.nii.gz")
    nibabel.save(nibabel.Nifti1Image(ct[:, 30, :][:, :, np.newaxis], coronal), tmp_path / "thin_last.nii.gz")
    spacing = np.linalg.norm(coronal[:3, :3], axis=0)
    nibabel.save(nibabel.Nifti1Image(ct[:, 30, :], np.diag([*spacing, 1.0])), tmp_path / "same_pixels.nii.gz")
    model = _bone_2d(tmp_path)
    run_failing(["predict", str(tmp_path / "coronal_2d.nii.gz"), "--model", str(model), "--output",
                 str(tmp_path / "a.nii.gz")], "coronal_2d.nii.gz is a 2D NIfTI image whose sform or qform lays it "
                "outside the axial plane", "save it as a volume one slice thick along z")
    tilted = affine.copy()
    turn = np.array([[1, 0, 0], [0, np.cos(0.5), -np.sin(0.5)], [0, np.sin(0.5), np.cos(0.5)]])   # about x
    tilted[:3, :3] = turn @ affine[:3, :3]
    nibabel.save(nibabel.Nifti1Image(ct[:, :, 15], tilted), tmp_path / "tilted_2d.nii.gz")
    run_failing(["predict", str(tmp_path / "tilted_2d.nii.gz"), "--model", str(model), "--output",
                 str(tmp_path / "t.mha")], "tilted_2d.nii.gz is a 2D NIfTI image whose sform or qform lays it "
                "outside the axial plane (a coronal, sagittal or tilted slice)")
    run_failing(["predict", str(tmp_path / "thin_along_y.nii.gz"), "--model", str(model), "--output",
                 str(tmp_path / "b.nii.gz")], "thin_along_y.nii.gz is a volume of 122×1×30 voxels, one voxel thick "
                "along y", "save it with its thin axis last")
    for name in ("thin_last", "same_pixels"):
        result = CliRunner().invoke(main, ["predict", str(tmp_path / f"{name}.nii.gz"), "--model", str(model),
                                           "--output", str(tmp_path / f"{name}.labels.nii.gz")])
        assert result.exit_code == 0, result.output
    thin, flat = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{n}.labels.nii.gz")))
                  for n in ("thin_last", "same_pixels"))
    np.testing.assert_array_equal(thin[0], flat)             # the coronal slice, read as one slice
    assert flat.any()


def test_a_label_written_through_simpleitk_which_drops_the_slices_place_is_read_with_its_image(
        data_dir: Path, tmp_path: Path) -> None:
    from runtime.io import read_label, read_scan

    here = _slice_of_ct(data_dir, tmp_path, 15, "slice15.nii.gz")
    image = sitk.ReadImage(str(here))                        # ITK's 2D grid: the slice's z is not kept
    bone = sitk.Cast(image > 200, sitk.sitkUInt8)
    sitk.WriteImage(bone, str(tmp_path / "bone.nii.gz"))
    scan = read_scan([here])
    np.testing.assert_array_equal(read_label(tmp_path / "bone.nii.gz", scan), sitk.GetArrayFromImage(bone))


def test_evaluate_refuses_a_prediction_of_another_slice_than_its_label(data_dir: Path, tmp_path: Path) -> None:
    import nibabel

    for folder, z in (("predictions", 16), ("labels", 15)):
        (tmp_path / folder).mkdir()
        ct = nibabel.load(_slice_of_ct(data_dir, tmp_path, z, f"slice{z}.nii.gz"))
        bone = nibabel.Nifti1Image((np.asarray(ct.dataobj) > 200).astype(np.uint8), ct.affine)
        nibabel.save(bone, tmp_path / folder / "case.nii.gz")
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "predictions"), str(tmp_path / "labels"),
                                       "--output-dir", str(tmp_path / "scores"), "--classes", "1:bone"])
    assert result.exit_code == 1, result.output
    assert "lie in different planes" in result.output and "case.nii.gz" in result.output, result.output
