"""`runtime predict SERIES --dicom-seg seg.dcm`: a DICOM SEG that dciodvfy validates, that references
every source instance by its position (not its file name), and that highdicom reads back to the
label map `--output` writes; and the series a SEG cannot be built on, refused before the work."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from runtime.commands.cli import main
from tests.conftest import REPO
from tests.dicomkit import BONE_CODES, add_report, copy_series, dciodvfy, predict, refused_inside_the_series
from tests.modelkit import bone_model, run_failing

MODEL = REPO / "model_repository" / "demo_bright_structures"


@pytest.fixture(scope="module")
def bone(tmp_path_factory) -> Path:
    return bone_model(tmp_path_factory.mktemp("bone"), **BONE_CODES)


def read_back(seg_path: Path, series: Path, highdicom) -> np.ndarray:
    """The SEG's segment numbers (z, y, x), its frames placed on the series' instances in the order of their
    positions along the slice normal."""
    import pydicom

    seg = highdicom.seg.segread(seg_path)
    instances = [pydicom.dcmread(path, stop_before_pixels=True) for path in series.iterdir()]
    normal = np.cross(*np.reshape([float(v) for v in instances[0].ImageOrientationPatient], (2, 3)))
    instances.sort(key=lambda ds: float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])))
    pixels = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in instances], combine_segments=True,
                                               relabel=False)
    return np.asarray(pixels)


def test_a_seg_of_a_series_validates_references_every_instance_and_reads_back_to_the_label_map(
        data_dir, tmp_path, highdicom, bone):
    series = data_dir / "dicom" / "dcmqi_ct3"
    predict(series, "--model", bone, "--output", tmp_path / "labels.nii.gz", "--dicom-seg", tmp_path / "seg.dcm")
    assert dciodvfy(tmp_path / "seg.dcm") == []
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.nii.gz")))
    assert 0 < np.count_nonzero(labels) < labels.size / 2
    np.testing.assert_array_equal(read_back(tmp_path / "seg.dcm", series, highdicom), labels)
    seg = highdicom.seg.segread(tmp_path / "seg.dcm")
    import pydicom

    sources = [pydicom.dcmread(path, stop_before_pixels=True) for path in sorted(series.iterdir())]
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in sources}
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID) == (sources[0].StudyInstanceUID,
                                                               sources[0].FrameOfReferenceUID)
    segment = seg.SegmentSequence[0]
    assert (len(seg.SegmentSequence), segment.SegmentLabel, segment.SegmentAlgorithmType) == (1, "bone", "AUTOMATIC")
    assert (segment.SegmentedPropertyTypeCodeSequence[0].CodeValue,
            segment.SegmentedPropertyTypeCodeSequence[0].CodeMeaning) == ("272673000", "Bone")
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Anatomical Structure"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("bone", "1")
    assert (seg.SeriesNumber, seg.SeriesDescription) == (9001, "bone v1 of series 2")      # the CT is series 2


def test_instances_whose_sop_uids_lie_in_their_file_meta_only_are_referenced_by_them_and_said_once(
        data_dir, tmp_path, highdicom, bone, caplog):
    def emptied(index: int, dataset) -> None:
        dataset.SOPInstanceUID = ""                           # the file meta keeps it, as some exporters do

    copy_series(data_dir / "dicom" / "dcmqi_ct3", tmp_path / "series", edit=emptied)
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "series"), "--model", str(bone), "--dicom-seg",
                                       str(tmp_path / "seg.dcm"), "--quiet"])
    assert result.exit_code == 0, result.output
    said = [r.getMessage() for r in caplog.records if "file meta" in r.getMessage()]          # not one per slice
    assert len(said) == 1 and "the SOPInstanceUID of instances is empty" in said[0], said
    import pydicom

    metas = {pydicom.dcmread(path, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID
             for path in (tmp_path / "series").iterdir()}
    seg = highdicom.seg.segread(tmp_path / "seg.dcm")
    assert {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} \
        == metas


def test_slices_whose_orientation_digits_differ_within_the_tolerance_get_a_seg(data_dir, tmp_path, bone):
    """A volume takes orientations equal within 1e-4; a SEG takes one, compared exactly: the slices
    written with other digits failed after the inference."""
    def other_digits(index: int, dataset) -> None:
        if index % 2:
            dataset.ImageOrientationPatient = [1, 0.00001, 0, -0.00001, 1, 0]

    copy_series(data_dir / "dicom" / "dcmqi_ct3", tmp_path / "series", edit=other_digits)
    predict(tmp_path / "series", "--model", bone, "--dicom-seg", tmp_path / "seg.dcm")
    assert dciodvfy(tmp_path / "seg.dcm") == []


def test_a_results_description_names_its_source_series_and_keeps_its_revision_within_64_characters():
    import pydicom

    from runtime.io.dicom_seg import result_description

    source = pydicom.Dataset()
    source.SeriesNumber = 302
    assert result_description("liver v3", [source], 1) == "liver v3 of series 302"
    long = result_description("a" * 60 + " v12", [source], 7)
    assert len(long) == 64 and long.endswith("a revision 7")
    assert result_description("liver v3", [pydicom.Dataset()], 2) == "liver v3 revision 2"     # none to name


def test_a_report_beside_the_slices_is_named_once_and_left_out_of_the_seg(data_dir, tmp_path, highdicom, bone,
                                                                         caplog):
    import pydicom

    series = tmp_path / "series"
    shutil.copytree(data_dir / "dicom" / "dcmqi_ct3", series)
    report = add_report(series)
    predict(series, "--model", bone, "--dicom-seg", tmp_path / "seg.dcm")
    assert caplog.text.count(f"{report} is a DICOM object without pixel data") == 1
    seg = highdicom.seg.segread(tmp_path / "seg.dcm")
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    slices = {pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
              for path in series.iterdir() if path != report}
    assert referenced == slices


def test_the_seg_places_each_frame_by_the_instances_position_not_its_file_name(data_dir, tmp_path, highdicom, bone):
    series = data_dir / "dicom" / "dcmqi_ct3"
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for path, name in zip(sorted(series.iterdir()), ("c.dcm", "a.dcm", "b.dcm")):
        shutil.copyfile(path, shuffled / name)
    predict(series, "--model", bone, "--output", tmp_path / "labels.nii.gz")
    predict(shuffled, "--model", bone, "--dicom-seg", tmp_path / "seg.dcm")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.nii.gz")))
    np.testing.assert_array_equal(read_back(tmp_path / "seg.dcm", shuffled, highdicom), labels)


def test_a_series_a_seg_cannot_reference_and_misplaced_options_are_refused_before_the_work(
        data_dir, tmp_path, highdicom):
    seg = tmp_path / "seg.dcm"
    anonymized = data_dir / "dicom" / "totalseg_ct_series"           # its Study and Series Instance UIDs are empty
    run_failing(["predict", str(anonymized), "--model", str(MODEL), "--dicom-seg", str(seg)],
                "StudyInstanceUID, SeriesInstanceUID are empty",
                "export the series with its identifiers, or write --output instead.")
    scan = data_dir / "radiology" / "pyradiomics_breast1_image.nrrd"
    run_failing(["predict", str(scan), "--model", str(MODEL), "--dicom-seg", str(seg)],
                "--dicom-seg needs one DICOM series folder")
    run_failing(["predict", str(tmp_path / "gone"), "--model", str(MODEL), "--dicom-seg", str(seg)],
                f"{tmp_path / 'gone'} does not exist; check the path.")
    series = data_dir / "dicom" / "dcmqi_ct3"

    def projection(index, dataset):                 # a radiograph: no Frame of Reference, no Image Position
        dataset.Modality = "DX"
        del dataset.FrameOfReferenceUID, dataset.ImagePositionPatient

    copy_series(series, tmp_path / "dx", edit=lambda index, dataset: index == 0 and projection(index, dataset))
    for extra in sorted((tmp_path / "dx").iterdir())[1:]:
        extra.unlink()
    run_failing(["predict", str(tmp_path / "dx"), "--model", str(MODEL), "--dicom-seg", str(seg)],
                "is a projection or 2D image (DX: no Frame of Reference, no Image Position), and a DICOM SEG "
                "references the slices of a cross-sectional series")
    shutil.rmtree(tmp_path / "dx")
    run_failing(["predict", str(series), "--model", str(MODEL), "--dicom-seg", str(tmp_path / "seg.nii.gz")],
                "must end with", ".dcm")
    run_failing(["predict", "--csv", str(tmp_path / "s.csv"), "--model", str(MODEL), "--dicom-seg", str(seg)],
                "--dicom-seg runs with one DICOM series for now, not with --csv")
    refused_inside_the_series(series, tmp_path / "series", MODEL, "--dicom-seg", "seg.dcm")
    shutil.rmtree(tmp_path / "series")
    assert not seg.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_seg_is_read_onto_the_slices_of_its_series(data_dir, tmp_path, highdicom, bone):
    from runtime.errors import InputError
    from runtime.io import read_label, read_scan

    dicom = data_dir / "dicom"
    scan = read_scan([dicom / "dcmqi_ct3"])
    liver = read_label(dicom / "dcmqi_liver_SEG.dcm", scan)                  # dcmqi's SEG of the three slices
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(dicom / "dcmqi_liver_seg.nrrd")))
    assert np.count_nonzero(liver) > 100_000
    np.testing.assert_array_equal(liver, expected)
    with pytest.raises(InputError, match="segments 1 and 2 overlap on slice"):
        read_label(dicom / "dcmqi_partial_overlaps_SEG.dcm", scan)
    predict(dicom / "dcmqi_ct3", "--model", bone, "--output", tmp_path / "labels.nii.gz", "--dicom-seg",
            tmp_path / "seg.dcm")
    np.testing.assert_array_equal(read_label(tmp_path / "seg.dcm", scan),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.nii.gz"))))
    other = read_scan([dicom / "totalseg_ct_series"])
    with pytest.raises(InputError, match="another series"):
        read_label(dicom / "dcmqi_liver_SEG.dcm", other)


def test_a_label_is_read_onto_the_grid_of_a_scan_whose_voxels_are_not_read(data_dir, tmp_path, highdicom, bone):
    """scan_reference: the grid read_scan's reference has, from the first channel's header (a
    DICOM folder is read); label_on places a SEG and checks an image's grid against it."""
    from runtime.errors import InputError
    from runtime.io import read_label, read_scan
    from runtime.io.scan import label_on, same_grid, scan_reference

    dicom = data_dir / "dicom"
    series = dicom / "dcmqi_ct3"
    reference = scan_reference([series])
    scan = read_scan([series])
    assert same_grid(reference, scan.reference)
    np.testing.assert_array_equal(label_on(dicom / "dcmqi_liver_SEG.dcm", reference, str(series)),
                                  read_label(dicom / "dcmqi_liver_SEG.dcm", scan))
    image = sitk.ReadImage(str(dicom / "dcmqi_liver_seg.nrrd"))
    sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16) * 50, str(tmp_path / "scan.nii.gz"))
    sitk.WriteImage(image, str(tmp_path / "label.nii.gz"))
    from_header = scan_reference([tmp_path / "scan.nii.gz", tmp_path / "scan.nii.gz"])
    assert same_grid(from_header, read_scan([tmp_path / "scan.nii.gz"]).reference)
    np.testing.assert_array_equal(label_on(tmp_path / "label.nii.gz", from_header, "scan.nii.gz"),
                                  sitk.GetArrayFromImage(image))
    with pytest.raises(InputError, match="are not on the same grid"):
        label_on(tmp_path / "label.nii.gz", scan_reference([dicom / "totalseg_ct_series"]), "ct")
    with pytest.raises(InputError, match="no input image given"):
        scan_reference([])


def test_a_fractional_seg_holds_each_class_probability_in_eight_bits(data_dir, tmp_path, highdicom, bone):
    import pydicom

    series = data_dir / "dicom" / "dcmqi_ct3"
    predict(series, "--model", bone, "--probabilities", tmp_path / "p.nii.gz", "--dicom-seg", tmp_path / "seg.dcm",
            "--fractional")
    assert dciodvfy(tmp_path / "seg.dcm") == []
    probabilities = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "p.nii.gz")))    # (class, z, y, x)
    seg = highdicom.seg.segread(tmp_path / "seg.dcm")
    assert (seg.SegmentationType, seg.SegmentationFractionalType, int(seg.MaximumFractionalValue)) == (
        "FRACTIONAL", "PROBABILITY", 255)
    sources = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in series.iterdir()),
                     key=lambda ds: float(ds.ImagePositionPatient[2]))
    stored = np.asarray(seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in sources], segment_numbers=[1],
                                                          rescale_fractional=True))[..., 0]
    assert np.abs(stored - probabilities[1]).max() <= 0.5 / 255 + 1e-6
    assert 0 < np.count_nonzero(stored > 0.5) < stored.size / 2
    run_failing(["predict", str(series), "--model", str(bone), "--output", str(tmp_path / "m.nii.gz"), "--fractional"],
                "--fractional is for --dicom-seg")


def test_a_fractional_seg_of_a_model_of_logits_read_by_threshold_holds_their_sigmoid(data_dir, tmp_path,
                                                                                      highdicom):
    """One channel per class after the first (an nnU-Net region model's layout): the segment's
    probability is its channel's sigmoid, taken once the logits are brought back."""
    import onnx
    import pydicom
    from onnx import numpy_helper

    from export import graphs
    from tests.modelkit import make_model

    graph = graphs.bright_structures(3)
    for tensor in graph.graph.initializer:            # channel 1 alone: the bone logit
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor)[1:], tensor.name))
    graph.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 1
    onnx.checker.check_model(graph)
    model = make_model(tmp_path / "repository", graph, name="bone_logit",
                       classes=[{"value": 0, "name": "background"}, {"value": 1, "name": "bone", **BONE_CODES}],
                       preprocessing=[{"name": "normalize", "params": {"mean": [0], "std": [100]}}],
                       output={"activation": "none", "label_rule": "threshold", "threshold": 0, "ensemble": "mean",
                               "probabilities": "sigmoid"})
    series = data_dir / "dicom" / "dcmqi_ct3"
    predict(series, "--model", model, "--probabilities", tmp_path / "p.nii.gz", "--dicom-seg", tmp_path / "seg.dcm",
            "--fractional")
    assert dciodvfy(tmp_path / "seg.dcm") == []
    probabilities = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "p.nii.gz")))
    assert probabilities.ndim == 3 and 0 <= probabilities.min() and probabilities.max() <= 1      # one channel
    sources = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in series.iterdir()),
                     key=lambda ds: float(ds.ImagePositionPatient[2]))
    stored = np.asarray(highdicom.seg.segread(tmp_path / "seg.dcm").get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in sources], segment_numbers=[1], rescale_fractional=True))[..., 0]
    assert stored.shape == probabilities.shape
    assert np.abs(stored - probabilities).max() <= 0.5 / 255 + 1e-6
    assert 0 < np.count_nonzero(stored > 0.5) < stored.size / 2


def test_a_fractional_seg_of_values_that_are_no_probabilities_blames_the_model_not_the_series(data_dir, tmp_path):
    """A graph read with activation none writes its own values: logits cannot fill a fractional SEG,
    and the refusal says so (it told the user to check the series' headers)."""
    from export import graphs
    from tests.modelkit import make_model

    model = make_model(tmp_path / "repository", graphs.bright_structures(3), name="logits",
                       classes=[{"value": 0, "name": "background"}, {"value": 1, "name": "bone", **BONE_CODES}],
                       preprocessing=[{"name": "normalize", "params": {"mean": [0], "std": [100]}}],
                       output={"activation": "none", "label_rule": "argmax", "threshold": 0.5, "ensemble": "mean"})
    series = data_dir / "dicom" / "dcmqi_ct3"
    run_failing(["predict", str(series), "--model", str(model), "--dicom-seg", str(tmp_path / "seg.dcm"),
                 "--fractional"], "gives values from", "no probabilities, which a fractional DICOM SEG holds",
                "leave out --fractional")
    assert not (tmp_path / "seg.dcm").exists()


def test_a_fractional_seg_of_nested_regions_is_refused_for_the_binary_one(data_dir, tmp_path):
    """Each channel is a whole region's sigmoid, each class what is left of its region once the later
    ones are painted: a fractional segment would hold more than its class."""
    from export import graphs
    from tests.modelkit import make_model

    model = make_model(tmp_path / "repository", graphs.bright_structures(3), name="regions",
                       classes=[{"value": 0, "name": "background"}, {"value": 1, "name": "whole without core"},
                                {"value": 2, "name": "core"}],
                       output={"activation": "none", "label_rule": "threshold", "threshold": 0, "ensemble": "mean",
                               "probabilities": "sigmoid"})
    series = data_dir / "dicom" / "dcmqi_ct3"
    run_failing(["predict", str(series), "--model", str(model), "--dicom-seg", str(tmp_path / "seg.dcm"),
                 "--fractional"], "probabilities are each region's sigmoid", "leave out --fractional")
    assert not (tmp_path / "seg.dcm").exists()


def test_a_csv_run_takes_a_seg_as_its_label_and_scores_it_by_its_segments_class_names(data_dir, tmp_path, bone):
    import csv

    series = data_dir / "dicom" / "dcmqi_ct3"
    predict(series, "--model", bone, "--dicom-seg", tmp_path / "seg.dcm")
    (tmp_path / "subjects.csv").write_text(f"subject_id,image,label\nct3,{series},seg.dcm\n")
    predict("--csv", tmp_path / "subjects.csv", "--model", bone, "--output-dir", tmp_path / "out")
    with open(tmp_path / "out" / "metrics.csv", newline="") as handle:
        assert float(next(csv.DictReader(handle))["dice_bone"]) == 1.0          # its own SEG: a perfect match
    (tmp_path / "labels").mkdir()
    shutil.copyfile(tmp_path / "seg.dcm", tmp_path / "labels" / "ct3.dcm")
    runs = (((tmp_path / "subjects.csv", ["--model", str(bone)]), "dice_bone"), ((tmp_path / "labels", []), "dice_1"),
            ((tmp_path / "labels", ["--classes", "1:bone"]), "dice_bone"),
            ((tmp_path / "labels", ["--classes", "1:organ,2:other"]), "dice_organ"),     # our SEG: by its order
            ((tmp_path / "labels", ["--classes", "1:bone", "--relabel", "5=1"]), "dice_bone"))   # classes already
    for (labels, options), column in runs:
        result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "out"), str(labels), "--output-dir",
                                           str(tmp_path / "scores"), *options])
        assert result.exit_code == 0, result.output
        with open(tmp_path / "scores" / "metrics.csv", newline="") as handle:
            row = next(csv.DictReader(handle))
        assert float(row[column]) == 1.0, (options, row)                        # the SEG read as its segments


def test_a_folder_of_two_series_is_listed_and_one_is_chosen_with_series(data_dir, tmp_path, bone):
    import pydicom

    folder = tmp_path / "study"
    folder.mkdir()
    for path in sorted((data_dir / "dicom" / "dcmqi_ct3").iterdir()):
        shutil.copyfile(path, folder / f"a_{path.name}")
    other = copy_series(data_dir / "dicom" / "dcmqi_ct3", folder, prefix="b_")   # the same slices as a second series
    first = pydicom.dcmread(data_dir / "dicom" / "dcmqi_ct3" / "01.dcm").SeriesInstanceUID
    message = run_failing(["predict", str(folder), "--model", str(bone), "--output", str(tmp_path / "m.nii.gz")],
                          "holds 2 DICOM series", "--series UID")
    assert first in message and other in message
    run_failing(["predict", str(folder), "--model", str(bone), "--output", str(tmp_path / "m.nii.gz"), "--series",
                 "1.2.3"], "holds no series 1.2.3", first)
    predict(data_dir / "dicom" / "dcmqi_ct3", "--model", bone, "--output", tmp_path / "alone.nii.gz")
    predict(folder, "--model", bone, "--series", other, "--output", tmp_path / "chosen.nii.gz", "--dicom-seg",
            tmp_path / "seg.dcm")
    assert (tmp_path / "chosen.nii.gz").read_bytes() == (tmp_path / "alone.nii.gz").read_bytes()
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == other
    assert not (tmp_path / "m.nii.gz").exists()


def test_a_foreign_seg_is_scored_by_its_segment_labels_and_a_damaged_one_is_one_error(data_dir, tmp_path, highdicom):
    import pydicom

    from runtime.contract import ClassSpec
    from runtime.errors import InputError
    from runtime.io import read_label, read_scan

    dicom = data_dir / "dicom"
    scan = read_scan([dicom / "dcmqi_ct3"])
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(dicom / "dcmqi_liver_seg.nrrd")))
    classes = (ClassSpec(0, "background"), ClassSpec(3, "spleen"), ClassSpec(6, "LIVER"))   # "Liver" in the SEG
    np.testing.assert_array_equal(read_label(dicom / "dcmqi_liver_SEG.dcm", scan, classes=classes), expected * 6)
    with pytest.raises(InputError, match=r"segment 1 \(Liver\) is none of the classes"):     # not by position
        read_label(dicom / "dcmqi_liver_SEG.dcm", scan, classes=classes[:2])
    damaged = pydicom.dcmread(dicom / "dcmqi_liver_SEG.dcm")
    del damaged.PerFrameFunctionalGroupsSequence
    damaged.save_as(tmp_path / "damaged.dcm")
    with pytest.raises(InputError, match="a damaged DICOM SEG"):
        read_label(tmp_path / "damaged.dcm", scan)


def test_patient_values_that_are_not_valid_dicom_are_left_empty_in_a_seg_that_validates(
        data_dir, tmp_path, highdicom, bone, caplog):
    """A birth date of 31 February, a sex of "FEMALE" and a 200-character name would stop the SEG
    (or make it invalid): each is left empty there, named in a warning without its value; the
    slices' own values (a 17-character position) are kept. A series of two studies is refused
    before inference, naming the attribute."""
    import pydicom

    def unfit(index: int, dataset: pydicom.Dataset) -> None:
        dataset.PatientBirthDate = "19700231"
        dataset.PatientSex = "FEMALE"
        dataset.PatientName = "Q" * 200
        dataset.PatientID = "../../etc\nQ"                       # a newline: no LO value holds one
        position = [float(v) for v in dataset.ImagePositionPatient]
        dataset.ImagePositionPatient = [f"{position[0]:.12f}"[:17], str(position[1]), str(position[2])]

    series = data_dir / "dicom" / "dcmqi_ct3"
    copy_series(series, tmp_path / "unfit", edit=unfit)
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "unfit"), "--model", str(bone), "--dicom-seg",
                                       str(tmp_path / "seg.dcm"), "--output", str(tmp_path / "labels.nii.gz"),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    said = result.output + caplog.text
    for named in ("PatientBirthDate (0010,0030)", "PatientSex (0010,0040)", "PatientName (0010,0010)",
                  "PatientID (0010,0020)"):
        assert said.count(f"the series' {named} is not a valid DICOM value; the SEG leaves it empty") == 1, said
    assert "19700231" not in said and "FEMALE" not in said and "QQQ" not in said, said
    assert dciodvfy(tmp_path / "seg.dcm") == []
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert (seg.PatientBirthDate, seg.PatientSex, str(seg.PatientName)) == ("", "", "")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.nii.gz")))
    np.testing.assert_array_equal(read_back(tmp_path / "seg.dcm", tmp_path / "unfit", highdicom), labels)

    def second_study(index: int, dataset: pydicom.Dataset) -> None:
        if index == 2:
            dataset.StudyInstanceUID = "1.2.3.4.5"

    copy_series(series, tmp_path / "two", edit=second_study)
    run_failing(["predict", str(tmp_path / "two"), "--model", str(bone), "--dicom-seg", str(tmp_path / "two.dcm")],
                "hold 2 different StudyInstanceUID (0020,000D) values")
    assert not (tmp_path / "two.dcm").exists()


def test_a_series_of_two_patients_is_refused_and_a_japanese_series_gets_a_seg_that_validates(
        data_dir, tmp_path, highdicom, bone):
    """Slices of one series under two patient IDs (a trauma patient's first slices under a
    temporary ID) would give a SEG of one patient over the other's images: refused, naming the
    attribute. A series whose Specific Character Set's first value is empty (`\\ISO 2022 IR 87`, the
    default repertoire then JIS X 0208, as Japanese series carry it; or Korean KS X 1001) is read,
    and its SEG, written in UTF-8, keeps the patient's name and validates."""
    import pydicom

    series = data_dir / "dicom" / "dcmqi_ct3"

    def reconciled(index: int, dataset: pydicom.Dataset) -> None:
        dataset.PatientID = "TRAUMA-0001" if index == 0 else "123456"

    copy_series(series, tmp_path / "two", edit=reconciled)
    run_failing(["predict", str(tmp_path / "two"), "--model", str(bone), "--dicom-seg", str(tmp_path / "two.dcm")],
                "hold 2 different PatientID (0010,0020) values", "one patient, study")
    assert not (tmp_path / "two.dcm").exists()

    names = {"ISO 2022 IR 87": "Yamada^Tarou=山田^太郎=やまだ^たろう", "ISO 2022 IR 149": "Hong^Gildong=洪^吉洞=홍^길동"}
    for extension, name in names.items():                      # Japanese, and Korean, which highdicom reads not

        def named(index: int, dataset: pydicom.Dataset, extension: str = extension, name: str = name) -> None:
            dataset.SpecificCharacterSet = ["", extension]
            dataset.PatientName = name

        copy_series(series, tmp_path / extension, edit=named)
        seg = tmp_path / f"{extension}.dcm"
        result = CliRunner().invoke(main, ["predict", str(tmp_path / extension), "--model", str(bone), "--dicom-seg",
                                           str(seg), "--quiet"])
        assert result.exit_code == 0, result.output
        assert dciodvfy(seg) == []
        made = pydicom.dcmread(seg)
        assert made.SpecificCharacterSet == "ISO_IR 192"
        assert str(made.PatientName) == name


def test_a_name_its_codec_leaves_escapes_in_is_left_out_and_a_malformed_nested_element_is_passed_over(
        data_dir, tmp_path, highdicom, bone, caplog):
    """GB2312 under ISO 2022 IR 58 (the standard's own example name) decodes with its escape
    sequences left in: the name is left out of the SEG, with a warning, not written with ESC bytes.
    A sequence item holding a 2-byte FD (a malformed element) is no reason to refuse the series: its
    headers keep their own character set, said once."""
    import pydicom
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset
    from pydicom.uid import ImplicitVRLittleEndian

    def chinese(index: int, dataset: pydicom.Dataset) -> None:
        dataset.SpecificCharacterSet = ["", "ISO 2022 IR 58"]
        dataset.add_new(0x00100010, "PN", b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab=")

    def malformed(index: int, dataset: pydicom.Dataset) -> None:
        item = Dataset()
        item[0x00189306] = DataElement(0x00189306, "OB", b"\x01\x02")   # read back as an FD of 2 bytes
        dataset.CTExposureSequence = [item]
        dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian

    for name, edit in (("gb2312", chinese), ("malformed", malformed)):
        copy_series(data_dir / "dicom" / "dcmqi_ct3", tmp_path / name, edit=edit)
        caplog.clear()
        predict(tmp_path / name, "--model", bone, "--dicom-seg", tmp_path / f"{name}.dcm")
        assert dciodvfy(tmp_path / f"{name}.dcm") == []
        made = pydicom.dcmread(tmp_path / f"{name}.dcm")
        warned = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
        if name == "gb2312":
            assert str(made.PatientName) == "" and "\x1b" not in str(made.PatientName)
            assert warned == ["the series' PatientName (0010,0010) is not a valid DICOM value; the SEG leaves it empty"]
        else:
            assert str(made.PatientName) == "JANCT000"
            assert warned == [f"the series in {tmp_path / name} has an element pydicom cannot read "
                              "(BytesLengthException); its character set is kept as it is"]


def test_a_fractional_seg_takes_probabilities_past_one_by_a_rounding_and_stores_them_as_one(data_dir, highdicom):
    """Windows' softmax values averaged in float32 may pass 1 by a rounding; they are probabilities
    still (they were refused as values that are none), and are written as 1."""
    from runtime.io.dicom_seg import build_seg, source_instances
    from tests.modelkit import make_manifest

    files = sorted((data_dir / "dicom" / "dcmqi_ct3").iterdir())
    reference = sitk.ReadImage([str(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(files[0].parent))])
    sources = source_instances(files, reference)
    probabilities = np.zeros((2, *sitk.GetArrayViewFromImage(reference).shape), np.float32)
    probabilities[1, :, :8, :8] = np.float32(1) + np.float32(1e-6)
    probabilities[0] = 1 - probabilities[1]
    probabilities.setflags(write=False)                              # the caller's array is left as it is
    seg = build_seg((probabilities[1] > 0.5).astype(np.uint8), sources, make_manifest("0" * 64), probabilities)
    assert probabilities.max() == np.float32(1) + np.float32(1e-6)
    frames = seg.pixel_array
    assert seg.SegmentationType == "FRACTIONAL" and frames.max() == int(seg.MaximumFractionalValue)
    assert np.count_nonzero(frames) == len(sources) * 64
