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

from tests.conftest import REPO
from tests.dicomkit import BONE_CODES, dciodvfy, predict
from tests.modelkit import HOUNSFIELD, bone_model, density_classifier, mean_density_model, run_failing

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
        [presence] = group.get_qualitative_evaluations()
        assert presence.value.meaning == ("Present" if name == {"0": "low", "1": "mid", "2": "high"}[row["predicted"]]
                                          else "Absent")
    assert groups[0].finding_type.value == "86049000"                        # the class's own code
    assert (groups[1].finding_type.scheme_designator, groups[1].finding_type.meaning) == ("99MEDFLOW", "mid")
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
    copy = tmp_path / "series"
    shutil.copytree(series, copy)
    for inside in (copy / "sr.dcm", copy / "01.dcm"):                 # into the series folder, or over a slice
        run_failing(["predict", str(copy), "--model", str(classifier), "--dicom-sr", str(inside)],
                    f"lies in the input folder {copy}")
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in series.iterdir())
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
