"""The NIfTI header checks: the data size a header announces, and refusing truncated files."""
from __future__ import annotations

import gzip
import struct
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


def _written(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 2.5))
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def test_files_are_decoded_straight_into_the_scans_float32_array_as_itk_reads_them(tmp_path: Path) -> None:
    """read_scan decodes files whose stored voxels ITK gives as they are into its float32 array
    (`Opened.decode`); the voxels are those ITK reads, whatever the format, element type, byte
    order or compression, and a file ITK must convert itself (a scaled NIfTI) is read by ITK."""
    from runtime.io import read_scan
    from runtime.io.scan import open_image

    rng = np.random.default_rng(3)
    shape = (7, 33, 45)
    files = [
        _written(tmp_path / "a.nii.gz", rng.integers(-1000, 3000, shape, dtype=np.int16)),
        _written(tmp_path / "b.nii", rng.integers(0, 255, shape, dtype=np.uint8), compress=False),
        _written(tmp_path / "c.mha", rng.standard_normal(shape).astype(np.float32)),
        _written(tmp_path / "d.nrrd", rng.integers(0, 60000, shape, dtype=np.uint16)),
    ]
    big = tmp_path / "e.nrrd"
    body = rng.integers(-30000, 30000, shape, dtype=np.int16)
    big.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 45 33 7\nspacings: 0.8 0.9 2.5\nendian: big\n"
                    b"encoding: gzip\n\n" + gzip.compress(body.astype(">i2").tobytes()))
    files.append(big)
    assert all(open_image(path).decode is not None for path in files)
    scan = read_scan(files)
    expected = [sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32) for path in files]
    np.testing.assert_array_equal(scan.array_zyx, np.stack(expected))
    np.testing.assert_array_equal(scan.array_zyx[-1], body)
    assert scan.spacing_zyx == pytest.approx((2.5, 0.9, 0.8))
    plain = _written(tmp_path / "plain.nii", rng.integers(0, 100, shape, dtype=np.int16), compress=False)
    header = bytearray(plain.read_bytes())
    header[112:120] = struct.pack("<ff", 2.0, 5.0)       # scl_slope, scl_inter: ITK gives 2 v + 5
    scaled = tmp_path / "scaled.nii"
    scaled.write_bytes(bytes(header))
    assert open_image(scaled).decode is None
    mixed = read_scan([files[0], scaled])
    itk_read = sitk.GetArrayFromImage(sitk.ReadImage(str(scaled))).astype(np.float32)
    np.testing.assert_array_equal(itk_read, sitk.GetArrayFromImage(sitk.ReadImage(str(plain))) * 2.0 + 5.0)
    np.testing.assert_array_equal(mixed.array_zyx, np.stack([expected[0], itk_read]))


def test_a_damaged_channel_decoded_into_the_scan_names_its_file(tmp_path: Path) -> None:
    from runtime.io import read_scan

    data, voxels = _int16_nifti_gz(tmp_path / "cut.nii.gz")
    good = tmp_path / "good.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(voxels), str(good), useCompression=True)
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) - 9])
    with pytest.raises(InputError, match="cut.nii.gz is truncated"):
        read_scan([good, tmp_path / "cut.nii.gz"])
    nan = voxels.astype(np.float32)
    nan[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "nan.nii.gz"), useCompression=True)
    with pytest.raises(InputError, match="nan.nii.gz holds 1 NaN or infinite voxels"):
        read_scan([good, tmp_path / "nan.nii.gz"])


def test_a_float64_voxel_beyond_single_precision_is_refused_not_made_infinite(tmp_path: Path) -> None:
    from runtime.io import read_scan

    voxels = np.ones((4, 8, 8))
    voxels[1, 2, 3] = 1e39
    path = tmp_path / "wide.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(voxels), str(path), useCompression=True)
    with pytest.raises(InputError, match=r"wide.nii.gz holds 1 voxels beyond single precision's range"):
        read_scan([path])
    voxels[1, 2, 3] = 1e38                                       # within range: read as it is
    sitk.WriteImage(sitk.GetImageFromArray(voxels), str(path), useCompression=True)
    assert read_scan([path]).array_zyx[0, 1, 2, 3] == np.float32(1e38)


def test_a_nifti_scaled_past_single_precision_is_named_so(tmp_path: Path) -> None:
    from runtime.io import read_scan

    path = _written(tmp_path / "plain.nii", np.full((4, 8, 8), 100, dtype=np.int16), compress=False)
    header = bytearray(path.read_bytes())
    header[112:116] = struct.pack("<f", 1e38)                    # scl_slope: 100 x 1e38 is past float32
    path.write_bytes(bytes(header))
    with pytest.raises(InputError, match=r"holds 256 voxels beyond single precision's range .* NIfTI scl_slope"):
        read_scan([path])
