"""The NIfTI header checks: the data size a header announces, and refusing truncated files."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from runtime.errors import InputError
from runtime.io.nifti import NIFTI_HEADER_SIZE, nifti_header
from runtime.io.scan import check_image_file
from runtime.io.streams import verify_stream


@pytest.mark.parametrize("pixel, size", [(sitk.sitkUInt8, (5, 4, 3)), (sitk.sitkInt16, (7, 6)),
                                         (sitk.sitkFloat64, (3, 3, 2))])
def test_a_file_one_byte_short_is_refused(tmp_path: Path, pixel: int, size: tuple[int, ...]) -> None:
    path = tmp_path / "image.nii"
    voxels = np.arange(int(np.prod(size))).reshape(size[::-1])
    sitk.WriteImage(sitk.Cast(sitk.GetImageFromArray(voxels), pixel), str(path))
    data = path.read_bytes()
    header = nifti_header(path)
    verify_stream(header)
    assert header.stream.start + header.nbytes == len(data)
    path.write_bytes(data[:-1])
    with pytest.raises(InputError, match="is truncated"):
        check_image_file(path)


def test_a_header_that_is_not_nifti_is_refused_by_path(tmp_path: Path) -> None:
    path = tmp_path / "fake.nii"
    path.write_bytes(bytes(NIFTI_HEADER_SIZE))
    with pytest.raises(InputError, match=r"fake\.nii does not start with a NIfTI-1 header"):
        nifti_header(path)


def _int16_nifti_gz(path: Path) -> tuple[bytes, np.ndarray]:
    voxels = (np.arange(6 * 7 * 8).reshape(6, 7, 8) * 37 % 1000).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(voxels), str(path), useCompression=True)
    return path.read_bytes(), voxels


@pytest.mark.parametrize("cut", [1, 4, 8, 9, 100, "half"])
def test_a_truncated_integer_nifti_gz_is_refused(tmp_path: Path, cut: int | str) -> None:
    path = tmp_path / "scan.nii.gz"
    data, _ = _int16_nifti_gz(path)
    keep = len(data) // 2 if cut == "half" else len(data) - int(cut)
    path.write_bytes(data[:keep])
    with pytest.raises(InputError, match=r"scan\.nii\.gz (cannot be read|is truncated)"):
        check_image_file(path)


def test_a_complete_gzip_of_several_members_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "scan.nii.gz"
    _, voxels = _int16_nifti_gz(path)
    plain = gzip.decompress(path.read_bytes())
    middle = len(plain) // 2
    path.write_bytes(gzip.compress(plain[:middle]) + gzip.compress(plain[middle:]))
    check_image_file(path)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), voxels)


def test_a_truncated_integer_nii_is_refused_by_its_length(tmp_path: Path) -> None:
    path = tmp_path / "scan.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 4, 5), dtype=np.uint8)), str(path))
    data = path.read_bytes()
    check_image_file(path)
    path.write_bytes(data[:-2])
    with pytest.raises(InputError, match="holds 58 bytes of the 60 its header describes"):
        check_image_file(path)


@pytest.mark.parametrize("damage", ["bit flip", "zeroed block"])
def test_a_damaged_integer_nifti_gz_of_the_right_length_is_refused(tmp_path: Path, damage: str) -> None:
    """The gzip trailer's length still matches; the CRC over the decoded data does not."""
    from runtime.io import read_scan

    path = tmp_path / "scan.nii.gz"
    voxels = (np.random.default_rng(0).random((30, 40, 50)) * 1000).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(voxels), str(path), useCompression=True)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    if damage == "bit flip":
        data[middle] ^= 0x10
    else:
        data[middle:middle + 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    nifti_header(path)  # the header is intact
    with pytest.raises(InputError, match=r"scan\.nii\.gz is damaged: its compressed data fail their check"):
        read_scan([path])
