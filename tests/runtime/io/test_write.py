"""Writing outputs: atomic publication, and .nii.gz files that every reader reads back exactly."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from runtime.errors import OutputError
from runtime.io.nifti import nifti_header
from runtime.io.streams import verify_stream
from runtime.io.write import OutputSet


def _reference(shape_zyx: tuple[int, ...]) -> sitk.Image:
    reference = sitk.Image(list(reversed(shape_zyx)), sitk.sitkUInt8)
    reference.SetSpacing((0.7, 0.8, 2.5))
    reference.SetOrigin((10.0, -4.0, 3.0))
    reference.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    return reference


@pytest.mark.parametrize("shape_zyx", [(3, 4, 5), (40, 160, 170)], ids=["small", "deflated in parts"])
def test_nii_gz_outputs_read_back_exactly_with_their_grid(tmp_path: Path, shape_zyx: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, shape_zyx, dtype=np.uint8)
    probabilities = rng.random((2, *shape_zyx), dtype=np.float32)
    reference = _reference(shape_zyx)
    with OutputSet() as outputs:
        outputs.image(labels, reference, tmp_path / "labels.nii.gz")
        outputs.image(probabilities, reference, tmp_path / "probabilities.nii.gz")
    image = sitk.ReadImage(str(tmp_path / "labels.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), labels)
    assert image.GetSpacing() == pytest.approx(reference.GetSpacing())
    assert image.GetOrigin() == pytest.approx(reference.GetOrigin())
    assert image.GetDirection() == pytest.approx(reference.GetDirection())
    four_d = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "probabilities.nii.gz")))
    np.testing.assert_array_equal(four_d, probabilities)
    for name in ("labels.nii.gz", "probabilities.nii.gz"):
        verify_stream(nifti_header(tmp_path / name))
        packed = (tmp_path / name).read_bytes()
        one_member = zlib.decompressobj(wbits=31)  # a reader that stops after the first gzip member
        plain = one_member.decompress(packed) + one_member.flush()
        assert one_member.eof and one_member.unused_data == b""
        assert plain == gzip.decompress(packed)
        assert len(plain) >= labels.size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii.gz", "probabilities.nii.gz"]


@pytest.mark.parametrize("name", ["ct.nii.nii.gz", "ct.nii.gz.nii.gz", "ct.nii.nii", "ct.nii.gz.nii", "ct.hdr.nii"])
def test_a_name_ending_in_another_image_suffix_is_written_under_that_name(tmp_path: Path, name: str) -> None:
    """A subject id `ct.nii` names its labels `ct.nii.nii.gz`; ITK strips such a second suffix from
    the name it is given, so the file was written elsewhere and the job failed."""
    labels = np.random.default_rng(2).integers(0, 3, (3, 4, 5), dtype=np.uint8)
    probabilities = np.random.default_rng(3).random((2, 3, 4, 5), dtype=np.float32)
    (tmp_path / "p").mkdir()
    with OutputSet() as outputs:
        outputs.image(labels, _reference((3, 4, 5)), tmp_path / name)
        outputs.image(probabilities, _reference((3, 4, 5)), tmp_path / "p" / name)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name))), labels)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "p" / name))), probabilities)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "p"])
    assert [p.name for p in (tmp_path / "p").iterdir()] == [name]


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_channels_written_from_the_array_are_byte_for_byte_the_file_itk_writes(tmp_path: Path, suffix: str) -> None:
    """A probability map goes to NIfTI straight from its array (no ITK copy of it): the file holds
    exactly the bytes ITK writes of the joined channels, and reads back on the reference's grid."""
    from runtime.io.write import to_image

    probabilities = np.random.default_rng(1).random((3, 6, 9, 11), dtype=np.float32)
    reference = _reference((6, 9, 11))
    with OutputSet() as outputs:
        outputs.image(probabilities, reference, tmp_path / f"probabilities{suffix}")
    sitk.WriteImage(to_image(probabilities, reference), str(tmp_path / "itk.nii"), useCompression=False)
    written = (tmp_path / f"probabilities{suffix}").read_bytes()
    assert (gzip.decompress(written) if suffix == ".nii.gz" else written) == (tmp_path / "itk.nii").read_bytes()
    image = sitk.ReadImage(str(tmp_path / f"probabilities{suffix}"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), probabilities)
    assert image.GetDirection()[:3] == pytest.approx(reference.GetDirection()[:3])


def test_a_failed_job_publishes_nothing_and_keeps_the_earlier_file(tmp_path: Path) -> None:
    target = tmp_path / "labels.nii.gz"
    target.write_bytes(b"earlier result")
    reference = _reference((3, 4, 5))
    with pytest.raises(OutputError, match="missing"):
        with OutputSet() as outputs:
            outputs.image(np.zeros((3, 4, 5), np.uint8), reference, target)
            outputs.image(np.zeros((3, 4, 5), np.uint8), reference, tmp_path / "missing" / "x.nii.gz")
    assert target.read_bytes() == b"earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii.gz"]


def test_a_full_disk_is_named_with_what_to_do_and_nothing_is_left(tmp_path):
    import errno

    from runtime.io.write import OutputSet

    def full(path):
        path.write_bytes(b"part")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError) as caught:
        with OutputSet() as outputs:
            outputs.file(tmp_path / "overlay.png", full)
    assert str(caught.value) == (f"cannot write {tmp_path / 'overlay.png'}: No space left on device; free space on "
                                 "its disk, or write elsewhere.")
    assert sorted(tmp_path.iterdir()) == []


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
    from click.testing import CliRunner

    from export import graphs
    from runtime.commands.cli import main
    from tests.modelkit import make_model, window

    model = make_model(tmp_path / "repository", graphs.bright_structures(2), dimensions=2, axis_order="yx",
                       preprocessing=[{"name": "normalize", "params": {"mean": [0], "std": [100]}}],
                       window=window(patch_size=[32, 32]))
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
    assert sitk.ReadImage(str(tmp_path / "probabilities.nrrd")).GetSize() == (*given.shape, 1, 2)
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
    with pytest.raises(InputError, match="bone16.nii.gz and .*slice15.nii.gz lie in different planes"):
        read_label(tmp_path / "bone16.nii.gz", scan)
    with pytest.raises(InputError, match="slice16.nii.gz and .*slice15.nii.gz lie in different planes"):
        read_scan([here, there])
