"""`runtime predict SERIES --dicom-sr sr.dcm`: a DICOM SR (TID 1500 Measurement Report) that
dciodvfy validates and highdicom reads back to the values `--output` writes: a classifier's
probabilities and its predicted class, a regression model's values in their unit, a segmentation's
volume of each segment of the SEG written beside it; and the runs it cannot serve, refused before
the work."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from runtime.commands.cli import main
from tests.conftest import REPO
from tests.dicomkit import BONE_CODES, copy_series, dciodvfy, predict, refused_inside_the_series
from tests.modelkit import (
    HOUNSFIELD, bone_model, density_classifier, make_model, mean_density_model, run_failing, window,
)

# UIDs that DICOM and the coding schemes define (SOP classes, transfer syntaxes, SNOMED CT's), which
# an object names as they are.
STANDARD_UIDS = ("1.2.840.10008.", "2.16.840.1.113883.")

MALIGNANT = {"category": {"scheme": "SCT", "value": "49755003", "meaning": "Morphologically Altered Structure"},
             "type": {"scheme": "SCT", "value": "86049000", "meaning": "Malignant neoplasm, primary"}}


@pytest.fixture()
def series(data_dir) -> Path:
    return data_dir / "dicom" / "dcmqi_ct3"


def report(path: Path, highdicom):
    """The SR's Measurement Report (highdicom's reading of it)."""
    document = highdicom.sr.srread(path)
    return document, highdicom.sr.MeasurementReport.from_sequence([document])


def table(path: Path) -> dict[str, str]:
    [row] = list(csv.DictReader(path.open()))
    return row


def referenced_instances(document) -> set[str]:
    return {item.ReferencedSOPInstanceUID for study in document.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}


def source_uids(series: Path) -> set[str]:
    import pydicom

    return {pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in series.iterdir()}


def test_a_classifier_reports_each_class_probability_and_the_predicted_class_on_the_series(
        series, tmp_path, highdicom):
    import pydicom

    model = density_classifier(tmp_path / "repo", **MALIGNANT)
    predict(series, "--model", model, "--output", tmp_path / "values.csv", "--dicom-sr", tmp_path / "sr.dcm")
    assert dciodvfy(tmp_path / "sr.dcm") == []
    row = table(tmp_path / "values.csv")
    document, content = report(tmp_path / "sr.dcm", highdicom)
    groups = content.get_image_measurement_groups()
    assert [group.tracking_identifier for group in groups] == ["low", "mid", "high"]
    for group, name in zip(groups, ("low", "mid", "high")):
        [probability] = group.get_measurements()
        assert (probability.name.value, probability.name.scheme_designator) == ("122157", "DCM")
        assert probability.unit.value == "1"
        assert probability.value == pytest.approx(float(row[f"probability_{name}"]), abs=1e-6)
        [presence] = [item for item in group.get_qualitative_evaluations() if item.name.value == "121052"]
        assert presence.value.meaning == ("Present" if name == {"0": "low", "1": "mid", "2": "high"}[row["predicted"]]
                                          else "Absent")
    assert groups[0].finding_type.value == "86049000"                        # the class's own codes
    assert groups[0].finding_category.value == "49755003"
    assert (groups[1].finding_type.scheme_designator, groups[1].finding_type.value,
            groups[1].finding_type.meaning) == ("99MEDFLOW", "density:1", "mid")   # one code per class of each model
    assert [item.CodingSchemeDesignator for item in document.CodingSchemeIdentificationSequence] == ["99MEDFLOW"]
    source = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
    assert (document.StudyInstanceUID, document.PatientID) == (source.StudyInstanceUID, source.PatientID)
    assert document.SeriesInstanceUID != source.SeriesInstanceUID
    assert referenced_instances(document) == source_uids(series)
    assert (document.CompletionFlag, document.VerificationFlag) == ("COMPLETE", "UNVERIFIED")


def test_a_regression_model_reports_its_values_in_their_unit(series, tmp_path, highdicom):
    model = mean_density_model(tmp_path / "repo")
    predict(series, "--model", model, "--output", tmp_path / "values.csv", "--dicom-sr", tmp_path / "sr.dcm")
    assert dciodvfy(tmp_path / "sr.dcm") == []
    _, content = report(tmp_path / "sr.dcm", highdicom)
    [group] = content.get_image_measurement_groups()
    [value] = group.get_measurements()
    assert value.name.meaning == "mean density"
    assert (value.unit.value, value.unit.meaning) == (HOUNSFIELD["value"], HOUNSFIELD["meaning"])
    assert value.value == pytest.approx(float(table(tmp_path / "values.csv")["mean density"]), abs=1e-4)
    assert -1100 < value.value < 0                                          # a CT's mean, mostly air
    info = CliRunner().invoke(main, ["info", str(model)]).output
    assert "0=mean density (unit UCUM [hnsf'U] Hounsfield unit)" in info
    assert "output      activation none, values as given, ensemble mean" in info      # no label rule to read


def test_a_segmentation_reports_the_volume_of_each_segment_of_its_seg(series, tmp_path, highdicom):
    model = bone_model(tmp_path / "repo", **BONE_CODES)
    predict(series, "--model", model, "--output", tmp_path / "labels.nii.gz", "--dicom-seg", tmp_path / "seg.dcm",
            "--dicom-sr", tmp_path / "sr.dcm")
    assert dciodvfy(tmp_path / "sr.dcm") == []
    labels = sitk.ReadImage(str(tmp_path / "labels.nii.gz"))
    bone = int(np.count_nonzero(sitk.GetArrayFromImage(labels) == 1))
    assert bone > 0
    document, content = report(tmp_path / "sr.dcm", highdicom)
    [group] = content.get_volumetric_roi_measurement_groups()
    [volume] = group.get_measurements()
    assert (volume.name.meaning, volume.unit.value) == ("Volume", "mL")
    assert volume.value == pytest.approx(bone * float(np.prod(labels.GetSpacing())) / 1000, rel=1e-6)
    assert group.finding_type.meaning == "Bone" and group.tracking_identifier == "bone"
    seg = highdicom.seg.segread(tmp_path / "seg.dcm")
    reference = group.referenced_segment[0].ReferencedSOPSequence[0]
    assert (reference.ReferencedSOPInstanceUID, reference.ReferencedSegmentNumber) == (seg.SOPInstanceUID, 1)
    assert referenced_instances(document) == source_uids(series) | {seg.SOPInstanceUID}


def test_a_one_slice_series_is_as_thick_as_it_says_and_a_negative_spacing_is_not_copied_into_the_seg(
        series, tmp_path, highdicom):
    """ITK takes a lone slice as 1 mm thick: its volumes in mL came out short by its Slice Thickness
    (1.25 mm here); a Spacing Between Slices written negative (as some scanners do) is no value a SEG
    may hold."""
    import pydicom

    one = tmp_path / "one"
    one.mkdir()
    shutil.copyfile(sorted(series.iterdir())[1], one / "02.dcm")
    model = bone_model(tmp_path / "repo", **BONE_CODES)
    predict(one, "--model", model, "--output", tmp_path / "labels.nii.gz", "--dicom-seg", tmp_path / "seg.dcm",
            "--dicom-sr", tmp_path / "sr.dcm")
    thickness = float(pydicom.dcmread(one / "02.dcm", stop_before_pixels=True).SliceThickness)
    labels = sitk.ReadImage(str(tmp_path / "labels.nii.gz"))
    assert thickness == 1.25 and labels.GetSpacing()[2] == pytest.approx(thickness)
    from runtime.io import read_scan

    assert read_scan([one / "02.dcm"]).spacing_zyx[0] == pytest.approx(thickness)      # the file alone too
    bone = int(np.count_nonzero(sitk.GetArrayFromImage(labels) == 1))
    [volume] = report(tmp_path / "sr.dcm", highdicom)[1].get_volumetric_roi_measurement_groups()[0].get_measurements()
    pixel = np.prod([float(v) for v in pydicom.dcmread(one / "02.dcm", stop_before_pixels=True).PixelSpacing])
    assert bone > 0 and volume.value == pytest.approx(bone * pixel * thickness / 1000, rel=1e-6)

    def negative(index, dataset):
        dataset.SpacingBetweenSlices = -1.0

    flipped = tmp_path / "negative"
    copy_series(series, flipped, edit=negative)
    predict(flipped, "--model", model, "--dicom-seg", tmp_path / "negative.dcm")
    assert dciodvfy(tmp_path / "negative.dcm") == []
    measures = pydicom.dcmread(tmp_path / "negative.dcm").SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SpacingBetweenSlices) == 1.0


def test_a_rerun_over_its_earlier_results_writes_their_next_revision(series, tmp_path, highdicom):
    """A SEG and an SR written over the ones an earlier run of the model made on the series are
    their next revisions, the SR naming the report it replaces; over another model's report, another
    series' report, or a file that is none, the first."""
    import pydicom

    model = bone_model(tmp_path / "repo", **BONE_CODES)
    seg, sr = tmp_path / "seg.dcm", tmp_path / "sr.dcm"
    assert "revision" not in predict(series, "--model", model, "--dicom-seg", seg, "--dicom-sr", sr)
    first = pydicom.dcmread(sr)
    printed = predict(series, "--model", model, "--dicom-seg", seg, "--dicom-sr", sr)
    assert f"--dicom-seg {seg}: revision 2 (series 9002) of the SEG" in printed
    assert f"--dicom-sr {sr}: revision 2 (series 9102) of the report, named as its predecessor" in printed
    revised, document = highdicom.seg.segread(seg), pydicom.dcmread(sr)
    assert (revised.SeriesNumber, revised.SeriesDescription[-10:]) == (9002, "revision 2")
    assert document.SeriesNumber == 9102 and document.SOPInstanceUID != first.SOPInstanceUID
    [study] = document.PredecessorDocumentsSequence
    [[replaced]] = [item.ReferencedSOPSequence for item in study.ReferencedSeriesSequence]
    assert replaced.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert revised.SOPInstanceUID in referenced_instances(document)
    assert dciodvfy(seg) == [] and dciodvfy(sr) == []
    assert "revision" not in predict(series, "--model", density_classifier(tmp_path / "repo"), "--dicom-sr", sr)
    assert pydicom.dcmread(sr).SeriesNumber == 9101 and "PredecessorDocumentsSequence" not in pydicom.dcmread(sr)
    predict(series, "--model", model, "--dicom-seg", seg, "--dicom-sr", sr)          # another model's report before
    other = tmp_path / "other"
    copy_series(series, other)
    predict(other, "--model", model, "--dicom-seg", tmp_path / "other_seg.dcm", "--dicom-sr", sr)
    assert pydicom.dcmread(sr).SeriesNumber == 9101 and "PredecessorDocumentsSequence" not in pydicom.dcmread(sr)
    (tmp_path / "plain.dcm").write_bytes(b"not dicom")
    predict(series, "--model", model, "--dicom-seg", tmp_path / "plain.dcm")
    assert highdicom.seg.segread(tmp_path / "plain.dcm").SeriesNumber == 9001


def test_an_earlier_report_is_replaced_only_within_its_patient_and_study(series, tmp_path):
    """The PACS node's revision names the report it keeps for the series as its predecessor only
    where that report is of the same patient and study (a sender may reuse a series UID)."""
    import pydicom

    from runtime.io.dicom_sr import earlier_report

    sr = tmp_path / "sr.dcm"
    predict(series, "--model", density_classifier(tmp_path / "repo"), "--dicom-sr", sr)
    source = pydicom.dcmread(sorted(series.iterdir())[0], stop_before_pixels=True)
    assert earlier_report(sr, source).SOPInstanceUID == pydicom.dcmread(sr).SOPInstanceUID
    for key, other in (("PatientID", "OTHER-0002"), ("StudyInstanceUID", "1.2.826.0.1.3680043.8.498.1")):
        changed = pydicom.dcmread(sorted(series.iterdir())[0], stop_before_pixels=True)
        setattr(changed, key, other)
        assert earlier_report(sr, changed) is None, key
    assert earlier_report(tmp_path / "absent.dcm", source) is None


def test_the_report_says_whether_the_scan_lies_far_outside_the_models_training(data_dir, series, tmp_path,
                                                                                highdicom):
    """A model with an input profile reports its input check in a group of its own: Yes for a CT
    given to a model trained on brain MRs (nothing as dark as air), No for the CT it was trained on;
    a model without a profile reports none."""
    from runtime.io import read_scan
    from runtime.profile import build_profile, scan_stats

    def profile_of(path: Path) -> dict:
        scan = read_scan([path])
        return build_profile([scan_stats(scan.array_zyx, scan.spacing_zyx, scan.reference.GetDirection())], ["image"])

    def input_check(model: Path, name: str) -> list[tuple[str, str]]:
        predict(series, "--model", model, "--dicom-seg", tmp_path / f"{name}.seg.dcm", "--dicom-sr",
                tmp_path / f"{name}.dcm")
        assert dciodvfy(tmp_path / f"{name}.dcm") == []
        _, content = report(tmp_path / f"{name}.dcm", highdicom)
        groups = [group for group in content.get_image_measurement_groups()
                  if group.tracking_identifier == "input check"]
        return [(item.name.meaning, item.value.meaning) for group in groups
                for item in group.get_qualitative_evaluations()]

    mr = bone_model(tmp_path / "mr", profile=profile_of(data_dir / "radiology" / "pyradiomics_brain1_image.nrrd"))
    assert input_check(mr, "mr") == [("Input far outside the model's training", "Yes")]
    ct = bone_model(tmp_path / "ct", profile=profile_of(series))
    assert input_check(ct, "ct") == [("Input far outside the model's training", "No")]
    assert input_check(bone_model(tmp_path / "none"), "none") == []


def test_runs_a_report_cannot_serve_are_refused_before_the_work(data_dir, series, tmp_path):
    sr = tmp_path / "sr.dcm"
    bright = REPO / "model_repository" / "demo_bright_structures"
    run_failing(["predict", str(series), "--model", str(bright), "--dicom-sr", str(sr)],
                "--dicom-sr of a segmentation model", "give --dicom-seg too")
    classifier = density_classifier(tmp_path / "repo")
    scan = data_dir / "radiology" / "pyradiomics_breast1_image.nrrd"
    run_failing(["predict", str(scan), "--model", str(classifier), "--dicom-sr", str(sr)],
                "--dicom-sr needs one DICOM series folder")
    run_failing(["predict", str(series), "--model", str(classifier), "--dicom-sr", str(tmp_path / "sr.json")],
                "must end with", ".dcm")
    run_failing(["predict", "--csv", str(tmp_path / "s.csv"), "--model", str(classifier), "--dicom-sr", str(sr)],
                "--dicom-sr runs with one DICOM series for now, not with --csv")
    run_failing(["predict", str(series), "--model", str(classifier), "--dicom-sr", str(sr), "--output", str(sr)],
                "--dicom-sr", "--output")
    bone = bone_model(tmp_path / "bone")
    run_failing(["predict", str(series), "--model", str(bone), "--dicom-seg", str(tmp_path / "seg.dcm"), "--fractional",
                 "--dicom-sr", str(sr)], "--dicom-sr states the volume of each segment of a binary SEG")
    refused_inside_the_series(series, tmp_path / "series", classifier, "--dicom-sr", "sr.dcm")
    assert not sr.exists()


def test_a_unit_belongs_to_a_regression_target_and_is_ucum() -> None:
    from runtime.contract import Concept, parse_classes
    from runtime.manifest import parse_manifest
    from runtime.validation import Problems
    from tests.modelkit import manifest_dict

    problems = Problems("spec")
    age = {"name": "age", "unit": {"scheme": "UCUM", "value": "a", "meaning": "year"}}
    assert parse_classes({0: age}, "regression", "classes", problems)[0].unit == Concept("UCUM", "a", "year")
    assert problems.items == []
    manifest = parse_manifest(manifest_dict(task="regression", classes=[{"value": 0, **age}], files={"model.onnx": "0" * 64},
                                            output={"activation": "none", "label_rule": "argmax", "threshold": 0.5,
                                                    "ensemble": "mean"}))
    assert manifest.to_dict()["classes"] == [{"value": 0, **age}]                 # kept in the manifest
    parse_classes({0: "low", 1: age}, "classification", "classes", problems)
    parse_classes({0: {**age, "unit": {"scheme": "SCT", "value": "258707000", "meaning": "year"}}}, "regression",
                  "classes", problems)
    assert problems.items == [
        "classes: unit is for the targets of a regression model, not the classes of a classification model",
        "classes.0.unit.scheme: must be UCUM (DICOM's units), got 'SCT'"]


def test_a_threshold_classifier_that_finds_no_class_reports_its_first_class_present(series, tmp_path, highdicom):
    """One sigmoid per class after the first, none past the threshold: the first class is the
    prediction, and the report says so though no probability of it is scored."""
    from export import graphs

    model = make_model(tmp_path / "repo", graphs.channel_classifier(1, 3, 2), task="classification", name="finding",
                       classes=[{"value": 0, "name": "normal"}, {"value": 1, "name": "benign"},
                                {"value": 2, "name": "malignant"}],
                       output={"activation": "sigmoid", "label_rule": "threshold", "threshold": 0.6,
                               "ensemble": "mean"},
                       preprocessing=[{"name": "zscore", "params": {"region": "whole"}},
                                      {"name": "resize", "params": {"shape": [3, 16, 16]}}],
                       window=window(mode="whole", patch_size=[3, 16, 16]))
    printed = predict(series, "--model", model, "--dicom-sr", tmp_path / "sr.dcm")
    assert "predicted=0 (normal), probability_benign=0.4" in printed and "probability_malignant=0.5" in printed
    assert dciodvfy(tmp_path / "sr.dcm") == []
    _, content = report(tmp_path / "sr.dcm", highdicom)
    found = {group.tracking_identifier: ([m.value for m in group.get_measurements()],
                                         [q.value.meaning for q in group.get_qualitative_evaluations()])
             for group in content.get_image_measurement_groups()}
    assert found["normal"] == ([], ["Present"])
    assert found["benign"][1] == found["malignant"][1] == ["Absent"] and len(found) == 3


def test_names_in_any_script_are_written_in_utf8_and_validate(series, tmp_path, highdicom):
    """A class named in Japanese and German, a unit with an accent: the SR (and a SEG) is written in
    UTF-8 whatever the series' character set, validates, and reads back to the same text."""
    import pydicom

    from export import graphs

    name, unit = "Läsion 病変", {"scheme": "UCUM", "value": "a", "meaning": "année"}
    classifier = make_model(tmp_path / "repo", graphs.channel_classifier(1, 3, 2), task="classification",
                            classes=[{"value": 0, "name": "kein Befund"}, {"value": 1, "name": name}],
                            preprocessing=[{"name": "resize", "params": {"shape": [3, 16, 16]}}],
                            window=window(mode="whole", patch_size=[3, 16, 16]), name="utf8_classifier")
    regressor = make_model(tmp_path / "repo", graphs.mean_regressor(1, 3), task="regression", name="utf8_regressor",
                           classes=[{"value": 0, "name": "âge", "unit": unit}],
                           output={"activation": "none", "label_rule": "argmax", "threshold": 0.5, "ensemble": "mean"},
                           preprocessing=[{"name": "resize", "params": {"shape": [3, 16, 16]}}],
                           window=window(mode="whole", patch_size=[3, 16, 16]))
    segmenter = make_model(tmp_path / "repo", graphs.bright_structures(3), name="utf8_segmenter",
                           classes=[{"value": 0, "name": "background"}, {"value": 1, "name": name, **BONE_CODES}],
                           preprocessing=[{"name": "normalize", "params": {"mean": [0], "std": [100]}}])
    predict(series, "--model", classifier, "--dicom-sr", tmp_path / "c.dcm")
    predict(series, "--model", regressor, "--dicom-sr", tmp_path / "r.dcm")
    predict(series, "--model", segmenter, "--dicom-seg", tmp_path / "seg.dcm", "--dicom-sr", tmp_path / "s.dcm")
    for path in ("c.dcm", "r.dcm", "seg.dcm", "s.dcm"):
        assert dciodvfy(tmp_path / path) == [], path
        assert pydicom.dcmread(tmp_path / path).SpecificCharacterSet == "ISO_IR 192"
    _, content = report(tmp_path / "c.dcm", highdicom)
    assert content.get_image_measurement_groups()[1].finding_type.meaning == name
    _, content = report(tmp_path / "r.dcm", highdicom)
    [value] = content.get_image_measurement_groups()[0].get_measurements()
    assert (value.name.meaning, value.unit.meaning) == ("âge", "année")
    assert highdicom.seg.segread(tmp_path / "seg.dcm").SegmentSequence[0].SegmentLabel == name


def test_a_series_without_a_frame_of_reference_gets_a_report_but_no_seg(data_dir, tmp_path, highdicom):
    """A radiograph has no frame of reference, and a report needs none: it is written; a SEG,
    which is placed in one, is refused."""
    import pydicom

    def no_frame(index: int, dataset: pydicom.Dataset) -> None:
        del dataset.FrameOfReferenceUID

    copy_series(data_dir / "dicom" / "dcmqi_ct3", tmp_path / "series", edit=no_frame)
    classifier = density_classifier(tmp_path / "repo")
    predict(tmp_path / "series", "--model", classifier, "--dicom-sr", tmp_path / "sr.dcm")
    assert dciodvfy(tmp_path / "sr.dcm") == []
    bone = bone_model(tmp_path / "bone")
    run_failing(["predict", str(tmp_path / "series"), "--model", str(bone), "--dicom-seg", str(tmp_path / "seg.dcm")],
                "FrameOfReferenceUID is empty, so a SEG cannot join this series' study and frame of reference")


def test_a_model_whose_values_are_not_finite_is_refused_and_nothing_is_written(series, tmp_path):
    import onnx
    from onnx import helper, numpy_helper

    from export import graphs

    nodes = [helper.make_node("ReduceMean", ["input"], ["mean"], axes=[2, 3, 4], keepdims=0),
             helper.make_node("Div", ["mean", "zero"], ["output"])]
    graph = helper.make_graph(nodes, "infinite", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT,
                                                                                  ["batch", 1, 3, 16, 16])],
                              [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["batch", 1])],
                              [numpy_helper.from_array(np.zeros(1, np.float32), "zero")])
    infinite = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    infinite.ir_version = graphs.IR_VERSION
    model = make_model(tmp_path / "repo", infinite, task="regression", name="infinite",
                       classes=[{"value": 0, "name": "value"}],
                       output={"activation": "none", "label_rule": "argmax", "threshold": 0.5, "ensemble": "mean"},
                       preprocessing=[{"name": "resize", "params": {"shape": [3, 16, 16]}}],
                       window=window(mode="whole", patch_size=[3, 16, 16]))
    run_failing(["predict", str(series), "--model", str(model), "--dicom-sr", str(tmp_path / "sr.dcm"), "--output",
                 str(tmp_path / "values.csv")], "values that are not finite numbers", "infinite v1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_the_observer_uid_is_one_per_model_version_and_its_files(tmp_path):
    import dataclasses

    from runtime.io.dicom_sr import _device_uid
    from runtime.manifest import load_manifest

    manifest = load_manifest(density_classifier(tmp_path / "repo"))[0]
    retrained = dataclasses.replace(manifest, files={"model.onnx": "f" * 64})
    for root in (None, "1.2.826.0.1.3680043.9.7"):
        assert _device_uid(manifest, root) == _device_uid(manifest, root)
        assert _device_uid(manifest, root) != _device_uid(retrained, root)
    assert _device_uid(manifest, "1.2.826.0.1.3680043.9.7").startswith("1.2.826.0.1.3680043.9.7.")


def test_every_new_uid_of_the_seg_and_sr_lies_under_the_uid_root_given(series, tmp_path):
    """A hospital's UIDs are made under its own root: the SEG's and SR's series and instances, the
    SR's device and tracking identifiers; the objects still validate. A root that is none, or too
    long to leave a UID room to be unique, is refused before the work."""
    import pydicom

    root = "1.2.826.0.1.3680043.9.7"
    model = bone_model(tmp_path / "repo", **BONE_CODES)
    seg_path, sr_path = tmp_path / "seg.dcm", tmp_path / "sr.dcm"
    predict(series, "--model", model, "--dicom-seg", seg_path, "--dicom-sr", sr_path, "--uid-root", root + ".")
    assert dciodvfy(seg_path) == [] and dciodvfy(sr_path) == []

    copied = {str(element.value) for path in series.iterdir()
              for element in pydicom.dcmread(path, stop_before_pixels=True).iterall() if element.VR == "UI"}
    made, own = set(), []
    for path in (seg_path, sr_path):
        dataset = pydicom.dcmread(path)
        made |= {str(e.value) for e in dataset.iterall() if e.VR == "UI"} - copied
        own += [dataset.SeriesInstanceUID, dataset.SOPInstanceUID]
    made = {uid for uid in made if not uid.startswith(STANDARD_UIDS)}
    assert len(made) >= 7 and len(set(own)) == 4, made       # series and instance of each, dimensions, observer,
    assert all(uid.startswith(root + ".") and len(uid) <= 64 for uid in made), made                    # tracking
    source_series = pydicom.dcmread(sorted(series.iterdir())[0], stop_before_pixels=True).SeriesInstanceUID
    assert source_series in {str(e.value) for e in pydicom.dcmread(sr_path).iterall() if e.VR == "UI"}  # copied
    for given, problem in (("1.2.03", "is no UID root"), ("1.2.3..", "is no UID root"),
                           ("1." + "2" * 40, "at most 40 characters"),
                           ("org.example", "numbers without leading zeros")):
        run_failing(["predict", str(series), "--model", str(model), "--dicom-seg", str(tmp_path / "no.dcm"),
                     "--uid-root", given], problem)
    run_failing(["predict", str(series), "--model", str(model), "--output", str(tmp_path / "l.nii.gz"),
                 "--uid-root", root], "--uid-root is the root of the UIDs of a --dicom-seg or --dicom-sr")
    assert not (tmp_path / "no.dcm").exists() and not (tmp_path / "l.nii.gz").exists()


def test_the_report_names_the_series_procedure_where_it_has_a_whole_code(data_dir, tmp_path):
    import pydicom
    from pydicom.dataset import Dataset

    def procedure(code: dict[str, str]):
        def edit(index: int, dataset: pydicom.Dataset) -> None:
            item = Dataset()
            for keyword, value in code.items():
                setattr(item, keyword, value)
            dataset.ProcedureCodeSequence = [item]
        return edit

    def reported(path: Path) -> tuple[str, str]:
        [item] = [entry for entry in pydicom.dcmread(path).ContentSequence
                  if entry.ConceptNameCodeSequence[0].CodeValue == "121058"]        # Procedure reported
        return item.ConceptCodeSequence[0].CodeValue, item.ConceptCodeSequence[0].CodeMeaning

    classifier = density_classifier(tmp_path / "repo")
    chest = {"CodeValue": "24627-2", "CodingSchemeDesignator": "LN", "CodeMeaning": "CT Chest"}
    fallback = ("363679005", "Imaging procedure")
    emptied = dict.fromkeys(chest, "")                                   # as a de-identifier leaves it
    for name, code, expected in (("chest", chest, ("24627-2", "CT Chest")), ("partial", {"CodeValue": "24627-2"},
                                 fallback), ("emptied", emptied, fallback), ("empty", {}, fallback)):
        copy_series(data_dir / "dicom" / "dcmqi_ct3", tmp_path / name, edit=procedure(code))
        predict(tmp_path / name, "--model", classifier, "--dicom-sr", tmp_path / f"{name}.dcm")
        assert reported(tmp_path / f"{name}.dcm") == expected
        assert dciodvfy(tmp_path / f"{name}.dcm") == []


def test_a_class_name_with_a_backslash_runs_but_is_written_into_no_seg_or_sr(series, tmp_path):
    """DICOM reads a backslash as a value separator: such a model runs and writes its values, and
    --dicom-sr (or --dicom-seg) is refused before the work, naming the class and where to rename it."""
    from export import graphs

    model = make_model(tmp_path / "repo", graphs.channel_classifier(1, 3, 2), task="classification",
                       classes=[{"value": 0, "name": "low"}, {"value": 1, "name": "mid\\high"}],
                       preprocessing=[{"name": "resize", "params": {"shape": [3, 16, 16]}}],
                       window=window(mode="whole", patch_size=[3, 16, 16]))
    assert "probability_mid\\high=" in predict(series, "--model", model, "--output", tmp_path / "values.csv")
    run_failing(["predict", str(series), "--model", str(model), "--dicom-sr", str(tmp_path / "sr.dcm")],
                "class 'mid\\\\high' holds a backslash", "rename the class in the manifest")
    assert not (tmp_path / "sr.dcm").exists()
