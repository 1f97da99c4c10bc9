"""Inputs that lie: damaged, truncated, impossible or oversized files and DICOM series are refused
with one `error:` line naming the file and the field, before anything is written."""
from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from runtime.errors import InputError
from runtime.io import read_image, read_scan
from tests.conftest import DEMO, missing
from tests.dicomkit import add_report
from tests.modelkit import blob_volume, run_failing, write_scan

CT = Path("radiology") / "totalseg_example_ct_sm.nii.gz"


def _predict(scan: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", str(scan), "--model", str(model), "--output", str(out), *extra]


def _flip(data: bytes, at: int, count: int = 16) -> bytes:
    damaged = bytearray(data)
    damaged[at:at + count] = bytes(255 - b for b in damaged[at:at + count])
    return bytes(damaged)


def test_a_nii_gz_with_flipped_bytes_is_refused_not_segmented(tmp_path, data_dir, model_dir):
    """16 bytes flipped in the middle of the real CT: gzip -t reports a CRC error; ITK decodes it
    into a volume whose voxels differ in half the places."""
    data = (data_dir / CT).read_bytes()
    scan = tmp_path / "ct.nii.gz"
    scan.write_bytes(_flip(data, len(data) // 2))
    out = tmp_path / "mask.nii.gz"
    run_failing(_predict(scan, model_dir, out), "ct.nii.gz is damaged", "fail their check")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "repo"]


def _write(tmp_path: Path, name: str, compress: bool = True) -> Path:
    array = (blob_volume((12, 20, 24)) * 10).astype(np.int16)
    return write_scan(tmp_path / name, array, (1.0, 1.2, 2.0)) if not compress else \
        _compressed(tmp_path / name, array)


def _compressed(path: Path, array: np.ndarray) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.2, 2.0))
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


@pytest.mark.parametrize("name", ["scan.mha", "scan.nrrd"])
def test_damaged_compressed_mha_and_nrrd_are_refused(tmp_path, name):
    """ITK reads a compressed MetaImage with damaged data without complaint."""
    path = _write(tmp_path, name)
    data = path.read_bytes()
    path.write_bytes(_flip(data, len(data) * 3 // 4, 8))
    with pytest.raises(InputError, match=rf"{name} is damaged: its compressed data fail their check"):
        read_scan([path])


def test_a_truncated_compressed_mha_is_refused(tmp_path):
    path = _write(tmp_path, "scan.mha")
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(InputError, match=r"scan\.mha is truncated"):
        read_scan([path])


def _nifti_with(tmp_path: Path, data_dir: Path, offset: int, fmt: str, value: object) -> Path:
    raw = bytearray(gzip.decompress((data_dir / CT).read_bytes()))
    struct.pack_into("<" + fmt, raw, offset, value)
    path = tmp_path / "edited.nii.gz"
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


@pytest.mark.parametrize("offset, fmt, value, field", [
    (80, "f", 0.0, "pixdim[1..3] is 0 3 3"),
    (80, "f", -1.0, "pixdim[1..3] is -1 3 3"),
    (80, "f", float("nan"), "pixdim[1..3] is nan 3 3"),
    (80, "f", 1e-30, "pixdim[1..3] is 1e-30 3 3"),
    (80, "f", 1e30, "pixdim[1..3] is 1e+30 3 3"),
    (42, "h", -40, "dim[1..3] is -40 101 30"),
    (108, "f", -1e9, "vox_offset is -1e+09"),
    (108, "f", float("nan"), "vox_offset is nan"),
    (108, "f", float("inf"), "vox_offset is inf"),
    (70, "h", 32, "datatype is 32 (complex64)"),
    (70, "h", 99, "datatype is 99"),
    (116, "f", float("inf"), "scl_inter is inf"),
    (280, "f", 30.0, "srow_x, srow_y, srow_z is [30 0 0 0 3 0 0 0 3]; its axes must be at right angles and as long as "
                     "pixdim[1..3] (3 3 3)"),
    (284, "f", 1.0, "srow_x, srow_y, srow_z is [3 1 0 0 3 0 0 0 3]"),
])
def test_impossible_nifti_header_fields_are_named(tmp_path, data_dir, model_dir, offset, fmt, value, field):
    path = _nifti_with(tmp_path, data_dir, offset, fmt, value)
    run_failing(_predict(path, model_dir, tmp_path / "m.nii.gz"), "edited.nii.gz: header field " + field)
    assert not (tmp_path / "m.nii.gz").exists()


@pytest.mark.parametrize("offset, fmt, values, expected", [
    (108, "<f", (1e9,), "its header puts the voxel data at byte 1000000000 (the data offset: NIfTI's vox_offset"),
    (42, "<3h", (32767, 32767, 32767), "is truncated or its header lies: it holds 48000 bytes of the 70362301923326"),
])
def test_an_uncompressed_nifti_whose_header_lies_about_its_data_is_named_so(tmp_path, model_dir, offset, fmt, values,
                                                                            expected):
    plain = tmp_path / "plain.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((20, 30, 40), np.int16)), str(plain))
    data = bytearray(plain.read_bytes())
    data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    plain.write_bytes(bytes(data))
    line = run_failing(_predict(plain, model_dir, tmp_path / "m.nii.gz"), expected)
    assert "holds -" not in line                                           # never a negative count of bytes
    assert not (tmp_path / "m.nii.gz").exists()


def _mha_with(tmp_path: Path, data_dir: Path, key: str, value: str) -> Path:
    source = tmp_path / "source.mha"
    sitk.WriteImage(sitk.ReadImage(str(data_dir / CT)), str(source))
    lines = source.read_bytes().split(b"\n")
    edited = [f"{key} = {value}".encode() if line.startswith(key.encode() + b" =") else line for line in lines]
    path = tmp_path / "edited.mha"
    path.write_bytes(b"\n".join(edited))
    return path


def _mha_replaced(tmp_path: Path, data_dir: Path, old: bytes, new: bytes) -> Path:
    """The test CT as edited.mha, its header's first `old` replaced by `new`."""
    source = tmp_path / "source.mha"
    sitk.WriteImage(sitk.ReadImage(str(data_dir / CT)), str(source))
    data = source.read_bytes()
    assert old in data
    path = tmp_path / "edited.mha"
    path.write_bytes(data.replace(old, new, 1))
    return path


@pytest.mark.parametrize("key, value, expected", [
    ("ElementSpacing", "-1 3 3", "header field ElementSpacing is -1 3 3"),
    ("ElementSpacing", "1e-30 3 3", "header field ElementSpacing is 1e-30 3 3"),
    ("ElementSpacing", "1e30 3 3", "header field ElementSpacing is 1e+30 3 3"),
    ("TransformMatrix", "1 0.5 0 0 1 0 0 0 1", "header field TransformMatrix is 1 0.5 0 0 1 0 0 0 1; its axes "
                                               "must be orthonormal"),
    ("DimSize", "122 0 30", "header field DimSize is 122 0 30"),
    ("ElementType", "MET_STRING", "header field ElementType is 'MET_STRING'"),
])
def test_impossible_metaimage_header_fields_are_named(tmp_path, data_dir, model_dir, key, value, expected):
    path = _mha_with(tmp_path, data_dir, key, value)
    run_failing(_predict(path, model_dir, tmp_path / "m.nii.gz"), f"edited.mha: {expected}")
    assert not (tmp_path / "m.nii.gz").exists()


@pytest.mark.parametrize("edit, expected", [
    ((b"BinaryDataByteOrderMSB = False", b"binarydatabyteordermsb = True"),
     "its header key 'binarydatabyteordermsb' is spelt otherwise than MetaIO reads it ('BinaryDataByteOrderMSB'"),
    ((b"ElementType", b"HeaderSize = 8\nElementType"),
     "header field HeaderSize is '8'; the data follow the header (ElementDataFile = LOCAL)"),
])
def test_a_metaimage_header_metaio_would_read_another_way_is_refused(tmp_path, data_dir, model_dir, edit, expected):
    """MetaIO matches keys case and all, and skips HeaderSize bytes of LOCAL data: each of these
    read otherwise would give every voxel another value."""
    path = _mha_replaced(tmp_path, data_dir, *edit)
    run_failing(_predict(path, model_dir, tmp_path / "m.nii.gz"), f"edited.mha: {expected}")
    assert not (tmp_path / "m.nii.gz").exists()


@pytest.mark.parametrize("edit", [
    (b"BinaryDataByteOrderMSB = False", b"BinaryDataByteOrderMSB = 1"),
    (b"BinaryDataByteOrderMSB = False", b"BinaryDataByteOrderMSB = T"),
    (b"BinaryDataByteOrderMSB = False", b"BinaryDataByteOrderMSB = 0"),
    (b"CompressedData = False", b"CompressedData = F"),
    (b"ElementType", b"HeaderSize = -1\nElementType"),
])
def test_metaimage_flags_and_sizes_are_read_as_metaio_reads_them(tmp_path, data_dir, edit):
    """A flag is true where it begins with T, t or 1 (a big-endian file here), and HeaderSize -1
    puts the voxels at the end of the file: the runtime's voxels are ITK's."""
    from runtime.io import read_scan

    path = _mha_replaced(tmp_path, data_dir, *edit)
    np.testing.assert_array_equal(read_scan([path]).array_zyx[0], sitk.GetArrayFromImage(sitk.ReadImage(str(path))))


def test_a_small_nrrd_promising_gigabytes_is_refused_from_its_header(tmp_path, model_dir):
    """10 KB of gzip claiming 2000 × 2000 × 1000 floats: ITK would allocate 16 GB before failing."""
    header = b"NRRD0004\ntype: float\ndimension: 3\nsizes: 2000 2000 1000\nencoding: gzip\nendian: little\n\n"
    path = tmp_path / "claims.nrrd"
    path.write_bytes(header + gzip.compress(bytes(10_000_000), 1)[:10_000])
    run_failing(_predict(path, model_dir, tmp_path / "m.nii.gz"), "claims.nrrd is truncated or its header lies",
                "16.0 GB")


def test_an_image_over_the_memory_budget_is_refused_from_its_header(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("MEDFLOW_MAX_MEMORY", "20K")
    path = _write(tmp_path, "scan.nii.gz")
    run_failing(_predict(path, model_dir, tmp_path / "m.nii.gz"), "reading", "scan.nii.gz (24×20×12 voxels) needs "
                "about 34.6 KB, more than the memory budget of 20.5 KB (MEDFLOW_MAX_MEMORY)")


def test_a_prediction_over_the_memory_budget_is_refused_before_reading(tmp_path, model_dir, monkeypatch):
    """The image itself fits; its preprocessed grid and the window's sums do not."""
    path = _write(tmp_path, "scan.nii.gz")
    monkeypatch.setenv("MEDFLOW_MAX_MEMORY", "100K")
    run_failing(_predict(path, model_dir, tmp_path / "m.nii.gz"), "predicting", "scan.nii.gz",
                "more than the memory budget")


def test_a_scan_that_resampling_would_blow_up_is_refused(tmp_path):
    """36 KB sent with a spacing of 60 × 45 × 45 mm would become 480 × 720 × 720 voxels for the demo model."""
    from runtime.predict import load_model, predict_scan

    path = write_scan(tmp_path / "coarse.nii.gz", blob_volume((16, 24, 24)), (45.0, 45.0, 60.0))
    model = load_model(DEMO, device="cpu")
    with pytest.raises(InputError, match=r"makes 480×720×720 voxels, 27000 times as many; the runtime enlarges a "
                                         r"scan at most 64 times"):
        predict_scan(model, read_scan([path]))


def test_a_detached_nrrd_whose_data_file_leaves_its_folder_is_refused(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "secret.raw").write_bytes(bytes(8))
    header = inner / "scan.nhdr"
    for name in ("../secret.raw", str(tmp_path / "secret.raw")):
        header.write_text(f"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: raw\ndata file: {name}\n")
        with pytest.raises(InputError, match="header field data file is .*inside it"):
            read_image(header)
    (inner / "link.raw").symlink_to(tmp_path / "secret.raw")
    (inner / "loop_a").symlink_to(inner / "loop_b")
    (inner / "loop_b").symlink_to(inner / "loop_a")
    for name in ("link.raw", "loop_a"):
        header.write_text(f"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: raw\ndata file: {name}\n")
        with pytest.raises(InputError, match="a link that leads out of it"):
            read_image(header)


def test_a_detached_nrrd_inside_its_folder_is_read(tmp_path):
    (tmp_path / "scan.raw").write_bytes(bytes(range(8)))
    header = tmp_path / "scan.nhdr"
    header.write_text("NRRD0004\ntype: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: raw\ndata file: scan.raw\n")
    assert sitk.GetArrayFromImage(read_image(header)).ravel().tolist() == list(range(8))
    (tmp_path / "scan.raw").write_bytes(bytes(range(9)))
    with pytest.raises(InputError, match="holds 1 bytes more data than its header describes"):
        read_image(header)


def _series(tmp_path: Path, data_dir: Path, name: str = "totalseg_ct_series") -> Path:
    """A writable copy of one of the shared DICOM series."""
    folder = tmp_path / name
    shutil.copytree(data_dir / "dicom" / name, folder)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


@pytest.mark.slow
def test_a_truncated_dicom_slice_is_named_not_dropped(tmp_path, data_dir, model_dir):
    """ITK leaves the slice out and builds 19 slices at 2.111 mm."""
    folder = _series(tmp_path, data_dir)
    victim = sorted(folder.iterdir())[4]
    victim.write_bytes(victim.read_bytes()[:victim.stat().st_size // 2])
    run_failing(_predict(folder, model_dir, tmp_path / "m.nii.gz"), victim.name, "is not a readable slice")
    assert not (tmp_path / "m.nii.gz").exists()


def test_an_uncompressed_slice_with_less_pixel_data_than_its_header_promises_is_refused(tmp_path, data_dir):
    """Its pixel data element says its own (short) length, so GDCM reads it and fills the rest."""
    try:
        import pydicom
    except ImportError:
        missing("pydicom is not installed: pip install -e '.[dev]'")
    folder = tmp_path / "short"
    shutil.copytree(data_dir / "dicom" / "dcmqi_ct3", folder)
    victim = sorted(folder.iterdir())[1]
    dataset = pydicom.dcmread(victim)
    dataset.PixelData = dataset.PixelData[: len(dataset.PixelData) // 2]
    dataset.save_as(victim)
    with pytest.raises(InputError, match=rf"{victim.name} holds 262,144 bytes of pixel data, fewer than the 524,288 "
                                         r"its header promises \(512 x 512, 16 bits"):
        read_image(folder)
    victim.write_bytes(sorted((data_dir / "dicom" / "dcmqi_ct3").iterdir())[1].read_bytes()[:-1500])   # cut short
    with pytest.raises(InputError, match=rf"{victim.name} (holds 522,788 bytes of pixel data|is in DICOM series)"):
        read_image(folder)
    assert read_image(data_dir / "dicom" / "totalseg_ct_series").GetSize() == (512, 512, 20)   # JPEG 2000: not sized


def test_a_missing_dicom_slice_is_a_gap(tmp_path, data_dir):
    folder = _series(tmp_path, data_dir)
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    Path(files[10]).unlink()
    with pytest.raises(InputError, match="lie 4 mm apart, the others 2 mm: a slice is missing"):
        read_image(folder)


def test_a_duplicate_dicom_slice_is_refused(tmp_path, data_dir):
    folder = _series(tmp_path, data_dir)
    first = sorted(folder.iterdir())[3]
    shutil.copyfile(first, folder / "copy_of_a_slice")
    with pytest.raises(InputError, match=r"lie at the same position .* the series holds a duplicate \(remove one\), "
                                         r"or several echoes, acquisitions or time points at each position"):
        read_image(folder)


def test_a_file_in_a_series_folder_that_is_no_slice_is_named(tmp_path, data_dir):
    folder = _series(tmp_path, data_dir)
    (folder / "notes.txt").write_text("not a slice\n")
    with pytest.raises(InputError, match=r"notes\.txt is in DICOM series folder .* not a readable slice"):
        read_image(folder)
    (folder / "notes.txt").unlink()
    (folder / ".DS_Store").write_bytes(b"\0")
    assert read_image(folder).GetSize() == (512, 512, 20)


def test_a_report_beside_the_slices_is_left_out_with_a_warning(tmp_path, data_dir, caplog):
    """A DICOM object without pixel data (a structured report a modality put in the study's folder)
    is no slice and no damage: it is left out, named in a warning."""
    folder = _series(tmp_path, data_dir)
    add_report(folder)
    assert read_image(folder).GetSize() == (512, 512, 20)
    assert "zz_report.dcm is a DICOM object without pixel data (SOP class 1.2.840.10008.5.1.4.1.1.88.11" in caplog.text


def test_a_complete_series_reads_as_it_was_acquired(data_dir):
    image = read_image(data_dir / "dicom" / "totalseg_ct_series")
    assert image.GetSize() == (512, 512, 20)
    assert np.allclose(image.GetSpacing(), (0.9765625, 0.9765625, 2.0))


@pytest.mark.parametrize("suffix", [".jpg", ".bmp"])
def test_truncated_jpeg_and_bmp_are_refused(tmp_path, suffix):
    """libjpeg fills a truncated JPEG with grey, ITK reads a short BMP's missing rows as garbage."""
    path = tmp_path / f"slice{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray((np.add.outer(np.arange(60), np.arange(80)) % 256).astype(np.uint8)),
                    str(path))
    read_image(path)
    path.write_bytes(path.read_bytes()[:path.stat().st_size * 2 // 3])
    with pytest.raises(InputError, match="is truncated"):
        read_image(path)


def test_a_format_without_checks_is_refused(tmp_path):
    path = tmp_path / "scan.vtk"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 5, 6), np.uint8)), str(path))
    with pytest.raises(InputError, match=r"scan\.vtk is not in a format the runtime reads"):
        read_image(path)


def test_nan_in_a_compressed_nrrd_is_refused(tmp_path):
    array = blob_volume((6, 8, 10))
    array[2, 3, 4] = np.nan
    path = _compressed(tmp_path / "scan.nrrd", array)
    with pytest.raises(InputError, match="1 NaN or infinite voxels"):
        read_scan([path])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _itk_nifti(tmp_path: Path) -> bytearray:
    """A NIfTI written by ITK (qform and sform both set), uncompressed."""
    image = sitk.GetImageFromArray(blob_volume((6, 8, 10)).astype(np.int16))
    image.SetSpacing((1.0, 1.5, 2.0))
    sitk.WriteImage(image, str(tmp_path / "itk.nii"))
    return bytearray((tmp_path / "itk.nii").read_bytes())


def test_a_qform_and_sform_on_two_grids_are_refused(tmp_path):
    """ITK takes one form, nibabel and most viewers the other: the output would not be on the input's grid."""
    data = _itk_nifti(tmp_path)
    assert struct.unpack("<hh", data[252:256]) == (1, 1)
    struct.pack_into("<f", data, 292, 30.0)  # srow_x[3]: the sform's origin moves 30 mm along x
    (tmp_path / "two_grids.nii").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"header field qform, sform is .*a qform and an sform that are both set must "
                                         r"describe one grid"):
        read_image(tmp_path / "two_grids.nii")


def test_a_nan_scl_slope_means_no_scaling(tmp_path):
    """As niftilib and nibabel read it."""
    data = _itk_nifti(tmp_path)
    struct.pack_into("<2f", data, 112, float("nan"), float("nan"))
    (tmp_path / "unscaled.nii").write_bytes(bytes(data))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(tmp_path / "unscaled.nii")),
                                  blob_volume((6, 8, 10)).astype(np.int16))


def test_intensities_too_large_to_normalise_are_refused(tmp_path, data_dir, model_dir):
    path = _nifti_with(tmp_path, data_dir, 112, "f", 1e30)
    run_failing(_predict(path, model_dir, tmp_path / "m.nii.gz"), "intensities are too large to normalise")


def test_a_nifti_2_file_is_refused_by_name(tmp_path):
    path = tmp_path / "two.nii"
    path.write_bytes(struct.pack("<i", 540) + bytes(536))
    with pytest.raises(InputError, match="is a NIfTI-2 file, which this runtime does not read; save it as NIfTI-1"):
        read_image(path)


def _nrrd(tmp_path: Path, fields: str, data: bytes = bytes(range(8))) -> Path:
    path = tmp_path / "scan.nrrd"
    path.write_bytes(b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n" + fields.encode()
                     + b"\n" + data)
    return path


@pytest.mark.parametrize("fields, expected", [
    ("kinds: domain domain\n", "header field kinds is domain domain; it must give one kind per axis"),
    ("space directions: (1,0,0) (0,1,0) none\nkinds: domain domain domain\n", "axis 3 is of kind domain but has "
                                                                             "no direction"),
    ("space directions: (1,0,0) (0,1,0)\n", "it must give one vector or none per axis"),
    ("space origin: (nan,0,0)\n", "header field space origin is nan 0 0"),
    ("space: LPS\nspace directions: (0.002,0,0) (0,0.002,0) (0,0,0.003)\nspace units: \"m\" \"m\" \"m\"\n",
     'space units are "m" "m" "m"; the runtime reads spacings in mm only'),
    ("space: LPS\nspace directions: (2,0,0) (0,2,0) (0,0,3)\nspace units: \"mm\" \"um\" \"mm\"\n",
     "convert the file to mm"),
    ("spacings: 0.1 0.1 0.25\nunits: \"cm\" \"cm\" \"cm\"\n", 'units are "cm" "cm" "cm"; the runtime reads'),
])
def test_impossible_nrrd_fields_are_named(tmp_path, fields, expected):
    with pytest.raises(InputError, match=re.escape(expected)):
        read_image(_nrrd(tmp_path, fields))


TEEM_FIELDS = ["space: LPS\nspace directions: (2, 0, 0) (0, 2, 0) (0, 0, 3)\n", "byteskip: 4\n",
               'space: LPS\nspace directions: (2,0,0) (0,2,0) (0,0,3)\nspace units: "mm" "mm" "mm"\n',
               "space: LPS\nspace directions: (2,0,0) (0,2,0) (0,0,3)\nkinds: domain domain domain\n",
               'spacings: 2 2 3\nunits: "mm" "none" ""\n',
               'spacings: 2 2 3\nunits: "mm" "mm" "mm"\nkinds: domain domain domain\n']


@pytest.mark.parametrize("fields", TEEM_FIELDS)
def test_nrrd_fields_as_teem_writes_them_are_read(tmp_path, fields):
    data = (bytes(4) if "byteskip" in fields else b"") + bytes(range(8))
    image = read_image(_nrrd(tmp_path, fields, data))
    assert sitk.GetArrayFromImage(image).ravel().tolist() == list(range(8))


def test_gzip_members_that_end_on_a_read_boundary_are_read(tmp_path, monkeypatch):
    """A bgzip-style file of many members: each member's end may fall on the end of a read chunk."""
    import runtime.io.streams as streams

    array = (blob_volume((8, 16, 16)) * 10).astype(np.int16)
    path = write_scan(tmp_path / "scan.nii", array)
    plain = path.read_bytes()
    members = [gzip.compress(plain[start:start + 1000], mtime=0) for start in range(0, len(plain), 1000)]
    packed = tmp_path / "scan.nii.gz"
    packed.write_bytes(b"".join(members))
    for chunk in (len(members[0]), len(members[0]) - 1, len(members[0]) + 1, 7):
        monkeypatch.setattr(streams, "_CHUNK", chunk)
        np.testing.assert_array_equal(read_scan([packed]).array_zyx[0], array)


def _set_tag(path: Path, keyword: str, value: object) -> None:
    import pydicom

    dataset = pydicom.dcmread(path)
    setattr(dataset, keyword, value)
    dataset.save_as(path)


@pytest.mark.parametrize("keyword, value, expected", [
    ("PixelSpacing", [0, 0], "header field Pixel Spacing (0028,0030) is 0 0"),
    ("PixelSpacing", [-1, -1], "header field Pixel Spacing (0028,0030) is -1 -1"),
    ("ImageOrientationPatient", [1, 0, 0, 0.3, 1, 0], "header field Image Orientation (Patient) (0020,0037) is 1 0 0 "
                                                      "0.3 1 0; it must be two unit vectors at right angles"),
])
def test_impossible_dicom_slices_are_named(tmp_path, data_dir, keyword, value, expected):
    folder = _series(tmp_path, data_dir, "dcmqi_ct3")
    _set_tag(folder / "02.dcm", keyword, value)
    with pytest.raises(InputError, match=re.escape(expected)):
        read_image(folder)


def test_a_dicom_series_is_planned_on_its_own_slice_step(data_dir):
    from runtime.io.scan import open_image

    assert open_image(data_dir / "dicom" / "totalseg_ct_series").spacing == pytest.approx((0.9765625, 0.9765625, 2.0))


def test_a_jpeg_with_a_trailer_after_its_image_is_read(tmp_path):
    path = tmp_path / "slice.jpg"
    sitk.WriteImage(sitk.GetImageFromArray((np.add.outer(np.arange(60), np.arange(80)) % 256).astype(np.uint8)),
                    str(path))
    path.write_bytes(path.read_bytes() + b"camera trailer \xff\xd8 with bytes")
    assert read_image(path).GetSize() == (80, 60)


def test_a_rescale_slope_past_single_precision_is_named_in_one_line(tmp_path, data_dir, model_dir):
    folder = _series(tmp_path, data_dir, "dcmqi_ct3")
    for path in folder.iterdir():
        _set_tag(path, "RescaleSlope", 1e38)
    line = run_failing(_predict(folder, model_dir, tmp_path / "m.nii.gz"),
                       "voxels beyond single precision's range (±3.4e38)", "Rescale Slope (0028,1053)")
    assert "NaN" not in line and not (tmp_path / "m.nii.gz").exists()


@pytest.mark.parametrize("keyword, value", [("Rows", 0), ("BitsAllocated", 64)])
def test_a_dicom_image_gdcm_cannot_read_names_the_fields_to_check(tmp_path, data_dir, keyword, value):
    folder = _series(tmp_path, data_dir, "dcmqi_ct3")
    for path in folder.iterdir():
        _set_tag(path, keyword, value)
    with pytest.raises(InputError) as caught:
        read_image(folder)
    message = str(caught.value)
    assert "Rows (0028,0010), Columns (0028,0011), Bits Allocated (0028,0100)" in message, message
    assert "folder without a DICOM series" not in message


def test_raw_dicom_data_sets_without_preamble_or_file_meta_are_named_with_the_remedy(tmp_path, data_dir):
    """Data sets written raw (no preamble, 'DICM' nor file meta), which GDCM does not read, were
    said to need their Rows and Pixel Data checked, or to be no DICOM series at all; rewritten by
    dcmtk's dcmconv +F, as the remedy says, they are read as the original series."""
    import subprocess

    import pydicom

    from tests.dicomkit import dcmtk_tool

    source = data_dir / "dicom" / "dcmqi_ct3"
    raw = tmp_path / "raw"
    raw.mkdir()
    for path in sorted(source.iterdir()):
        dataset = pydicom.dcmread(path)
        implicit = dataset.file_meta.TransferSyntaxUID.is_implicit_VR
        dataset.file_meta, dataset.preamble = pydicom.dataset.FileMetaDataset(), None
        pydicom.dcmwrite(raw / path.name, dataset, implicit_vr=implicit, little_endian=True,
                         enforce_file_format=False)
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(sorted(raw.iterdir())[0], one)
    for given in (raw, one, sorted(raw.iterdir())[0]):
        with pytest.raises(InputError) as caught:
            read_image(given)
        assert "is a raw DICOM data set, without the 128-byte preamble" in str(caught.value), caught.value
        assert "dcmconv +F IN OUT" in str(caught.value) and "Rows (0028,0010)" not in str(caught.value)
    dcmconv = dcmtk_tool("dcmconv") or missing("dcmtk's dcmconv is not installed: apt-get install dcmtk")
    rewritten = tmp_path / "rewritten"
    rewritten.mkdir()
    for path in sorted(raw.iterdir()):
        subprocess.run([dcmconv, "+F", str(path), str(rewritten / path.name)], check=True)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(rewritten)),
                                  sitk.GetArrayFromImage(read_image(source)))


def test_an_nrrd_unit_of_a_non_spatial_axis_is_not_held_to_mm(tmp_path):
    path = tmp_path / "vector.nrrd"
    header = (b"NRRD0004\ntype: uchar\ndimension: 4\nsizes: 2 2 2 2\nencoding: raw\nkinds: vector domain domain domain\n"
              b"spacings: nan 1 1 2\nunits: \"intensity\" \"mm\" \"mm\" \"%s\"\n\n")
    path.write_bytes(header % b"mm" + bytes(16))
    from runtime.io.nrrd import nrrd_header

    assert nrrd_header(path).spacing == (1.0, 1.0, 2.0)
    path.write_bytes(header % b"cm" + bytes(16))
    with pytest.raises(InputError, match='units are "intensity" "mm" "mm" "cm"'):
        nrrd_header(path)
