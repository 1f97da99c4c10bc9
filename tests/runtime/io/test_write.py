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

