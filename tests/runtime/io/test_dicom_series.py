"""DICOM series and files that ITK would read wrongly without a word: slices of their own pixel type
or rescale, multi-frame files, MONOCHROME1 CT, header values ITK replaces, shared instance UIDs,
positions that drift along a long series, and a slice that cannot be decoded. Each is read right,
checked against pydicom's own reading, or refused with one error naming the file and the field."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless, generate_uid

from runtime.errors import InputError
from runtime.io.scan import read_image, read_scan
from tests.dicomkit import copy_series
from tests.modelkit import run_failing


def ct3(tmp_path: Path, data_dir: Path, name: str = "ct3", edit=None) -> Path:
    """A copy of the three GE CT slices (uncompressed) as a series of its own, `edit(index, dataset)`
    applied to each."""
    copy_series(data_dir / "dicom" / "dcmqi_ct3", tmp_path / name, edit=edit)
    return tmp_path / name


def values_by_pydicom(folder: Path) -> np.ndarray:
    """The volume as pydicom reads it: slices in order along the normal, each rescaled by its own
    Rescale Slope and Intercept."""
    datasets = [pydicom.dcmread(path) for path in sorted(folder.iterdir())]
    orientation = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    datasets.sort(key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, dtype=float), normal)))
    return np.stack([d.pixel_array * float(d.get("RescaleSlope", 1)) + float(d.get("RescaleIntercept", 0))
                     for d in datasets])


def test_slices_with_their_own_rescale_or_pixel_type_are_each_read_by_their_own(tmp_path, data_dir):
    def other_slope(index, dataset):
        if index == 1:
            dataset.RescaleSlope = 0.5

    def unsigned_with_metal(index, dataset):
        if index == 1:
            pixels = dataset.pixel_array.astype(np.int32) + 1024
            pixels[200:204, 200:204] = 40000
            dataset.PixelRepresentation = 0
            dataset.RescaleIntercept = -1024
            dataset.PixelData = pixels.astype(np.uint16).tobytes()

    for name, edit in (("slope", other_slope), ("unsigned", unsigned_with_metal)):
        folder = ct3(tmp_path, data_dir, name, edit)
        read = read_scan([folder]).array_zyx[0]
        expected = values_by_pydicom(folder)
        np.testing.assert_allclose(read, expected, rtol=0, atol=1e-3)
    assert np.count_nonzero(read == 40000 - 1024) >= 16


def multi_frame(tmp_path: Path, data_dir: Path, order: list[int], name: str) -> Path:
    """The three slices as one enhanced CT file, its frames stored in `order` of rising position."""
    import highdicom

    sources = [pydicom.dcmread(path) for path in sorted((data_dir / "dicom" / "dcmqi_ct3").iterdir())]
    converted = highdicom.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=sources, series_instance_uid=generate_uid(), series_number=5,
        sop_instance_uid=generate_uid(), instance_number=1)
    groups = list(converted.PerFrameFunctionalGroupsSequence)
    heights = [float(g.PlanePositionSequence[0].ImagePositionPatient[2]) for g in groups]
    rising = list(np.argsort(heights))
    chosen = [rising[i] for i in order]
    pixels = converted.pixel_array
    converted.PerFrameFunctionalGroupsSequence = [groups[i] for i in chosen]
    converted.PixelData = np.ascontiguousarray(pixels[chosen]).tobytes()
    path = tmp_path / name / "frames.dcm"
    path.parent.mkdir()
    converted.save_as(path)
    return path


def test_a_multi_frame_file_reads_where_its_frames_rise_in_order_and_is_refused_otherwise(tmp_path, data_dir):
    series = read_scan([data_dir / "dicom" / "dcmqi_ct3"])
    path = multi_frame(tmp_path, data_dir, [0, 1, 2], "rising")
    for given in (path, path.parent):
        read = read_scan([given])
        np.testing.assert_array_equal(read.array_zyx, series.array_zyx)
        assert read.reference.GetOrigin() == pytest.approx(series.reference.GetOrigin())
        assert read.reference.GetSpacing() == pytest.approx(series.reference.GetSpacing())
    with pytest.raises(InputError, match=r"frame \d of 3 lies at .* the frames are out of order"):
        read_image(multi_frame(tmp_path, data_dir, [1, 0, 2], "swapped"))
    with pytest.raises(InputError, match="frames are stored from the highest position along the slice normal down"):
        read_image(multi_frame(tmp_path, data_dir, [2, 1, 0], "falling"))


def test_frames_of_their_own_rescale_or_orientation_are_refused_itk_reads_them_all_as_the_first(tmp_path, data_dir):
    """A Philips enhanced MR stores a rescale per frame: ITK applied frame 1's to every frame (1207 HU
    off); frames of another orientation were put on frame 1's grid (16 mm off)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    path = multi_frame(tmp_path, data_dir, [0, 1, 2], "rescale")
    converted = pydicom.dcmread(path)
    shared = converted.SharedFunctionalGroupsSequence[0]
    slope, intercept = (float(getattr(shared.PixelValueTransformationSequence[0], key))
                        for key in ("RescaleSlope", "RescaleIntercept"))
    del shared.PixelValueTransformationSequence
    for index, group in enumerate(converted.PerFrameFunctionalGroupsSequence):
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slope, intercept + index, "HU"
        group.PixelValueTransformationSequence = Sequence([transform])
    converted.save_as(path)
    with pytest.raises(InputError, match=r"frame 2 carries Rescale Slope and Intercept \[1\.0, -1023\.0\], unlike "
                                         r"frame 1's \[1\.0, -1024\.0\].*convert the file with dcm2niix first"):
        read_image(path)
    for group in converted.PerFrameFunctionalGroupsSequence:                  # one rescale again: read
        group.PixelValueTransformationSequence[0].RescaleIntercept = intercept
    converted.save_as(path)
    assert read_image(path).GetSize()[2] == 3
    orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    del shared.PlaneOrientationSequence
    for index, group in enumerate(converted.PerFrameFunctionalGroupsSequence):
        plane = Dataset()
        plane.ImageOrientationPatient = list(orientation) if index < 2 else [1, 0, 0, 0, 0.965926, 0.258819]
        group.PlaneOrientationSequence = Sequence([plane])
    converted.save_as(path)
    with pytest.raises(InputError, match=r"frame 3 carries Image Orientation \(Patient\) \[1\.0, 0\.0, 0\.0, 0\.0, "
                                         r"0\.965926, 0\.258819\]"):
        read_image(path)


def test_a_seg_of_a_multi_frame_file_is_refused_before_the_work(tmp_path, data_dir):
    path = multi_frame(tmp_path, data_dir, [0, 1, 2], "rising")
    run_failing(["predict", str(path.parent), "--model", "model_repository/demo_bright_structures",
                 "--dicom-seg", str(tmp_path / "seg.dcm")], "holds 3 frames in one file")
    assert not (tmp_path / "seg.dcm").exists()


def test_a_discs_root_is_refused_naming_the_series_folders_below_its_dicomdir(tmp_path, data_dir):
    root = tmp_path / "cd"
    shutil.copytree(data_dir / "dicom" / "dcmqi_ct3", root / "DICOM" / "ST0" / "SE0")
    (root / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")            # the index, no slice
    with pytest.raises(InputError, match=r"is the root of a disc or export: a DICOMDIR \(an index of the images\) "
                                         r"with the images in folders below it \(DICOM/ST0/SE0\); give the folder of "
                                         r"one series, e\.g\. .*cd/DICOM/ST0/SE0\."):
        read_scan([root])
    assert read_scan([root / "DICOM" / "ST0" / "SE0"]).reference.GetSize()[2] == 3


def test_a_monochrome1_ct_is_refused_its_values_would_read_inverted(tmp_path, data_dir):
    folder = ct3(tmp_path, data_dir, edit=lambda index, dataset: setattr(dataset, "PhotometricInterpretation",
                                                                         "MONOCHROME1"))
    with pytest.raises(InputError, match=r"Photometric Interpretation \(0028,0004\) is MONOCHROME1 with a rescale"):
        read_image(folder)


def _raw(keyword: str, text: str):
    """Slice 02's `keyword` as the text given, which pydicom would not write as a number (the
    series is implicit VR: the text is stored as it is)."""
    def edit(index, dataset):
        if index == 1:
            element = dataset[keyword]
            dataset[keyword] = pydicom.DataElement(element.tag, "LO", text)
    return edit


@pytest.mark.parametrize("edit, expected", [
    (_raw("PixelSpacing", "abc\\def"), r"header field Pixel Spacing \(0028,0030\) is 'abc\\\\def'"),
    (_raw("RescaleIntercept", ""), r"header field Rescale Intercept \(0028,1052\) is ''"),
    (_raw("RescaleSlope", "0"), r"header field Rescale Slope \(0028,1053\) is '0'"),
    (lambda index, dataset: delattr(dataset, "PixelSpacing") if index == 1 else None,
     r"slice 02\.dcm has no Pixel Spacing \(0028,0030\)"),
    (lambda index, dataset: delattr(dataset, "ImageOrientationPatient") if index == 1 else None,
     r"slice 02\.dcm has no valid Image Orientation \(Patient\) \(0020,0037\)"),
])
def test_header_values_itk_would_replace_are_refused(tmp_path, data_dir, edit, expected):
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        folder = ct3(tmp_path, data_dir, edit=edit)
    finally:
        pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    with pytest.raises(InputError, match=expected):
        read_image(folder)


def test_two_slices_sharing_a_sop_instance_uid_are_refused(tmp_path, data_dir):
    shared = generate_uid()

    def same(index, dataset):
        if index > 0:
            dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = shared

    with pytest.raises(InputError, match=f"slices 0[23].dcm and 0[23].dcm share SOP Instance UID {shared}; each "
                                         "instance needs its own: where one file is a copy of the other, remove "
                                         "the copy"):
        read_image(ct3(tmp_path, data_dir, edit=same))


def small_series(tmp_path: Path, data_dir: Path, positions) -> Path:
    """16 x 16 crops of a GE CT slice at the positions given, as one series."""
    source = pydicom.dcmread(sorted((data_dir / "dicom" / "dcmqi_ct3").iterdir())[0])
    source.Rows = source.Columns = 16
    source.PixelData = source.pixel_array[:16, :16].tobytes()
    folder = tmp_path / "series"
    folder.mkdir(parents=True)
    for index, position in enumerate(positions):
        source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        source.ImagePositionPatient = [f"{v:.6g}" for v in position]
        source.save_as(folder / f"{index:02d}.dcm")
    return folder


def test_positions_that_drift_a_little_at_every_step_are_refused(tmp_path, data_dir):
    """Each step is within 0.01 mm of the others, but the whole series leaves the grid ITK builds
    from its first slice to its last: a slight tilt (0.008 mm sideways a slice, 0.31 mm at the end,
    against pixels of 0.81 mm), and 30 steps of 1 mm followed by 30 of 1.0095 mm."""
    tilted = small_series(tmp_path / "tilt", data_dir, [(0.008 * i, 0.0, float(i)) for i in range(40)])
    with pytest.raises(InputError, match="the slices drift sideways by up to 0.312 mm along the series"):
        read_image(tilted)
    heights = np.concatenate([[0.0], np.cumsum([1.0] * 30 + [1.0095] * 29)])
    stretched = small_series(tmp_path / "stretch", data_dir, [(0.0, 0.0, z) for z in heights])
    with pytest.raises(InputError, match=r"slice 30\.dcm lies 0\.14 mm from where an even grid from the first "
                                         r"slice to the last places it"):
        read_image(stretched)


def test_a_long_series_whose_positions_are_rounded_reads(tmp_path, data_dir):
    """Positions of 0.625 mm slices written to two decimals: every slice within 0.005 mm of the
    grid ITK builds, though the median step is 0.62."""
    folder = small_series(tmp_path, data_dir, [(0.0, 0.0, round(0.625 * i, 2)) for i in range(400)])
    assert read_image(folder).GetSpacing()[2] == pytest.approx(0.625, abs=1e-4)


def test_a_monochrome1_radiograph_is_read_inverted_and_said_so(tmp_path, data_dir, caplog):
    def radiograph(index, dataset):
        dataset.PhotometricInterpretation = "MONOCHROME1"
        dataset.RescaleSlope, dataset.RescaleIntercept = 1, 0

    folder = ct3(tmp_path, data_dir, edit=radiograph)
    assert read_image(folder).GetSize() == (512, 512, 3)
    assert "is MONOCHROME1: it is read inverted, as it is displayed" in caplog.text


def test_a_slice_that_cannot_be_decoded_is_named(tmp_path, data_dir):
    def compressed(index, dataset):
        dataset.compress(RLELossless)

    folder = ct3(tmp_path, data_dir, edit=compressed)
    victim = folder / "02.dcm"
    dataset = pydicom.dcmread(victim)
    data = bytearray(dataset.PixelData)
    data[-2000:] = b"\x80" * 2000
    dataset.PixelData = bytes(data)
    dataset.save_as(victim)
    with pytest.raises(InputError, match=r"slice 02\.dcm cannot be decoded"):
        read_scan([folder])
    shutil.rmtree(folder)


@pytest.mark.parametrize("syntax, marker", [("1.2.840.10008.1.2.4.70", 0xC3), ("1.2.840.10008.1.2.4.80", 0xF7)])
def test_a_jpeg_frame_of_another_size_than_its_header_is_refused(tmp_path, data_dir, syntax, marker):
    """GDCM read a 128 x 128 JPEG or JPEG-LS stream under Rows 64 and Columns 256 as a scrambled
    image; the stream's own start-of-frame segment says its size."""
    from pydicom.encaps import encapsulate

    frame = (b"\xff\xd8" + bytes([0xFF, marker]) + (11).to_bytes(2, "big") + bytes([16])
             + (128).to_bytes(2, "big") + (128).to_bytes(2, "big") + bytes([1, 1, 0x11, 0]) + b"\xff\xd9")

    def wrong_size(index, dataset):
        dataset.file_meta.TransferSyntaxUID = syntax
        dataset.Rows, dataset.Columns = 64, 256
        dataset.PixelData = encapsulate([frame])
        dataset["PixelData"].VR = "OB"
        dataset["PixelData"].is_undefined_length = True

    with pytest.raises(InputError, match=r"its compressed pixel data are 128 x 128 pixels where Rows \(0028,0010\) "
                                         r"and Columns \(0028,0011\) say 64 x 256"):
        read_image(ct3(tmp_path, data_dir, edit=wrong_size))


def test_a_12_bit_jpeg_series_is_read_without_gdcms_lines_and_other_stderr_lines_are_kept(tmp_path, data_dir, capfd):
    """GDCM's 8-bit JPEG decoder printed "Unsupported JPEG data precision 12" to the process's
    stderr several times per slice of a JPEG Extended (12-bit) series before its 12-bit one read it;
    those lines are dropped, and what else is written to stderr meanwhile is kept, in order."""
    import os
    import subprocess
    import time

    from runtime.io.gdcm_stderr import quiet_gdcm
    from tests.conftest import missing
    from tests.dicomkit import dcmtk_tool

    compress = dcmtk_tool("dcmcjpeg") or missing("dcmtk's dcmcjpeg is not installed: apt-get install dcmtk")
    source = data_dir / "dicom" / "dcmqi_ct3"
    (tmp_path / "jpeg12").mkdir()
    for path in sorted(source.iterdir()):
        subprocess.run([compress, "+ee", str(path), str(tmp_path / "jpeg12" / path.name)], check=True)
    assert pydicom.dcmread(tmp_path / "jpeg12" / "01.dcm").file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.51"
    capfd.readouterr()
    lossy = read_image(tmp_path / "jpeg12")
    assert "Unsupported JPEG data precision" not in capfd.readouterr().err
    import SimpleITK as sitk

    difference = np.abs(sitk.GetArrayFromImage(lossy) - sitk.GetArrayFromImage(read_image(source)).astype(np.float64))
    assert difference.mean() < 5 and difference.max() < 64                       # a lossy 12-bit JPEG of each slice
    jpeg = sorted((tmp_path / "jpeg12").iterdir())
    sink = tmp_path / "stderr.txt"
    saved = os.dup(2)
    with open(sink, "wb") as handle:
        os.dup2(handle.fileno(), 2)                   # the process's stderr, read back without being emptied
    try:
        with quiet_gdcm(jpeg):
            os.write(2, b"before\nUnsupported JPEG data precision 12\n")
            with quiet_gdcm(jpeg[1:]):
                os.write(2, b"inside\n")
            os.write(2, b"after\n")
            for _ in range(500):                      # passed on as it comes, not held to the end of the read
                if sink.read_bytes() == b"before\ninside\nafter\n":
                    break
                time.sleep(0.01)
            assert sink.read_bytes() == b"before\ninside\nafter\n"
            os.write(2, b"last")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    assert sink.read_bytes() == b"before\ninside\nafter\nlast"
    capfd.readouterr()
    with quiet_gdcm(sorted(source.iterdir())):                       # not JPEG: descriptor 2 left as it is
        os.write(2, b"Unsupported JPEG data precision 12\n")
    assert capfd.readouterr().err == "Unsupported JPEG data precision 12\n"
