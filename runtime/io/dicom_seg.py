"""DICOM SEG out and in: a label map on a DICOM series' own grid as one Segmentation object
(highdicom), and a SEG read back onto a scan's slices (`read_seg`).

One segment per class but the first (the background), named after the class and coded with the
class's `category` and `type` (the manifest's; SNOMED CT "Tissue" where it gives none), with the
model's name and version as the algorithm; every frame references the source instance it lies on, in the
series' frame of reference, so a viewer shows the SEG over the series. The source instances are
matched to the label map's slices by their Image Position (Patient) on the volume's grid, never by
file name. Needs the `dicom` extra (pydicom, highdicom).
"""
from __future__ import annotations

import logging
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from runtime.contract import ClassSpec, Concept, beyond_probabilities
from runtime.errors import InputError, ModelError, install_hint
from runtime.manifest import Manifest

log = logging.getLogger(__name__)

SEG_SUFFIXES = (".dcm",)
# The coded concepts a segment gets when its class has none: SNOMED CT "Tissue" as category and
# type, the generic pair for a class the manifest names only by text.
DEFAULT_CATEGORY = ("SCT", "85756007", "Tissue")
DEFAULT_TYPE = ("SCT", "85756007", "Tissue")
MANUFACTURER = "medflow"
SERIES_NUMBER = 9001
# Every SEG and SR is written in UTF-8: class names in any script, the series' own values (read in
# its character set) kept as they are.
UTF8 = "ISO_IR 192"
# The identifiers a SEG copies from its sources to join their patient, study and frame of reference.
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


class DicomObjectError(InputError):
    """A SEG or SR cannot be made on this series: `fact` says why, `remedy` what mends the series.
    A command that can write another output names it with `or_instead`."""

    def __init__(self, fact: str, remedy: str) -> None:
        super().__init__(f"{fact}; {remedy}.")
        self.fact = fact
        self.remedy = remedy

    def or_instead(self, alternative: str) -> InputError:
        """The same refusal with `alternative` offered beside the remedy."""
        return InputError(f"{self.fact}; {self.remedy}, or {alternative}.")


def check_available(manifest: Manifest | None = None) -> None:
    """InputError naming the install line where pydicom or highdicom is missing, or a class of
    `manifest` whose name DICOM cannot hold as one value (a backslash separates values)."""
    modules()
    named = () if manifest is None else manifest.classes[1:] if manifest.task == "segmentation" else manifest.classes
    for spec in named:                          # a segmentation's background is no segment
        if "\\" in spec.name:
            raise InputError(f"model {manifest.name}'s class {spec.name!r} holds a backslash, which DICOM reads as a "
                             "value separator, so no SEG or SR can name it; rename the class in the manifest (and in "
                             "the spec or training config it came from).")


def modules() -> tuple[Any, Any]:
    try:
        import highdicom
        import pydicom
    except ImportError as error:
        raise InputError(f"DICOM SEG and SR files need pydicom and highdicom ({error}); "
                         f"{install_hint('dicom')}.") from None
    return pydicom, highdicom


# An organisation's UID root, under which the SEGs' and SRs' new UIDs are made (--uid-root): at most
# this many characters, leaving the 64 of a UID room for 23 or more digits of a random number.
MAX_UID_ROOT = 40
UID_ROOT_RULE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\Z")


def check_uid_root(text: str | None) -> str | None:
    """`text` as a UID root (numbers without leading zeros, separated by dots), or None; InputError
    naming --uid-root where it is none."""
    if text is None:
        return None
    root = text.strip()
    root = root[:-1] if root.endswith(".") else root         # a root as written before a UID's own digits
    if not (UID_ROOT_RULE.match(root) and len(root) <= MAX_UID_ROOT):
        raise InputError(f"--uid-root {text!r} is no UID root: numbers without leading zeros separated by dots, at "
                         f"most {MAX_UID_ROOT} characters (room for the unique part of each UID); give your "
                         "organisation's root (its DICOM conformance statement or PACS team has it).")
    return root


def new_uid(root: str | None, entropy: Sequence[str] | None = None) -> str:
    """A new UID under `root` (check_uid_root), or highdicom's root where None; with `entropy`, the
    same UID for the same texts (pydicom's root where `root` is None)."""
    pydicom, highdicom = modules()
    if root is None:
        return str(highdicom.UID()) if entropy is None else str(pydicom.uid.generate_uid(entropy_srcs=list(entropy)))
    return str(pydicom.uid.generate_uid(prefix=f"{root}.", entropy_srcs=None if entropy is None else list(entropy)))


def _text(dataset: Any, keyword: str) -> str:
    value = dataset.get(keyword)
    return "" if value is None else str(value).strip()


def _repair_sop(dataset: Any, path: Path, kind: str, notes: set[str]) -> None:
    """An instance whose SOP Class or Instance UID is empty in its data set takes them from its
    file meta information (Media Storage SOP Class/Instance UID), which names the same object; said
    in `notes`, once for the series."""
    meta = getattr(dataset, "file_meta", None)
    pairs = (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID"))
    for keyword, stored in pairs:
        if not _text(dataset, keyword):
            value = "" if meta is None else _text(meta, stored)
            if not value:
                raise InputError(f"{path}: {keyword} is empty in the data set and in the file meta; the {kind} cannot "
                                 "reference this instance. Export the series again from the PACS.")
            setattr(dataset, keyword, value)
            notes.add(f"{path.parent}: the {keyword} of instances is empty; taken from their file meta ({stored})")
    _default_repertoire_named(dataset)


def _default_repertoire_named(dataset: Any) -> None:
    """Specific Character Set with DICOM's default repertoire said by an empty value named so: an
    empty whole is dropped (absent means the default), and the empty first value of code extensions
    (`\\ISO 2022 IR 87`, as Japanese series carry it) becomes ISO 2022 IR 6, its defined term."""
    if "SpecificCharacterSet" not in dataset:
        return
    value = dataset.get("SpecificCharacterSet")
    values = [str(v or "").strip() for v in ([value] if value is None or isinstance(value, str) else value)]
    if not any(values):
        del dataset.SpecificCharacterSet
    elif len(values) > 1 and not all(values):
        dataset.SpecificCharacterSet = [v or "ISO 2022 IR 6" for v in values]


def source_instances(files: Sequence[Path], reference: sitk.Image) -> list[Any]:
    """The series' instances (headers only) in the order of the volume's slices, each matched to
    its slice by its position on `reference` (the volume's grid); InputError for an instance
    without the identifiers a SEG needs, a set of positions that is not one per slice, or instances
    that differ in what a SEG needs one value of. Patient and study values that are not valid DICOM
    are emptied in the headers returned (`_clear_unfit_values`), with pydicom's own warnings on
    them silenced: each is named once instead."""
    pydicom, _ = modules()
    notes: set[str] = set()
    with _reading_quietly(pydicom):
        try:
            return _source_instances(pydicom, files, reference, notes)
        finally:
            _log_notes(notes)


def referenced_instances(files: Sequence[Path], reference: sitk.Image, seg: bool) -> list[Any]:
    """The series' instances a SEG (`seg`: `source_instances`, each on its slice) or an SR alone
    (`report_instances`, no frame of reference or position asked) references, checked before any
    inference."""
    return source_instances(files, reference) if seg else report_instances(files)


# The identifiers an SR copies from its sources: its patient and study, and each instance's own.
REPORT_UIDS = ("StudyInstanceUID", "SeriesInstanceUID")
# What the instances an SR references must share: one patient and study.
SHARED_BY_REPORTS = (("PatientID", "(0010,0020)"), ("PatientName", "(0010,0010)"),
                     ("StudyInstanceUID", "(0020,000D)"))


def report_instances(files: Sequence[Path]) -> list[Any]:
    """The series' instances (headers only), in the order given, for an SR that references them:
    no frame of reference, position or single frame is asked of them (a radiograph has none), only
    their identifiers and one patient and study; their unfit patient and study values emptied as
    `source_instances` empties them."""
    pydicom, _ = modules()
    notes: set[str] = set()
    with _reading_quietly(pydicom):
        try:
            datasets = [_header(pydicom, Path(path), REPORT_UIDS, "an SR", "SR", notes) for path in files]
        finally:
            _log_notes(notes)
        _check_one_study(datasets, files, SHARED_BY_REPORTS, "an SR references one patient and study")
        _clear_unfit_values(datasets, "SR")
    return datasets


def _log_notes(notes: set[str]) -> None:
    """Each note on the series' headers, once for the whole series."""
    for note in sorted(notes):
        log.warning("%s", note)


def _header(pydicom: Any, path: Path, required: Sequence[str], what: str, kind: str, notes: set[str]) -> Any:
    """An instance's header with its SOP UIDs repaired and its text decoded (`_decoded`); InputError
    where it cannot be read or lacks the identifiers `what` (a SEG, an SR) needs."""
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as error:  # noqa: BLE001 - pydicom raises several kinds for a damaged file
        raise InputError(f"{path} cannot be read as DICOM ({error}); copy the series again.") from None
    missing = [keyword for keyword in required if not _text(dataset, keyword)]
    if missing == ["FrameOfReferenceUID"] and "ImagePositionPatient" not in dataset:
        raise DicomObjectError(f"{path} is a projection or 2D image ({_text(dataset, 'Modality') or 'no modality'}: "
                               "no Frame of Reference, no Image Position), and a DICOM SEG references the slices of a "
                               "cross-sectional series", "give a CT, MR or PET series, or write --dicom-sr alone for "
                               "a classifier's or regression model's values")
    if missing:
        joins = "study and frame of reference" if "FrameOfReferenceUID" in required else "study"
        raise DicomObjectError(f"{path}: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} empty, so "
                               f"{what} cannot join this series' {joins} (an anonymizer removed them?)",
                               "export the series with its identifiers")
    _repair_sop(dataset, path, kind, notes)
    _decoded(dataset, path, notes)
    return dataset


def _decoded(dataset: Any, path: Path, notes: set[str]) -> None:
    """The header's text decoded in its own character set and kept as text, its Specific Character
    Set then UTF-8, in which the SEG or SR that copies it is written (so a Korean series, which
    highdicom does not take, gets one too). A header pydicom cannot decode whole (a malformed
    element in a sequence) keeps its own character set, as before; what pydicom says of a
    character set it does not know goes to `notes`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset.decode()
        except Exception as error:  # noqa: BLE001 - pydicom raises several kinds for a malformed element
            notes.add(f"the series in {path.parent} has an element pydicom cannot read ({type(error).__name__}); "
                      "its character set is kept as it is")
            return
    notes.update(f"the series in {path.parent}: {warning.message}" for warning in caught)
    dataset.SpecificCharacterSet = UTF8


@contextmanager
def _reading_quietly(pydicom: Any) -> Iterator[None]:
    """pydicom's checks of the values it reads, off (and back as they were afterwards)."""
    settings = pydicom.config.settings
    mode = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode = mode


def _source_instances(pydicom: Any, files: Sequence[Path], reference: sitk.Image, notes: set[str]) -> list[Any]:
    depth = reference.GetSize()[2] if reference.GetDimension() == 3 else 1
    placed: dict[int, Any] = {}
    for path in files:
        dataset = _header(pydicom, Path(path), REQUIRED_UIDS, "a SEG", "SEG", notes)
        frames = int(dataset.get("NumberOfFrames") or 1)
        if frames > 1:
            raise DicomObjectError(f"{path} holds {frames} frames in one file; a SEG here references a series of "
                                   "single-frame slices", "convert the series with dcm2niix")
        index = 0
        if depth > 1:
            position = [float(v) for v in dataset.get("ImagePositionPatient") or ()]
            if len(position) != 3:
                raise InputError(f"{path}: Image Position (Patient) is missing; a SEG frame cannot be placed.")
            index = reference.TransformPhysicalPointToIndex(position)[2]
        if not 0 <= index < depth or index in placed:
            raise InputError(f"{path} lies at slice {index} of the volume's {depth}, where "
                             f"{'another instance lies' if index in placed else 'no slice is'}; copy the series again.")
        placed[index] = dataset
    if len(placed) != depth:
        raise InputError(f"the series has {len(placed)} instances for a volume of {depth} slices; copy it again.")
    ordered = [placed[index] for index in range(depth)]
    _check_one_study(ordered, files, SHARED, "a SEG references one patient, study, frame of reference and image size")
    _clear_unfit_values(ordered)
    for dataset in ordered:            # the SEG's pixel measures take it, where DICOM permits no sign
        spacing = dataset.get("SpacingBetweenSlices")
        if spacing is not None and str(spacing).strip() and float(spacing) < 0:
            dataset.SpacingBetweenSlices = abs(float(spacing))
    return ordered


# What a SEG's instances must share, by attribute: (keyword, tag) pairs.
SHARED = (("PatientID", "(0010,0020)"), ("PatientName", "(0010,0010)"), ("StudyInstanceUID", "(0020,000D)"),
          ("FrameOfReferenceUID", "(0020,0052)"), ("Rows", "(0028,0010)"), ("Columns", "(0028,0011)"))


def _check_one_study(datasets: Sequence[Any], files: Sequence[Path], shared: Sequence[tuple[str, str]],
                     needs: str) -> None:
    """InputError where the series' instances differ in an attribute of `shared` (what the object
    `needs` one value of)."""
    for keyword, tag in shared:
        values = {_text(dataset, keyword) for dataset in datasets}
        if len(values) > 1:
            raise DicomObjectError(f"the instances of the series in {Path(files[0]).parent} hold {len(values)} "
                                   f"different {keyword} {tag} values; {needs}",
                                   "export the series again from the PACS")


# Groups of the patient and study attributes a SEG copies from its sources (highdicom copies the
# root attributes of the Patient and Study modules); their values must be valid DICOM. Of group
# 0x0020, which also holds the slices' geometry, only the Study ID is copied.
_COPIED_GROUPS = (0x0008, 0x0010, 0x0012, 0x0032, 0x0038)
_TEXT_VRS = ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT")
_ENUMERATED = {"PatientSex": ("M", "F", "O")}
# Never emptied: how the other values' text is encoded (UTF-8 once decoded, else the series' own).
_KEPT = ("SpecificCharacterSet",)


def _clear_unfit_values(datasets: Sequence[Any], kind: str = "SEG") -> None:
    """Empty, in the headers read (never in the files), each patient or study attribute whose value
    is not valid DICOM for its VR (a birth date of 31 February, a 60 MB name, a sex of "FEMALE"), so
    that the SEG is built, with the attribute empty, and is valid; one warning per attribute,
    naming it, never its value (patient data)."""
    cleared: dict[str, str] = {}
    for dataset in datasets:
        for element in list(dataset):
            copied = (element.tag.group in _COPIED_GROUPS or element.keyword == "StudyID") \
                and element.keyword not in _KEPT
            unfit = (element.VR in _TEXT_VRS and not _fit(element)) or (element.VR == "SQ" and _half_coded(element))
            if copied and unfit:
                if element.VR == "SQ":
                    del dataset[element.tag]
                else:
                    dataset[element.tag].value = ""
                cleared[element.keyword or str(element.tag)] = f"({element.tag.group:04X},{element.tag.element:04X})"
    for keyword, tag in cleared.items():
        log.warning("the series' %s %s is not a valid DICOM value; the %s leaves it empty", keyword, tag, kind)


CODE_KEYWORDS = ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")


def _half_coded(element: Any) -> bool:
    """Whether a sequence holds a coded entry that lacks one of a code's three values: any item of a
    code sequence (a Procedure Code Sequence with its value but no scheme or meaning, or with all
    three emptied by a de-identifier), or an item of another sequence that has one but not all."""
    for item in element.value:
        given = [bool(_text(item, keyword)) for keyword in CODE_KEYWORDS]
        if _text(item, "LongCodeValue") or _text(item, "URNCodeValue"):
            given[0] = True
        if not all(given) and (any(given) or str(element.keyword).endswith("CodeSequence")):
            return True
    return False


# Control characters a value of these VRs may hold once decoded (none; text VRs their line breaks
# and tabs): an ESC left in decoded text is a character-set switch its codec did not take (GB2312
# under ISO 2022 IR 58); pydicom's own validation does not look for them.
_ALLOWED_CONTROLS = dict.fromkeys(("LT", "ST", "UT"), "\r\n\f\t")


def _controls(vr: str, value: Any) -> bool:
    """Whether a value holds a control character its VR does not allow (a newline in a Patient ID)."""
    if isinstance(value, bytes):
        return False                          # encoded text: the decoder's concern
    allowed = _ALLOWED_CONTROLS.get(vr, "")
    return any(ord(char) < 32 and char not in allowed for char in str(value))


def _fit(element: Any) -> bool:
    """Whether an element's value is valid for its VR (and, for a date or time, a real one)."""
    from pydicom import config, valuerep
    from pydicom.multival import MultiValue

    values = element.value if isinstance(element.value, (list, tuple, MultiValue)) else [element.value]
    for value in values:
        if value is None or value == "":
            continue
        if _controls(element.VR, value):
            return False
        try:
            valuerep.validate_value(element.VR, value if isinstance(value, (str, bytes)) else str(value), config.RAISE)
            if element.VR in ("DA", "DT", "TM"):
                {"DA": valuerep.DA, "DT": valuerep.DT, "TM": valuerep.TM}[element.VR](str(value))
        except (ValueError, TypeError, OverflowError):
            return False
        if element.keyword in _ENUMERATED and str(value).strip() not in _ENUMERATED[element.keyword]:
            return False
    return True


def coded(highdicom: Any, concept: Concept | None, default: tuple[str, str, str]) -> Any:
    """`concept` as highdicom's coded concept, or the `default` triplet (scheme, value, meaning) where it is None."""
    scheme, value, meaning = (concept.scheme, concept.value, concept.meaning) if concept is not None else default
    return highdicom.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def segment_numbers(labels_zyx: np.ndarray, manifest: Manifest) -> np.ndarray:
    """The label map as segment numbers: the n-th class (n >= 1, after the background) is
    segment n, the background 0; uint8, or uint16 past 255 classes."""
    classes = manifest.classes
    lookup = np.zeros(max(c.value for c in classes) + 1, dtype=np.uint16)
    for number, spec in enumerate(classes):
        lookup[spec.value] = number
    numbers = lookup[labels_zyx]
    return numbers.astype(np.uint8) if len(classes) <= 256 else numbers


def write_seg(path: Path, labels_zyx: np.ndarray, sources: Sequence[Any], manifest: Manifest,
              probabilities: np.ndarray | None = None, revision: int = 1, uid_root: str | None = None) -> None:
    """Write the label map (z, y, x) on the sources' grid as a binary DICOM SEG at `path` (`build_seg`)."""
    build_seg(labels_zyx, sources, manifest, probabilities, revision, uid_root).save_as(path)


def build_seg(labels_zyx: np.ndarray, sources: Sequence[Any], manifest: Manifest,
              probabilities: np.ndarray | None = None, revision: int = 1, uid_root: str | None = None) -> Any:
    """The label map (z, y, x) on the sources' grid as a binary DICOM SEG (a pydicom data set); with
    `probabilities` (K, z, y, x; for a threshold model one channel per class after the first), a
    fractional SEG of each segment's probability instead (8 bits, 255 is 1). A `revision` past 1 (a
    series segmented again once it grew) takes the next series number and says so in its series
    description. Its series and instance UIDs are new ones under `uid_root` (`new_uid`)."""
    _, highdicom = modules()
    from pydicom.sr.codedict import codes

    algorithm = highdicom.AlgorithmIdentificationSequence(
        name=manifest.name[:64], version=str(manifest.version), family=codes.cid7162.ArtificialIntelligence)
    segments = [
        highdicom.seg.SegmentDescription(
            segment_number=number, segment_label=spec.name[:64],
            segmented_property_category=coded(highdicom, spec.category, DEFAULT_CATEGORY),
            segmented_property_type=coded(highdicom, spec.type, DEFAULT_TYPE),
            algorithm_type=highdicom.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm)
        for number, spec in enumerate(manifest.classes) if number > 0]
    if probabilities is None:
        frames = segment_numbers(labels_zyx, manifest).reshape(-1, *labels_zyx.shape[-2:])
    else:
        # the segments' channels are the last ones: a threshold model has none for the background
        foreground = probabilities[probabilities.shape[0] - len(segments):].reshape(
            len(segments), -1, *probabilities.shape[-2:])
        frames = np.ascontiguousarray(np.moveaxis(foreground, 0, -1), dtype=np.float32)
        beyond = beyond_probabilities(frames)
        if beyond is not None:
            raise ModelError(f"model {manifest.name} v{manifest.version} gives values from {beyond[0]:.4g} to "
                             f"{beyond[1]:.4g}, no probabilities, which a fractional DICOM SEG holds: its output "
                             f"section (activation {manifest.output.activation}) writes them as they are; leave out "
                             "--fractional, or give the model an activation (output.probabilities for logits).")
        frames = np.clip(frames, 0, 1)             # a copy: `frames` may be a view of the caller's array
    _one_orientation(sources)
    try:
        seg = _segmentation(highdicom, sources, frames, segments, manifest, probabilities is not None, revision,
                            uid_root)
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        raise DicomObjectError(f"a DICOM SEG cannot be built on this series ({error})",
                               "check the series' headers") from None
    seg.SpecificCharacterSet = UTF8
    if uid_root is not None:
        _own_dimension_organization(seg, new_uid(uid_root))
    return seg


def _own_dimension_organization(seg: Any, uid: str) -> None:
    """The Dimension Organization UID highdicom made under its own root, replaced by `uid` (one
    under the organisation's root) wherever it is named."""
    made = str(seg.DimensionOrganizationSequence[0].DimensionOrganizationUID)
    for item in (*seg.DimensionOrganizationSequence, *seg.get("DimensionIndexSequence", [])):
        if str(item.get("DimensionOrganizationUID", "")) == made:
            item.DimensionOrganizationUID = uid


def _one_orientation(sources: Sequence[Any]) -> None:
    """The slices' Image Orientation (Patient), which the volume took as one where they agree within
    ORIENTATION_TOLERANCE though written with other digits, made the first slice's in these header
    copies: a SEG (highdicom) takes one orientation, compared exactly."""
    from runtime.io.dicom import ORIENTATION_TOLERANCE

    first = sources[0].get("ImageOrientationPatient") if sources else None
    if first is None or len(first) != 6:
        return
    for source in sources[1:]:
        own = source.get("ImageOrientationPatient")
        if own is not None and len(own) == 6 and own != first and \
                max(abs(float(a) - float(b)) for a, b in zip(own, first)) <= ORIENTATION_TOLERANCE:
            source.ImageOrientationPatient = list(first)


def _segmentation(highdicom: Any, sources: Sequence[Any], frames: np.ndarray, segments: list[Any],
                  manifest: Manifest, fractional: bool, revision: int = 1, uid_root: str | None = None) -> Any:
    """The Segmentation object; highdicom's warnings on values it copies from the sources (a
    patient name of one component, ...) go to the log, not the terminal."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = _build(highdicom, sources, frames, segments, manifest, fractional, revision, uid_root)
    for warning in caught:
        log.info("DICOM SEG: %s", warning.message)
    return seg


def _build(highdicom: Any, sources: Sequence[Any], frames: np.ndarray, segments: list[Any],
           manifest: Manifest, fractional: bool, revision: int = 1, uid_root: str | None = None) -> Any:
    types = highdicom.seg.SegmentationTypeValues
    kind = types.FRACTIONAL if fractional else types.BINARY
    description = result_description(f"{manifest.name} v{manifest.version}", sources, revision)
    return highdicom.seg.Segmentation(
        source_images=list(sources), pixel_array=frames, segmentation_type=kind,
        fractional_type=highdicom.seg.SegmentationFractionalTypeValues.PROBABILITY, segment_descriptions=segments,
        series_instance_uid=new_uid(uid_root), series_number=SERIES_NUMBER + min(revision, MAX_REVISION) - 1,
        sop_instance_uid=new_uid(uid_root),
        instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name=manifest.name[:64],
        software_versions=f"{manifest.name} v{manifest.version}"[:64], device_serial_number=manifest.name[:64],
        series_description=description, omit_empty_frames=False)


def result_description(what: str, sources: Sequence[Any], revision: int) -> str:
    """A result's Series Description (64 characters at most): what made it, the number of the
    series it was made of (so that the results of a study's several series are told apart in a
    viewer's list), and its revision past the first."""
    number = str(sources[0].get("SeriesNumber", "") or "").strip() if sources else ""
    source = f" of series {number}" if number.isdigit() else ""
    tail = f" revision {revision}" if revision > 1 else ""
    return f"{what}{source}"[:64 - len(tail)] + tail


SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
DEFLATED = "1.2.840.10008.1.2.1.99"
# A SEG frame lies on a slice of the grid when its position is within this share of a voxel of it.
ON_GRID = 1e-2
# Revisions of one result: SEG series 9001 to 9099 and report series 9101 to 9199, never meeting.
MAX_REVISION = 99


def replaced_at(path: Path | None, sources: Sequence[Any], sop_class: str, first_number: int,
                model_name: str) -> tuple[int, Any]:
    """The revision a result of `sop_class` written at `path` on the series `sources` is, and the
    result it replaces (headers): where `path` holds one made here by the same model (its
    manufacturer and model name) on the same series (its study, and a reference to the series) as
    series `first_number` + N - 1, the new one is revision N + 1 (at most MAX_REVISION); else
    revision 1, replacing none."""
    if path is None or not sources or not Path(path).is_file():
        return 1, None
    pydicom, _ = modules()
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        number = int(dataset.get("SeriesNumber") or 0)
        referenced = {str(element.value) for element in dataset.iterall() if element.keyword == "SeriesInstanceUID"}
    except Exception:  # noqa: BLE001 - whatever is there, it is no earlier result of ours
        return 1, None
    first = sources[0]
    ours = (_text(dataset, "SOPClassUID") == sop_class and _text(dataset, "Manufacturer") == MANUFACTURER
            and _text(dataset, "ManufacturerModelName") == model_name[:64]
            and bool(_text(dataset, "SOPInstanceUID")) and bool(_text(dataset, "SeriesInstanceUID"))
            and _text(dataset, "StudyInstanceUID") == str(first.get("StudyInstanceUID", ""))
            and str(first.get("SeriesInstanceUID", "")) in referenced and number >= first_number)
    return (min(number - first_number + 2, MAX_REVISION), dataset) if ours else (1, None)


def is_seg(path: Path) -> bool:
    """Whether `path` is a DICOM file of the Segmentation Storage SOP class (read up to its header)."""
    pydicom, _ = modules()
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # noqa: BLE001 - not DICOM at all
        return False
    return _text(dataset, "SOPClassUID") == SEGMENTATION_STORAGE


def read_seg(path: Path, reference: sitk.Image, max_bytes: int,
             classes: Sequence[ClassSpec] | None = None) -> np.ndarray:
    """A DICOM SEG's segments as one label map (z, y, x) on `reference`'s grid, each frame placed
    by its Image Position (Patient): segment numbers (0 where no segment lies), or with `classes`
    the value of the class each segment is (`segment_values`); uint8, or uint16 past 255. Any
    field missing or malformed is an InputError naming the file.
    InputError for a file that is not a SEG, is larger than `max_bytes`, lies on another grid
    (orientation, pixel size, in-plane position or a slice outside), or whose segments overlap (a
    label map holds one class per voxel)."""
    from runtime.io.dicom import transfer_syntax

    pydicom, _ = modules()
    if reference.GetDimension() != 3:
        raise InputError(f"{path}: a DICOM SEG is read onto a 3D scan; this scan is {reference.GetDimension()}D.")
    if transfer_syntax(Path(path)) in (None, DEFLATED):
        raise InputError(f"{path}: its transfer syntax is deflated or unreadable; a SEG is read uncompressed or "
                         "with a compressed pixel encoding only.")
    if Path(path).stat().st_size > max_bytes:
        raise InputError(f"{path} is larger than the memory budget allows ({max_bytes:,} bytes); raise "
                         "MEDFLOW_MAX_MEMORY or give a smaller SEG.")
    try:
        dataset = pydicom.dcmread(path)
    except Exception as error:  # noqa: BLE001 - pydicom raises several kinds for a damaged file
        raise InputError(f"{path} cannot be read as DICOM ({error}).") from None
    if _text(dataset, "SOPClassUID") != SEGMENTATION_STORAGE:
        raise InputError(f"{path} is not a DICOM SEG (SOP Class {_text(dataset, 'SOPClassUID') or 'empty'}).")
    try:
        return _read_frames(path, dataset, reference, max_bytes, classes)
    except (AttributeError, TypeError, ValueError, IndexError, KeyError, OverflowError) as error:
        raise InputError(f"{path}: a damaged DICOM SEG ({type(error).__name__}: {error}); export it again.") from None


def _read_frames(path: Path, dataset: Any, reference: sitk.Image, max_bytes: int,
                 classes: Sequence[ClassSpec] | None) -> np.ndarray:
    size = reference.GetSize()
    depth = size[2] if reference.GetDimension() == 3 else 1
    if (int(dataset.Rows), int(dataset.Columns)) != (size[1], size[0]):
        raise InputError(f"{path}: frames of {dataset.Rows} x {dataset.Columns} pixels; the scan's slices are "
                         f"{size[1]} x {size[0]}.")
    decoded = int(dataset.get("NumberOfFrames") or 1) * size[0] * size[1] * max(1, int(dataset.BitsAllocated) // 8)
    if decoded > max_bytes:
        raise InputError(f"{path}: its {dataset.get('NumberOfFrames')} frames decode to {decoded:,} bytes, more than "
                         f"the memory budget ({max_bytes:,}); raise MEDFLOW_MAX_MEMORY.")
    try:
        pixels = dataset.pixel_array.reshape(-1, size[1], size[0])
    except Exception as error:  # noqa: BLE001 - a pixel data element that does not decode
        raise InputError(f"{path}: its frames cannot be decoded ({error}).") from None
    fractional = _text(dataset, "SegmentationType") == "FRACTIONAL"
    half = (float(dataset.get("MaximumFractionalValue") or 255) / 2) if fractional else 0
    frames = list(dataset.PerFrameFunctionalGroupsSequence)
    shared = (dataset.get("SharedFunctionalGroupsSequence") or [{}])[0]     # the groups every frame shares
    if len(frames) != len(pixels):
        raise InputError(f"{path}: {len(pixels)} frames but {len(frames)} frame descriptions; the SEG is damaged.")
    declared = {int(item.SegmentNumber) for item in dataset.SegmentSequence}
    if not declared or min(declared) < 1 or max(declared) > 65535:
        raise InputError(f"{path}: its segment numbers {sorted(declared)[:5]} are not 1 to 65535.")
    labels = np.zeros((depth, size[1], size[0]), dtype=np.uint8 if max(declared) < 256 else np.uint16)
    for frame, (item, values) in enumerate(zip(frames, pixels)):
        index = _slice_of(item, shared, reference, path, frame)
        number = int(_functional(item, shared, "SegmentIdentificationSequence", "ReferencedSegmentNumber"))
        if number not in declared:
            raise InputError(f"{path}: frame {frame + 1} belongs to segment {number}, which the SEG does not declare.")
        mask = values > half
        taken = labels[index][mask]
        clash = taken[(taken != 0) & (taken != number)]
        if clash.size:
            raise InputError(f"{path}: segments {int(clash[0])} and {number} overlap on slice {index}; a label map "
                             "holds one segment per voxel.")
        labels[index][mask] = number
    if classes is None:
        return labels
    lookup = np.zeros(max(declared) + 1, dtype=np.uint16)
    for number, value in segment_values(dataset, classes, path).items():
        lookup[number] = value
    return lookup[labels]


def segment_values(dataset: Any, classes: Sequence[ClassSpec], path: Path) -> dict[int, int]:
    """The class value of each segment: the class its Segment Label names, else the n-th class
    after the background for segment n (the order `write_seg` numbers them in); InputError for a
    segment that is neither."""
    by_name = {spec.name.casefold(): spec.value for spec in classes}
    ours = _text(dataset, "Manufacturer") == MANUFACTURER
    values = {}
    for item in dataset.SegmentSequence:
        number, label = int(item.SegmentNumber), _text(item, "SegmentLabel")
        if label.casefold() in by_name:
            values[number] = by_name[label.casefold()]
        elif ours and 0 < number < len(classes):        # a SEG this runtime wrote numbers the classes in order
            values[number] = classes[number].value
        else:
            raise InputError(f"{path}: segment {number} ({label or 'no label'}) is none of the classes "
                             f"({', '.join(spec.name for spec in classes)}); name its segments after the classes, "
                             "or the classes after its segments.")
    return values


def _slice_of(item: Any, shared: Any, reference: sitk.Image, path: Path, frame: int) -> int:
    """The slice of `reference` a SEG frame lies on, checked to lie on the grid."""
    orientation = _functional(item, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
    spacing = _functional(item, shared, "PixelMeasuresSequence", "PixelSpacing")
    position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
    direction = np.reshape(reference.GetDirection(), (reference.GetDimension(),) * 2)
    axes = np.array([float(v) for v in orientation]).reshape(2, 3)
    if not np.allclose(axes, direction[:3, :2].T, atol=1e-3):
        raise InputError(f"{path}: frame {frame + 1} is oriented {axes.ravel().tolist()}, not as the scan's slices; "
                         "the SEG belongs to another series.")
    if not np.allclose([float(v) for v in spacing], reference.GetSpacing()[1::-1], rtol=1e-3):
        raise InputError(f"{path}: frame {frame + 1} has pixels of {list(spacing)} mm, the scan "
                         f"{list(reference.GetSpacing()[1::-1])}; the SEG belongs to another series.")
    continuous = reference.TransformPhysicalPointToContinuousIndex(position)
    index = round(continuous[2]) if reference.GetDimension() == 3 else 0
    depth = reference.GetSize()[2] if reference.GetDimension() == 3 else 1
    off = [abs(continuous[0]), abs(continuous[1]), abs(continuous[2] - index) if reference.GetDimension() == 3 else 0]
    if max(off) > ON_GRID or not 0 <= index < depth:
        raise InputError(f"{path}: frame {frame + 1} at {position} lies off the scan's slices; the SEG belongs to "
                         "another series.")
    return index


def _functional(item: Any, shared: Any, sequence: str, keyword: str) -> Any:
    """A functional group's value, per frame where the frame has it, else shared."""
    for holder in (item, shared):
        group = holder.get(sequence) if hasattr(holder, "get") else None
        if group:
            return group[0].get(keyword)
    raise InputError(f"the SEG has no {sequence} for its frames; it is damaged.")
