"""DICOM series folders, checked slice by slice before their voxels are read.

ITK builds a volume from whatever files of a series it can parse: a truncated or damaged slice is
left out without a word, and a missing slice, a duplicate or a tilted gantry gives a volume on a
grid the series does not have (ITK only prints "Non uniform sampling or missing slices"). Here
every file of the folder must be a readable slice of its one series, and the slices must share
size, pixel spacing and orientation and lie evenly along the slice normal, one per position.
"""
from __future__ import annotations

import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from runtime.errors import InputError
from runtime.io.formats import is_dicom_file
from runtime.io.header import check_spacing, refuse
from runtime.parallel import for_each

log = logging.getLogger(__name__)

POSITION = "0020|0032"      # Image Position (Patient)
ORIENTATION = "0020|0037"   # Image Orientation (Patient)
PIXEL_SPACING = "0028|0030"
RESCALE = ("0028|1053", "0028|1052")   # Rescale Slope, Rescale Intercept
# Image Orientation (Patient) is written as decimal strings: its two axes must be unit vectors at
# right angles within this.
ORIENTATION_ROUNDING = 1e-3
# Slices closer than this (mm) along the normal lie at one position.
SAME_POSITION_MM = 1e-3
# Steps between slices may differ from their median by this much (mm, or this share of the median).
SPACING_TOLERANCE_MM = 0.01
SPACING_TOLERANCE_SHARE = 0.01
ORIENTATION_TOLERANCE = 1e-4
IMPLICIT_LITTLE_ENDIAN = "1.2.840.10008.1.2"
META_READ_BYTES = 1 << 16
LONG_VRS = (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT")
ROWS, COLUMNS, SAMPLES, BITS_ALLOCATED, FRAMES = "0028|0010", "0028|0011", "0028|0002", "0028|0100", "0028|0008"
# Implicit VR little endian, explicit VR little endian, explicit VR big endian: pixel data stored as is.
NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
# Files in a series folder that are not slices of it.
IGNORED_FILES = ("DICOMDIR",)
# The elements that hold an image's pixels.
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# What to check in a DICOM image that GDCM cannot read.
UNREADABLE_IMAGE = ("check its Rows (0028,0010), Columns (0028,0011), Bits Allocated (0028,0100) (8, 16 or 32) and "
                    "Pixel Data (7FE0,0010), or copy the series again.")


@dataclass(frozen=True)
class Slice:
    """What one file's header says of its place in the volume."""

    path: Path
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    pixel_bytes: int
    integer: bool                       # ITK reads the slice as integers
    rescale: tuple[float, ...] | None   # Rescale Slope and Intercept


def _series_ids(folder: Path) -> tuple[str, ...]:
    """The DICOM series in a folder, without ITK's console warning for a folder that holds none
    (the caller says so in its own words)."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _series_name(series: str) -> str:
    """A series as GDCM identifies it; a series it names by nothing is said so."""
    return series or "a series without a Series Instance UID"


def series_files(folder: Path, series_uid: str | None = None) -> list[Path]:
    """The files of the folder's one series, or of the series `series_uid` names among several;
    refuses a folder with none, several and no choice, a choice it does not hold, or files that
    are slices of none of its series."""
    series = _series_ids(folder)
    if not series:
        dicom = next((p for p in sorted(folder.iterdir()) if p.is_file() and is_dicom_file(p)), None)
        if dicom is not None:
            raise InputError(f"{folder} holds DICOM files (such as {dicom.name}) but no image series GDCM can read: "
                             f"{UNREADABLE_IMAGE}")
        raise InputError(f"{folder} is a folder without a DICOM series; pass an image file or a DICOM series folder.")
    if series_uid is not None and series_uid not in series:
        raise InputError(f"{folder} holds no series {series_uid}; it holds {'; '.join(map(_series_name, series))}.")
    if series_uid is None and len(series) > 1:
        raise InputError(
            f"{folder} holds {len(series)} DICOM series ({'; '.join(map(_series_name, series))}); "
            "choose one with --series UID, or put one series per folder."
        )
    chosen = series_uid if series_uid is not None else series[0]
    files = [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), chosen)]
    listed = {f.resolve() for series_id in series
              for f in map(Path, sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id))}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.name not in IGNORED_FILES \
                and path.resolve() not in listed:
            kind = _non_image(path)
            if kind is not None:
                log.warning("%s is a DICOM object without pixel data (SOP class %s: a report, a presentation state, "
                            "...), not a slice; it is left out", path, kind)
                continue
            raise InputError(f"{path} is in DICOM series folder {folder} but is not a readable slice of its series "
                             "(it is truncated, damaged or not DICOM); copy the series again, or remove the file.")
    return files


def _non_image(path: Path) -> str | None:
    """The SOP Class UID of a readable DICOM file of a class other than an image storage one and
    without pixel data (a structured report, a presentation state, ...); None for anything else (an
    image cut short, whose pixel data pydicom then cannot find, among them), or where pydicom is not
    installed."""
    import warnings

    try:
        import pydicom
        from pydicom.uid import UID
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")            # pydicom's warnings on a report's encoding quirks
            dataset = pydicom.dcmread(path, defer_size=1024)
            sop_class = str(dataset.get("SOPClassUID", "") or dataset.file_meta.get("MediaStorageSOPClassUID", ""))
            holds_pixels = any(keyword in dataset for keyword in PIXEL_KEYWORDS)
    except Exception:  # noqa: BLE001 - pydicom raises several kinds for a damaged or non-DICOM file
        return None
    if not sop_class or holds_pixels or "Image Storage" in UID(sop_class).name:
        return None
    return sop_class


def _numbers(reader: sitk.ImageFileReader, tag: str) -> tuple[float, ...] | None:
    if not reader.HasMetaDataKey(tag):
        return None
    try:
        return tuple(float(v) for v in reader.GetMetaData(tag).strip().split("\\"))
    except ValueError:
        return None


def read_slice(path: Path) -> Slice:
    """One file's header, without its pixels; its pixel spacing and orientation checked."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"{path} cannot be read as a DICOM slice: {UNREADABLE_IMAGE}") from None
    probe = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID())
    _check_pixel_bytes(path, reader)
    orientation = _numbers(reader, ORIENTATION)
    _check_tags(path, _numbers(reader, PIXEL_SPACING), orientation)
    return Slice(path=path, size=tuple(reader.GetSize()), spacing=tuple(reader.GetSpacing()),
                 position=_numbers(reader, POSITION), orientation=orientation,
                 pixel_bytes=probe.GetSizeOfPixelComponent() * reader.GetNumberOfComponents(),
                 integer="integer" in probe.GetPixelIDTypeAsString(),
                 rescale=tuple(v for tag in RESCALE for v in (_numbers(reader, tag) or (math.nan,))))


def _tag_int(reader: sitk.ImageFileReader, tag: str, default: int | None = None) -> int | None:
    numbers = _numbers(reader, tag)
    return int(numbers[0]) if numbers and numbers[0] == int(numbers[0]) else default


def _check_pixel_bytes(path: Path, reader: sitk.ImageFileReader) -> None:
    """A slice stored uncompressed must hold the bytes of pixel data its header promises (rows x
    columns x samples x bytes per sample x frames): GDCM reads a shorter one without a word and
    fills in what is missing. Where pydicom is installed the Pixel Data element's own length and
    the bytes present after it are checked; otherwise the file's size, which catches a slice
    short by more than its header. A file whose transfer syntax cannot be read is refused."""
    syntax = transfer_syntax(path)
    if syntax is None:
        raise InputError(f"{path}: its DICOM file meta information cannot be read (a damaged header); copy the "
                         "series again.")
    if syntax not in NATIVE_SYNTAXES:
        return                                  # compressed: the decoder checks its own stream
    rows, columns = _tag_int(reader, ROWS), _tag_int(reader, COLUMNS)
    bits, samples, frames = _tag_int(reader, BITS_ALLOCATED), _tag_int(reader, SAMPLES, 1), _tag_int(reader, FRAMES, 1)
    if None in (rows, columns, bits, samples, frames):
        return
    size = path.stat().st_size
    present = _pixel_data_bytes(path, size)
    problem = pixel_shortfall(present if present is not None else size, rows, columns, bits, samples, frames)
    if problem:
        raise InputError(f"{path} {problem}. Copy the series again.")


def pixel_shortfall(present: int, rows: int, columns: int, bits: int, samples: int = 1, frames: int = 1) -> str | None:
    """What is missing where uncompressed pixel data of `present` bytes holds fewer than its header
    promises (rows x columns x samples x bytes per sample x frames); None where it holds them."""
    expected = rows * columns * samples * frames * bits // 8
    if present >= expected:
        return None
    return (f"holds {present:,} bytes of pixel data, fewer than the {expected:,} its header promises ({rows} x "
            f"{columns}, {bits} bits, {frames} frame(s)): the slice is truncated or damaged")


def _pixel_data_bytes(path: Path, size: int) -> int | None:
    """The bytes of the top-level Pixel Data element that the file holds (its stated length, less
    what the file lacks after it), by pydicom's parse; None without pydicom or without the element."""
    try:
        import pydicom
    except ImportError:
        return None
    try:
        dataset = pydicom.dcmread(path, defer_size=1024, force=True)
        element = dataset.get_item("PixelData", keep_deferred=True)
    except Exception:  # noqa: BLE001 - a header pydicom cannot parse: ITK's reading refuses it, or size decides
        return None
    if element is None or getattr(element, "length", None) in (None, 0xFFFFFFFF):
        return None
    start = getattr(element, "value_tell", None)
    length = int(element.length)
    return length if start is None else min(length, max(0, size - int(start)))


def transfer_syntax(path: Path) -> str | None:
    """The Transfer Syntax UID of a DICOM file's meta information (explicit VR little endian after
    the 128-byte preamble and "DICM"); a file without one is implicit VR little endian, DICOM's
    default. None where the meta information cannot be walked to it."""
    with open(path, "rb") as handle:
        head = handle.read(META_READ_BYTES)
    if head[128:132] != b"DICM":
        return IMPLICIT_LITTLE_ENDIAN
    at = 132
    while at + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, at)
        if group != 2:
            return None
        vr = head[at + 4:at + 6]
        if vr in LONG_VRS:
            if at + 12 > len(head):
                return None
            (length,), start = struct.unpack_from("<I", head, at + 8), at + 12
        else:
            (length,), start = struct.unpack_from("<H", head, at + 6), at + 8
        if element == 0x10:
            if start + length > len(head):
                return None
            return head[start:start + length].decode("ascii", "replace").strip("\0 ")
        at = start + length
    return None


def _check_tags(path: Path, spacing: tuple[float, ...] | None, orientation: tuple[float, ...] | None) -> None:
    """Pixel Spacing in bounds; Image Orientation (Patient) two unit vectors at right angles (ITK
    reads a spacing of 0 as 1 mm and a sheared orientation as none)."""
    if spacing is not None:
        check_spacing(path, "Pixel Spacing (0028,0030)", spacing)
    if orientation is None:
        return
    axes = np.array(orientation, dtype=float)
    if axes.shape != (6,) or not np.all(np.isfinite(axes)) or not np.allclose(
            axes.reshape(2, 3) @ axes.reshape(2, 3).T, np.eye(2), atol=ORIENTATION_ROUNDING, rtol=0):
        raise refuse(path, "Image Orientation (Patient) (0020,0037)", " ".join(f"{v:g}" for v in orientation),
                     "it must be two unit vectors at right angles (the row and column directions)",
                     "the file is damaged or was written wrongly: copy the series from its source again")


def _check_alike(folder: Path, slices: Sequence[Slice]) -> None:
    first = slices[0]
    for other in slices[1:]:
        if other.size[:2] != first.size[:2] or not np.allclose(other.spacing[:2], first.spacing[:2], rtol=1e-4):
            raise InputError(f"{folder}: slice {other.path.name} is {other.size[0]}×{other.size[1]} pixels of "
                             f"{other.spacing[0]:g}×{other.spacing[1]:g} mm, unlike {first.path.name} "
                             f"({first.size[0]}×{first.size[1]} of {first.spacing[0]:g}×{first.spacing[1]:g} mm); "
                             "the folder mixes images: put one series per folder.")
        if other.orientation is None or first.orientation is None or len(other.orientation) != 6 or \
                not np.allclose(other.orientation, first.orientation, atol=ORIENTATION_TOLERANCE, rtol=0):
            raise InputError(f"{folder}: slice {other.path.name} has Image Orientation (Patient) "
                             f"{other.orientation} unlike {first.path.name} ({first.orientation}); the slices of one "
                             "volume share one orientation: put one series per folder.")


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    row, column = np.array(orientation[:3]), np.array(orientation[3:6])
    return np.cross(row, column)


def _check_rescale(folder: Path, slices: Sequence[Slice]) -> None:
    """Slices read as integers share one Rescale Slope and Intercept: ITK gives the whole volume the
    first slice's pixel type, so another slope would be truncated."""
    first = slices[0]
    if not first.integer:
        return
    for other in slices[1:]:
        if other.rescale != first.rescale and not (np.isnan(other.rescale).all() and np.isnan(first.rescale).all()):
            raise InputError(f"{folder}: slice {other.path.name} has Rescale Slope and Intercept {other.rescale} "
                             f"unlike {first.path.name} ({first.rescale}); read as integers, its values would be "
                             "truncated: convert the series with a tool that rescales each slice (dcm2niix).")


def _check_positions(folder: Path, slices: Sequence[Slice]) -> float:
    """Slices one per position, evenly spaced along the normal with no sideways shift; returns the step."""
    missing = [s.path.name for s in slices
               if s.position is None or len(s.position) != 3 or not all(map(math.isfinite, s.position))]
    if missing:
        raise InputError(f"{folder}: slice {missing[0]} has no valid Image Position (Patient) (three finite "
                         "numbers), so the slices cannot be placed in a volume; copy the series from its source again.")
    normal = _normal(slices[0].orientation or ())
    points = np.array([s.position for s in slices], dtype=float)
    order = np.argsort(points @ normal, kind="stable")
    ordered = points[order]
    steps = np.diff(ordered, axis=0)
    along = steps @ normal
    names = [slices[i].path.name for i in order]
    for index, distance in enumerate(along):
        if distance < SAME_POSITION_MM:
            raise InputError(f"{folder}: slices {names[index]} and {names[index + 1]} lie at the same position "
                             f"({ordered[index].round(3).tolist()} mm): the series holds a duplicate; remove one.")
    median = float(np.median(along))
    tolerance = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_SHARE * median)
    for index, distance in enumerate(along):
        if abs(distance - median) > tolerance:
            raise InputError(f"{folder}: slices {names[index]} and {names[index + 1]} lie {distance:.4g} mm apart, "
                             f"the others {median:.4g} mm: a slice is missing or the spacing is not uniform; copy the "
                             "complete series, or resample it onto a regular grid first.")
    sideways = np.linalg.norm(steps - np.outer(along, normal), axis=1)
    if np.any(sideways > max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_SHARE * median)):
        raise InputError(f"{folder}: successive slices are shifted sideways by up to {float(sideways.max()):.3g} mm "
                         "(a tilted gantry or a sheared stack), a grid no output format holds; correct the tilt "
                         "(dcm2niix does) before inference.")
    return median


def check_series(folder: Path, series_uid: str | None = None) -> tuple[list[Path], list[Slice], float | None]:
    """The files of the folder's series (the one `series_uid` names, where it holds several),
    their headers and the step between slices (mm; None for one slice), checked (see the module
    docstring)."""
    files = series_files(folder, series_uid)
    slices: list[Slice] = [None] * len(files)  # type: ignore[list-item]

    def read(index: int) -> None:
        slices[index] = read_slice(files[index])

    for_each(read, range(len(files)))
    if len(slices) == 1:
        return files, slices, None
    _check_alike(folder, slices)
    _check_rescale(folder, slices)
    return files, slices, _check_positions(folder, slices)


def read_series(folder: Path, files: Sequence[Path], expected_slices: int, step: float | None) -> sitk.Image:
    """Read the checked files into one volume; refuses a volume ITK built with another slice count
    or another step between slices than `check_series` found."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    log.info("reading DICOM series (%d files) from %s", len(files), folder)
    image = reader.Execute()
    depth = image.GetSize()[2] if image.GetDimension() == 3 else 1
    if expected_slices > 1 and depth != expected_slices:
        raise InputError(f"{folder}: ITK built {depth} slices from the series' {expected_slices} files; "
                         "copy the series again.")
    if step is not None and not math.isclose(image.GetSpacing()[2], step, rel_tol=SPACING_TOLERANCE_SHARE):
        raise InputError(f"{folder}: ITK built the volume with {image.GetSpacing()[2]:.4g} mm between slices where "
                         f"their positions lie {step:.4g} mm apart; copy the series again.")
    return image
