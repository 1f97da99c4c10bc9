"""DICOM SR out: a model's findings on a DICOM series as one Comprehensive SR document holding an
Imaging Measurement Report (TID 1500, highdicom), which a PACS stores beside the series and a viewer
lists with it.

- A classification model: one group per scored class, the class as its finding type, holding the
  class's probability ("Probability", unit "no units") and whether it is the predicted class (the
  qualitative evaluation "Presence of property": "Present" for it, "Absent" for the others).
- A regression model: one group with a measurement per target, named by the target and in its
  unit (the manifest's `unit`, UCUM "no units" where it gives none).
- A segmentation model: one volumetric group per class after the background, referencing its
  segment of the DICOM SEG written in the same run, with the class's volume in millilitres.

Every group names the model (name, version) as its algorithm; the observer is the model as a
device; the document's evidence lists every instance of the series (and the SEG), once; a revised
report names the one it replaces. A class is coded by its `type` concept where the manifest gives
one, else by the code `<model>:<class value>` of the local scheme 99MEDFLOW, whose meaning is the
class's name. The document is written in UTF-8. Needs the `dicom` extra (pydicom, highdicom).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from runtime.contract import ClassSpec
from runtime.io.dicom_seg import (
    DEFAULT_CATEGORY, DEFAULT_TYPE, MANUFACTURER, MAX_REVISION, UTF8, DicomObjectError, coded, modules, new_uid,
    result_description,
)
from runtime.manifest import Manifest
from runtime.postprocess import scored_values

if TYPE_CHECKING:
    from runtime.predict import Prediction

log = logging.getLogger(__name__)

SR_SUFFIXES = (".dcm",)
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SERIES_NUMBER = 9101
LOCAL_SCHEME = "99MEDFLOW"
LOCAL_SCHEME_NAME = ("Classes of medflow models, as <model>:<class value> (the meaning is the class's name), and "
                     "input-outside-training")
NO_UNITS = ("UCUM", "1", "no units")
MILLILITRE = ("UCUM", "mL", "milliliter")
PROBABILITY = ("DCM", "122157", "Probability")
PRESENCE = ("DCM", "121052", "Presence of property")
PRESENT = ("DCM", "121053", "Present")
ABSENT = ("DCM", "121054", "Absent")
VOLUME = ("SCT", "118565006", "Volume")
IMAGING_PROCEDURE = ("SCT", "363679005", "Imaging procedure")
# Whether the scan lies far outside what the model saw in training (runtime.profile), in a group of its own.
OUTSIDE_TRAINING = (LOCAL_SCHEME, "input-outside-training", "Input far outside the model's training")
YES = ("SCT", "373066001", "Yes")
NO = ("SCT", "373067005", "No")
INPUT_CHECK = "input check"


@dataclass(frozen=True)
class Findings:
    """What a report states. Classification: `scores` over the scored classes and the predicted
    class value `label`; regression: `scores`, one per target; segmentation: `volumes_ml` of each
    class after the background (its value to millilitres) and the SEG (`seg`, a pydicom data set)
    whose segments they measure."""

    task: str
    scores: tuple[float, ...] = ()
    label: int | None = None
    volumes_ml: tuple[tuple[int, float], ...] = ()
    seg: Any = None
    outside: tuple[str, ...] | None = None      # what lies far outside training; None: no profile to hold it to


def findings_of(prediction: Prediction, manifest: Manifest, spacing_xyz: Sequence[float], seg: Any = None) -> Findings:
    """What a report states of a prediction: the scores and the predicted class, or the volume of
    each class on a grid of `spacing_xyz` mm with the SEG (`seg`) of its segments; and, where the
    scan was held to the model's input profile, whether it lies far outside its training."""
    outside = prediction.outside
    if manifest.task == "segmentation":
        return Findings(manifest.task, volumes_ml=class_volumes(prediction.labels_zyx, spacing_xyz, manifest), seg=seg,
                        outside=outside)
    return Findings(manifest.task, scores=tuple(float(v) for v in prediction.scores), label=prediction.label,
                    outside=outside)


def class_volumes(labels_zyx: np.ndarray, spacing_xyz: Sequence[float], manifest: Manifest) -> tuple[
        tuple[int, float], ...]:
    """Each class after the background with its volume in millilitres on a grid of `spacing_xyz` mm."""
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    counts = np.bincount(labels_zyx.ravel(), minlength=max(c.value for c in manifest.classes) + 1)
    return tuple((spec.value, float(counts[spec.value]) * voxel_ml) for spec in manifest.classes[1:])


def write_sr(path: Path, sources: Sequence[Any], manifest: Manifest, findings: Findings, revision: int = 1,
             previous: Any = None, uid_root: str | None = None) -> None:
    """Write the report of `findings` on the series `sources` (headers in slice order) at `path`.
    A `revision` past 1 takes the next series number and says so in its series description;
    `previous`, the report it replaces (a pydicom data set), is named as its predecessor. Its new
    UIDs (series, instance, device, tracking) are made under `uid_root` (dicom_seg.new_uid)."""
    pydicom, highdicom = modules()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            document = _document(pydicom, highdicom, sources, manifest, findings, revision, previous, uid_root)
        except (ValueError, TypeError, AttributeError, KeyError) as error:
            raise DicomObjectError(f"a DICOM SR cannot be built on this series ({error})",
                                   "check the series' headers") from None
        document.save_as(path)
    for warning in caught:
        log.info("DICOM SR: %s", warning.message)


def _document(pydicom: Any, highdicom: Any, sources: Sequence[Any], manifest: Manifest, findings: Findings,
              revision: int, previous: Any = None, uid_root: str | None = None) -> Any:
    sr = highdicom.sr
    algorithm = sr.AlgorithmIdentification(name=manifest.name[:64], version=str(manifest.version)[:64])
    groups = _groups(highdicom, manifest, findings, algorithm, uid_root)
    device = sr.ObserverContext(
        observer_type=pydicom.sr.codedict.codes.DCM.Device,
        observer_identifying_attributes=sr.DeviceObserverIdentifyingAttributes(
            uid=_device_uid(manifest, uid_root), name=manifest.name[:64], manufacturer_name=MANUFACTURER,
            model_name=f"{manifest.name} v{manifest.version}"[:64]))
    report = sr.MeasurementReport(
        observation_context=sr.ObservationContext(observer_device_context=device),
        procedure_reported=_procedure(highdicom, sources), imaging_measurements=groups)
    description = result_description(f"{manifest.name} v{manifest.version} report", sources, revision)
    evidence = [*sources, *([findings.seg] if findings.seg is not None else [])]
    document = sr.ComprehensiveSR(
        evidence=evidence, content=report, series_instance_uid=new_uid(uid_root),
        series_number=SERIES_NUMBER + min(revision, MAX_REVISION) - 1, sop_instance_uid=new_uid(uid_root),
        instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=manifest.name[:64],
        software_versions=f"{manifest.name} v{manifest.version}"[:64],
        is_complete=True, is_final=False, is_verified=False,
        series_description=description, previous_versions=[previous] if previous is not None else None)
    if any(_local(item) for item in document.iterall()):
        document.CodingSchemeIdentificationSequence = [_scheme_identification(pydicom)]
    document.SpecificCharacterSet = UTF8
    return document


def earlier_report(path: Path, source: Any) -> Any:
    """The report at `path` that a new one of the series of `source` (one of its instances)
    replaces (a pydicom data set, headers only), or None where none is there, or it is no report of
    the same kind, of the same patient and study."""
    pydicom, _ = modules()
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, ValueError, AttributeError, TypeError, KeyError, pydicom.errors.InvalidDicomError):
        return None
    same = all(str(dataset.get(key, "")) == str(source.get(key, "")) for key in ("PatientID", "StudyInstanceUID"))
    return dataset if same and str(dataset.get("SOPClassUID", "")) == COMPREHENSIVE_SR else None


def _procedure(highdicom: Any, sources: Sequence[Any]) -> Any:
    """The procedure the report is of: the series' own Procedure Code where its first instance has a
    whole one, else SNOMED CT "Imaging procedure"."""
    items = sources[0].get("ProcedureCodeSequence") if sources else None
    if items:
        try:
            return highdicom.sr.CodedConcept.from_dataset(items[0])
        except (AttributeError, TypeError, ValueError, KeyError):
            log.info("DICOM SR: the series' Procedure Code Sequence is incomplete; the report names an imaging "
                     "procedure")
    return _code(highdicom, IMAGING_PROCEDURE)


def _local(element: Any) -> bool:
    return element.keyword == "CodingSchemeDesignator" and element.value == LOCAL_SCHEME


def _scheme_identification(pydicom: Any) -> Any:
    item = pydicom.Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = LOCAL_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return item


def _device_uid(manifest: Manifest, uid_root: str | None) -> str:
    """One UID per model version (under `uid_root`), the same in every report it writes: made of its
    name, version and the checksums of its files, so two models of one name and version differ."""
    files = [f"{name}={digest}" for name, digest in sorted(manifest.files.items())]
    return new_uid(uid_root, [MANUFACTURER, manifest.name, str(manifest.version), *files])


def concept(highdicom: Any, spec: ClassSpec, manifest: Manifest) -> Any:
    """A class's coded concept: its `type` where the manifest gives one, else the local code
    `<model name>:<class value>`, one code per class of each model."""
    local = (LOCAL_SCHEME, f"{manifest.name}:{spec.value}", spec.name)
    return coded(highdicom, spec.type, local)


def _code(highdicom: Any, triplet: tuple[str, str, str]) -> Any:
    return coded(highdicom, None, triplet)


def _tracking(highdicom: Any, text: str, uid_root: str | None) -> Any:
    return highdicom.sr.TrackingIdentifier(uid=new_uid(uid_root), identifier=text[:64])


def _groups(highdicom: Any, manifest: Manifest, findings: Findings, algorithm: Any,
            uid_root: str | None) -> list[Any]:
    """The report's measurement groups, and the input check's where the model has a profile."""
    groups = _finding_groups(highdicom, manifest, findings, algorithm, uid_root)
    if findings.outside is not None:
        groups.append(highdicom.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(highdicom, INPUT_CHECK, uid_root), algorithm_id=algorithm,
            qualitative_evaluations=[highdicom.sr.QualitativeEvaluation(
                name=_code(highdicom, OUTSIDE_TRAINING), value=_code(highdicom, YES if findings.outside else NO))]))
    return groups


def _finding_groups(highdicom: Any, manifest: Manifest, findings: Findings, algorithm: Any,
                    uid_root: str | None) -> list[Any]:
    if findings.task == "segmentation":
        return _volume_groups(highdicom, manifest, findings, algorithm, uid_root)

    def group(identifier: str, **content: Any) -> Any:
        return highdicom.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(highdicom, identifier, uid_root), algorithm_id=algorithm, **content)

    if findings.task == "regression":
        measurements = [highdicom.sr.Measurement(name=concept(highdicom, spec, manifest), value=float(value),
                                                 unit=coded(highdicom, spec.unit, NO_UNITS))
                        for spec, value in scored_values(np.asarray(findings.scores), manifest)]
        return [group(f"{manifest.name} values", measurements=measurements)]
    probability = _code(highdicom, PROBABILITY)
    scored = scored_values(np.asarray(findings.scores), manifest)
    unscored = [spec for spec in manifest.classes if spec.value == findings.label
                and all(spec.value != other.value for other, _ in scored)]
    return [group(spec.name, finding_type=concept(highdicom, spec, manifest),
                  finding_category=_category(highdicom, spec),
                  qualitative_evaluations=[_presence(highdicom, spec.value == findings.label)],
                  measurements=[] if value is None else [highdicom.sr.Measurement(
                      name=probability, value=value, unit=_code(highdicom, NO_UNITS))])
            for spec, value in [*((spec, None) for spec in unscored), *scored]]


def _category(highdicom: Any, spec: ClassSpec) -> Any:
    return None if spec.category is None else coded(highdicom, spec.category, DEFAULT_CATEGORY)


def _presence(highdicom: Any, present: bool) -> Any:
    return highdicom.sr.QualitativeEvaluation(name=_code(highdicom, PRESENCE),
                                              value=_code(highdicom, PRESENT if present else ABSENT))


def _volume_groups(highdicom: Any, manifest: Manifest, findings: Findings, algorithm: Any,
                   uid_root: str | None) -> list[Any]:
    by_value = {spec.value: (number, spec) for number, spec in enumerate(manifest.classes)}
    volume = _code(highdicom, VOLUME)
    series = highdicom.sr.SourceSeriesForSegmentation(findings.seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    groups = []
    for value, millilitres in findings.volumes_ml:
        number, spec = by_value[value]
        segment = highdicom.sr.ReferencedSegment(
            sop_class_uid=findings.seg.SOPClassUID, sop_instance_uid=findings.seg.SOPInstanceUID,
            segment_number=number, source_series=series)
        groups.append(highdicom.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(highdicom, spec.name, uid_root), referenced_segment=segment,
            algorithm_id=algorithm,
            finding_category=coded(highdicom, spec.category, DEFAULT_CATEGORY),
            finding_type=coded(highdicom, spec.type, DEFAULT_TYPE), measurements=[highdicom.sr.Measurement(
                name=volume, value=millilitres, unit=_code(highdicom, MILLILITRE))]))
    return groups
