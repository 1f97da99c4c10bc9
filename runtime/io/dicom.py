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
import os
import struct
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from runtime.errors import InputError, install_hint
from runtime.io.formats import is_dicom_file, jpeg_frame_size
from runtime.io.header import check_spacing, refuse
from runtime.parallel import for_each

log = logging.getLogger(__name__)

POSITION = "0020|0032"      # Image Position (Patient)
ORIENTATION = "0020|0037"   # Image Orientation (Patient)
PIXEL_SPACING = "0028|0030"
SLICE_THICKNESS = "0018|0050"
SPACING_BETWEEN_SLICES = "0018|0088"
RESCALE = ("0028|1053", "0028|1052")   # Rescale Slope, Rescale Intercept
RESCALE_NAMES = ("Rescale Slope (0028,1053)", "Rescale Intercept (0028,1052)")
PHOTOMETRIC = "0028|0004"   # Photometric Interpretation
SOP_INSTANCE = "0008|0018"  # SOP Instance UID
MODALITY = "0008|0060"
# Image Orientation (Patient) is written as decimal strings: its two axes must be unit vectors at
# right angles within this.
ORIENTATION_ROUNDING = 1e-3
# Slices closer than this (mm) along the normal lie at one position.
SAME_POSITION_MM = 1e-3
# Steps between slices may differ from their median by this much (mm, or this share of the median).
SPACING_TOLERANCE_MM = 0.01
SPACING_TOLERANCE_SHARE = 0.01
# Over the whole series, a slice may lie this share of a voxel (the step along the normal, the
# smallest pixel spacing sideways) from where ITK's grid places it.
WHOLE_SERIES_SHARE = 0.1
ORIENTATION_TOLERANCE = 1e-4
IMPLICIT_LITTLE_ENDIAN = "1.2.840.10008.1.2"
META_READ_BYTES = 1 << 16
LONG_VRS = (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT")
ROWS, COLUMNS, SAMPLES, BITS_ALLOCATED, FRAMES = "0028|0010", "0028|0011", "0028|0002", "0028|0100", "0028|0008"
# Implicit VR little endian, explicit VR little endian, explicit VR big endian: pixel data stored as is.
NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
# JPEG (baseline, extended, lossless) and JPEG-LS transfer syntaxes, whose streams state their size.
JPEG_SYNTAXES = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                 "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
# Files in a series folder that are not slices of it.
IGNORED_FILES = ("DICOMDIR",)
# The elements that hold an image's pixels.
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# What to check in a DICOM image that GDCM cannot read.
UNREADABLE_IMAGE = ("check its Rows (0028,0010), Columns (0028,0011), Bits Allocated (0028,0100) (8, 16 or 32) and "
                    "Pixel Data (7FE0,0010), or copy the series again.")
# What a raw data set (no preamble and file meta: no Part 10 file) begins with: the first element
# of group 0002 or 0008, little endian.
_RAW_STARTS = (b"\x02\x00", b"\x08\x00")
NO_PART10 = ("it is a raw DICOM data set, without the 128-byte preamble, 'DICM' and file meta header of a DICOM "
             "file (as some archives and old ACR-NEMA systems write them), which GDCM does not read; rewrite each "
             "file as a DICOM file (dcmtk: dcmconv +F IN OUT) or export the series again.")


def is_raw_dataset(path: Path) -> bool:
    """A file that looks like a DICOM data set written without its Part 10 preamble and header."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(2)
    except OSError:
        return False
    return start in _RAW_STARTS and not is_dicom_file(path)


def _unreadable(path: Path) -> str:
    """The remedy for a file GDCM cannot read as a slice."""
    return NO_PART10 if is_raw_dataset(path) else UNREADABLE_IMAGE


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
    pixel_id: int = sitk.sitkUnknown    # the pixel type ITK reads the slice as
    sop: str = ""                       # SOP Instance UID
    frames: int = 1
    has_spacing: bool = True            # carries a Pixel Spacing
    thickness: float | None = None      # Slice Thickness, else Spacing Between Slices (its size); None: neither


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


# Series folders a disc's or export's root lists, at most, in a refusal.
LISTED_SERIES_FOLDERS = 5


def _refuse_disc_root(folder: Path) -> None:
    """InputError for the root of a CD or a PACS export: a DICOMDIR (an index) and no slice beside it,
    the images in folders below; naming the folders that hold them, to give one of."""
    if not any((folder / name).is_file() for name in ("DICOMDIR", "dicomdir")):
        return
    below: list[str] = []
    for sub, folders, names in os.walk(folder):          # walked in name order, stopped once enough are found
        folders.sort()
        if Path(sub) != folder and any(not name.startswith(".") for name in names):
            below.append(str(Path(sub).relative_to(folder)))
        if len(below) > LISTED_SERIES_FOLDERS:
            break
    shown = ", ".join(below[:LISTED_SERIES_FOLDERS]) + (", ..." if len(below) > LISTED_SERIES_FOLDERS else "")
    raise InputError(f"{folder} is the root of a disc or export: a DICOMDIR (an index of the images) with the images "
                     f"in folders below it ({shown or 'none found'}); give the folder of one series, "
                     f"e.g. {folder / below[0] if below else folder}.")


def series_files(folder: Path, series_uid: str | None = None) -> list[Path]:
    """The files of the folder's one series, or of the series `series_uid` names among several;
    refuses a folder with none, several and no choice, a choice it does not hold, or files that
    are slices of none of its series."""
    series = _series_ids(folder)
    if not series:
        _refuse_disc_root(folder)
        dicom = next((p for p in sorted(folder.iterdir()) if p.is_file() and is_dicom_file(p)), None)
        if dicom is not None:
            raise InputError(f"{folder} holds DICOM files (such as {dicom.name}) but no image series GDCM can read: "
                             f"{UNREADABLE_IMAGE}")
        raw = next((p for p in sorted(folder.iterdir()) if p.is_file() and is_raw_dataset(p)), None)
        if raw is not None:
            raise InputError(f"{raw} cannot be read as a DICOM slice: {NO_PART10}")
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


class _Hush(logging.Filter):
    """Drops pydicom's log records on this thread while `hushed()` is on: probing a damaged file
    makes pydicom warn before the runtime's own error line names the file."""

    local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.local, "on", False)


logging.getLogger("pydicom").addFilter(_Hush())


@contextmanager
def hushed() -> Iterator[None]:
    before = getattr(_Hush.local, "on", False)
    _Hush.local.on = True
    try:
        yield
    finally:
        _Hush.local.on = before


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
        with warnings.catch_warnings(), hushed():
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


def read_slice(path: Path, reader: sitk.ImageFileReader | None = None) -> Slice:
    """One file's header, without its pixels (`reader`: its image information already read); its
    pixel data's size, pixel spacing, orientation, rescale and photometric interpretation checked."""
    if reader is None:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            raise InputError(f"{path} cannot be read as a DICOM slice: {_unreadable(path)}") from None
    probe = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID())
    _check_pixel_bytes(path, reader)
    orientation = _numbers(reader, ORIENTATION)
    _check_tags(path, _spacing(path, reader), orientation)
    rescale = _rescale(path, reader)
    _check_photometric(path, reader, rescale)
    return Slice(path=path, size=tuple(reader.GetSize()), spacing=tuple(reader.GetSpacing()),
                 position=_numbers(reader, POSITION), orientation=orientation,
                 pixel_bytes=probe.GetSizeOfPixelComponent() * reader.GetNumberOfComponents(),
                 integer="integer" in probe.GetPixelIDTypeAsString(), rescale=rescale, pixel_id=reader.GetPixelID(),
                 sop=_tag_text(reader, SOP_INSTANCE),
                 frames=_tag_int(reader, FRAMES, 1) or 1, has_spacing=reader.HasMetaDataKey(PIXEL_SPACING),
                 thickness=slice_thickness(reader))


def slice_thickness(reader: sitk.ImageFileReader) -> float | None:
    """How thick the slice is: Slice Thickness, else the size of Spacing Between Slices (some
    scanners write it negative); None where neither is a positive number."""
    for tag in (SLICE_THICKNESS, SPACING_BETWEEN_SLICES):
        values = _numbers(reader, tag)
        if values and math.isfinite(values[0]) and abs(values[0]) > 0:
            return abs(values[0])
    return None


def _spacing(path: Path, reader: sitk.ImageFileReader) -> tuple[float, ...] | None:
    """Pixel Spacing, None where the file has none; refused where it is there but not two numbers
    (ITK then takes 1 mm, or what its memory held)."""
    if not reader.HasMetaDataKey(PIXEL_SPACING):
        return None
    values = _numbers(reader, PIXEL_SPACING)
    if values is None or len(values) != 2:
        raise refuse(path, "Pixel Spacing (0028,0030)", repr(reader.GetMetaData(PIXEL_SPACING).strip()),
                     "it must be two numbers (mm between rows, between columns)",
                     "the file is damaged or was written wrongly: copy the series from its source again")
    return values


def _rescale(path: Path, reader: sitk.ImageFileReader) -> tuple[float, ...]:
    """Rescale Slope and Intercept (NaN for each the file lacks); refused where one is there but
    not a number (ITK takes 1 and 0) or the slope is 0 (ITK takes 1)."""
    values = []
    for tag, name in zip(RESCALE, RESCALE_NAMES):
        if not _tag_text(reader, tag) and (not reader.HasMetaDataKey(tag) or _tag_text(reader, MODALITY) != "CT"):
            values.append(math.nan)             # absent, or empty as an anonymizer leaves it (a CT's are required)
            continue
        numbers = _numbers(reader, tag)
        if numbers is None or len(numbers) != 1 or not math.isfinite(numbers[0]) or (tag == RESCALE[0] and
                                                                                     numbers[0] == 0):
            raise refuse(path, name, repr(reader.GetMetaData(tag).strip()),
                         "it must be one finite number (a slope other than 0)",
                         "the file is damaged or was written wrongly: copy the series from its source again")
        values.append(numbers[0])
    return tuple(values)


def _check_photometric(path: Path, reader: sitk.ImageFileReader, rescale: tuple[float, ...]) -> None:
    """GDCM inverts MONOCHROME1 images (bright becomes dark, as they are displayed) before their
    rescale: a rescaled one (CT numbers, say) would read wrong, and is refused; another (no rescale,
    or the slope 1 and intercept 0 of radiographs) is read inverted, and said so."""
    if _tag_text(reader, PHOTOMETRIC) != "MONOCHROME1":
        return
    slope, intercept = rescale
    if not (math.isnan(slope) or slope == 1) or not (math.isnan(intercept) or intercept == 0):
        raise InputError(f"{path}: Photometric Interpretation (0028,0004) is MONOCHROME1 with a rescale to "
                         "quantitative values, which would be read inverted; set it to MONOCHROME2 (dcmodify -m "
                         "PhotometricInterpretation=MONOCHROME2), which keeps the stored values and their rescale.")
    log.warning("%s is MONOCHROME1: it is read inverted, as it is displayed (high values bright)", path)


def _tag_text(reader: sitk.ImageFileReader, tag: str) -> str:
    """A tag's value without DICOM's padding (spaces, NUL); "" where the file lacks it."""
    return reader.GetMetaData(tag).strip(" \0") if reader.HasMetaDataKey(tag) else ""


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
    if syntax in JPEG_SYNTAXES:
        _check_jpeg_size(path, reader)
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


def _check_jpeg_size(path: Path, reader: sitk.ImageFileReader) -> None:
    """A JPEG or JPEG-LS frame must be as many rows and columns as the header says: GDCM reads a
    128 x 128 stream under a header of 64 x 256 as a scrambled image, or takes the stream's size
    where the header's is smaller. Checked on the first frame's start-of-frame marker, where
    pydicom is installed to walk the encapsulated pixel data."""
    rows, columns = _tag_int(reader, ROWS), _tag_int(reader, COLUMNS)
    first = _first_fragment(path)
    if first is None:
        return
    size = jpeg_frame_size(first)
    if size is not None and size != (rows, columns):
        raise InputError(f"{path}: its compressed pixel data are {size[0]} x {size[1]} pixels where Rows (0028,0010) "
                         f"and Columns (0028,0011) say {rows} x {columns}; the file is damaged or was written "
                         "wrongly: copy the series from its source again.")


def _first_fragment(path: Path) -> bytes | None:
    """The start (up to META_READ_BYTES) of the first fragment of a file's encapsulated Pixel Data,
    after its Basic Offset Table item; None where pydicom is not installed or the items cannot be
    walked (the decoder then refuses what is damaged)."""
    element = _pixel_data_element(path)
    if element is None:
        return None
    try:
        start = int(element.value_tell)
        with open(path, "rb") as handle:
            handle.seek(start)
            head = handle.read(META_READ_BYTES)
    except (AttributeError, TypeError, ValueError, OSError):   # no position recorded, or the file gone
        return None
    table = _item(head, 0)                      # the Basic Offset Table's item, then the first fragment's
    fragment = None if table is None else _item(head, table[0] + table[1])
    return None if fragment is None else head[fragment[0]:fragment[0] + fragment[1]]


def _item(head: bytes, at: int) -> tuple[int, int] | None:
    """Where the value of the encapsulation item at `at` starts, and its length; None where no item starts there."""
    if at + 8 > len(head) or head[at:at + 4] != b"\xfe\xff\x00\xe0":
        return None
    return at + 8, int.from_bytes(head[at + 4:at + 8], "little")


def pixel_shortfall(present: int, rows: int, columns: int, bits: int, samples: int = 1, frames: int = 1) -> str | None:
    """What is missing where uncompressed pixel data of `present` bytes holds fewer than its header
    promises (rows x columns x samples x bytes per sample x frames); None where it holds them."""
    expected = rows * columns * samples * frames * bits // 8
    if present >= expected:
        return None
    return (f"holds {present:,} bytes of pixel data, fewer than the {expected:,} its header promises ({rows} x "
            f"{columns}, {bits} bits, {frames} frame(s)): the slice is truncated or damaged")


def _pixel_data_element(path: Path) -> Any:
    """The top-level Pixel Data element of a file, its value not read (pydicom's deferred element);
    None without pydicom, without the element, or where pydicom cannot parse the header (ITK's
    reading refuses it, or the file's size decides)."""
    try:
        import pydicom
    except ImportError:
        return None
    try:
        with hushed():
            dataset = pydicom.dcmread(path, defer_size=1024, force=True)
            return dataset.get_item("PixelData", keep_deferred=True)
    except Exception:  # noqa: BLE001 - pydicom raises several kinds for a damaged file
        return None


def _pixel_data_bytes(path: Path, size: int) -> int | None:
    """The bytes of the top-level Pixel Data element that the file holds (its stated length, less
    what the file lacks after it), by pydicom's parse; None without pydicom or without the element."""
    element = _pixel_data_element(path)
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
        lacking = next((s for s in (first, other) if s.orientation is None or len(s.orientation) != 6), None)
        if lacking is not None:
            raise InputError(f"{folder}: slice {lacking.path.name} has no valid Image Orientation (Patient) "
                             "(0020,0037) (six numbers), so the slices cannot be placed in a volume; copy the series "
                             "from its source again.")
        if not np.allclose(other.orientation, first.orientation, atol=ORIENTATION_TOLERANCE, rtol=0):
            raise InputError(f"{folder}: slice {other.path.name} has Image Orientation (Patient) "
                             f"{other.orientation} unlike {first.path.name} ({first.orientation}); the slices of one "
                             "volume share one orientation: put one series per folder.")


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    row, column = np.array(orientation[:3]), np.array(orientation[3:6])
    return np.cross(row, column)


def _check_unique(folder: Path, slices: Sequence[Slice]) -> None:
    """Slices with SOP Instance UIDs of their own (a SEG references each by it) and Pixel Spacing
    (ITK takes 1 mm where a slice has none)."""
    seen: dict[str, str] = {}
    for one in slices:
        if one.sop and one.sop in seen:
            raise InputError(f"{folder}: slices {seen[one.sop]} and {one.path.name} share SOP Instance UID {one.sop}; "
                             "each instance needs its own: where one file is a copy of the other, remove the copy; "
                             "else copy the series from its source again.")
        seen[one.sop] = one.path.name
        if not one.has_spacing:
            raise InputError(f"{folder}: slice {one.path.name} has no Pixel Spacing (0028,0030), so the volume's "
                             "voxel size is unknown; copy the series from its source again.")


def mixed_types(slices: Sequence[Slice]) -> bool:
    """Whether the slices read as different pixel types or with different rescales: ITK gives the
    whole volume the first slice's type, so the volume is then read as float64, which holds each."""
    first = slices[0]
    return any(other.pixel_id != first.pixel_id or (other.rescale != first.rescale and not (
        np.isnan(other.rescale).all() and np.isnan(first.rescale).all())) for other in slices[1:])


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
                             f"({ordered[index].round(3).tolist()} mm): the series holds a duplicate (remove one), or "
                             "several echoes, acquisitions or time points at each position (a multi-echo or dynamic "
                             "series: export each as a series of its own).")
    median = float(np.median(along))
    tolerance = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_SHARE * median)
    for index, distance in enumerate(along):
        if abs(distance - median) > tolerance:
            raise InputError(f"{folder}: slices {names[index]} and {names[index + 1]} lie {distance:.4g} mm apart, "
                             f"the others {median:.4g} mm: a slice is missing or the spacing is not uniform; copy the "
                             "complete series, or resample it onto a regular grid first.")
    sideways = np.linalg.norm(steps - np.outer(along, normal), axis=1)
    if np.any(sideways > tolerance):
        raise InputError(f"{folder}: successive slices are shifted sideways by up to {float(sideways.max()):.3g} mm "
                         "(a tilted gantry or a sheared stack), a grid no output format holds; correct the tilt "
                         "(dcm2niix does) before inference.")
    _check_whole_series(folder, ordered, normal, names, slices[0].spacing[:2])
    return median


def _check_whole_series(folder: Path, ordered: np.ndarray, normal: np.ndarray, names: Sequence[str],
                        pixel: Sequence[float]) -> None:
    """Each slice near where ITK's grid places it (from the first slice to the last in even steps
    along the normal): steps within tolerance one by one can add up over hundreds of slices, to a
    varying spacing or a slight tilt that puts the series' far end millimetres off its grid."""
    offsets = ordered - ordered[0]
    along = offsets @ normal
    grid = along[-1] * np.arange(len(ordered)) / (len(ordered) - 1)
    step = float(along[-1]) / (len(ordered) - 1)
    drift = np.abs(along - grid)
    if np.any(drift > max(SPACING_TOLERANCE_MM, WHOLE_SERIES_SHARE * step)):
        worst = int(drift.argmax())
        raise InputError(f"{folder}: slice {names[worst]} lies {float(drift[worst]):.3g} mm from where an even grid "
                         "from the first slice to the last places it: the spacing varies along the series; resample "
                         "it onto a regular grid first.")
    sideways = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
    if np.any(sideways > max(SPACING_TOLERANCE_MM, WHOLE_SERIES_SHARE * min(float(v) for v in pixel))):
        raise InputError(f"{folder}: the slices drift sideways by up to {float(sideways.max()):.3g} mm along the "
                         "series (a tilted gantry or a sheared stack), a grid no output format holds; correct the "
                         "tilt (dcm2niix does) before inference.")


def check_series(folder: Path, series_uid: str | None = None) -> tuple[list[Path], list[Slice], float | None]:
    """The files of the folder's series (the one `series_uid` names, where it holds several),
    their headers and the step between slices (mm; None for one file), checked (see the module
    docstring)."""
    files = series_files(folder, series_uid)
    slices: list[Slice] = [None] * len(files)  # type: ignore[list-item]

    def read(index: int) -> None:
        slices[index] = read_slice(files[index])

    for_each(read, range(len(files)))
    if len(slices) == 1:
        return files, slices, None
    _check_unique(folder, slices)
    _check_alike(folder, slices)
    multi = next((s for s in slices if s.frames > 1), None)
    if multi is not None:
        raise InputError(f"{folder}: {multi.path.name} holds {multi.frames} frames beside other files of its series; "
                         "give the multi-frame file on its own, or convert the series with dcm2niix.")
    return files, slices, _check_positions(folder, slices)


def read_series(folder: Path, files: Sequence[Path], expected_slices: int, step: float | None,
                wide: bool = False) -> sitk.Image:
    """Read the checked files into one volume (as float64 where `wide`: `mixed_types`); refuses a
    volume ITK built with another slice count or another step between slices than `check_series`
    found, and names a slice that cannot be decoded."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    if wide:
        reader.SetOutputPixelType(sitk.sitkFloat64)
    log.info("reading DICOM series (%d files) from %s", len(files), folder)
    try:
        image = reader.Execute()
    except RuntimeError:
        _name_undecodable(folder, files)
        raise
    depth = image.GetSize()[2] if image.GetDimension() == 3 else 1
    if expected_slices > 1 and depth != expected_slices:
        raise InputError(f"{folder}: ITK built {depth} slices from the series' {expected_slices} files; "
                         "copy the series again.")
    if step is not None and not math.isclose(image.GetSpacing()[2], step, rel_tol=SPACING_TOLERANCE_SHARE):
        raise InputError(f"{folder}: ITK built the volume with {image.GetSpacing()[2]:.4g} mm between slices where "
                         f"their positions lie {step:.4g} mm apart; copy the series again.")
    return image


def _name_undecodable(folder: Path, files: Sequence[Path]) -> None:
    """After a series failed to read: the first of its slices that cannot be decoded on its own, named."""
    for path in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.Execute()
        except RuntimeError:
            raise InputError(f"{folder}: slice {path.name} cannot be decoded (its compressed pixel data are damaged "
                             "or do not match its Rows, Columns and bits); copy the series again.") from None


def frame_positions(path: Path, frames: int) -> list[tuple[float, ...]] | None:
    """Image Position (Patient) of each frame of a multi-frame file, from its Per-Frame Functional
    Groups; None where its frames carry none. Needs pydicom (the `dicom` extra). Frames that carry
    orientations or rescales of their own that differ, which ITK reads all as the first frame's,
    are refused (InputError)."""
    try:
        import pydicom
    except ImportError:
        raise InputError(f"{path} holds {frames} frames, whose positions are checked with pydicom, which is not "
                         f"installed: {install_hint('dicom')}, or convert the file with dcm2niix.") from None
    try:
        with hushed():
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        groups = dataset.get("PerFrameFunctionalGroupsSequence")
        if groups is None or len(groups) != frames:
            return None
        positions = [tuple(float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient) for item in groups]
    except Exception:  # noqa: BLE001 - a frame without a position, or a damaged sequence
        return None
    _refuse_frames_apart(path, dataset, groups)
    return positions if all(len(p) == 3 and all(map(math.isfinite, p)) for p in positions) else None


# Per-frame functional groups whose values ITK takes from the first frame for every frame.
_FRAME_VALUES = (("PlaneOrientationSequence", ("ImageOrientationPatient",), "Image Orientation (Patient)",
                  ORIENTATION_TOLERANCE),
                 ("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept"),
                  "Rescale Slope and Intercept", 1e-6))


def _refuse_frames_apart(path: Path, dataset: Any, groups: Any) -> None:
    """InputError where the frames of a multi-frame file carry orientations, or rescales, that
    differ: ITK reads every frame with the first frame's (a Philips enhanced MR's rescale per
    frame), which would misplace them or misread their values."""
    shared = (dataset.get("SharedFunctionalGroupsSequence") or [None])[0]
    for sequence, keywords, named, tolerance in _FRAME_VALUES:
        values = [_frame_value(item, shared, sequence, keywords) for item in groups]
        if any(value is None for value in values) or len({len(value) for value in values}) > 1:
            continue
        spread = np.ptp(np.array(values, dtype=float), axis=0)
        if float(spread.max(initial=0.0)) > tolerance:
            other = next(index for index, value in enumerate(values) if
                         np.abs(np.array(value) - np.array(values[0])).max() > tolerance)
            raise InputError(f"{path}: frame {other + 1} carries {named} {list(values[other])}, unlike frame 1's "
                             f"{list(values[0])}; the frames are read as one volume with frame 1's, which would "
                             "misplace or misread them: convert the file with dcm2niix first.")


def _frame_value(item: Any, shared: Any, sequence: str, keywords: tuple[str, ...]) -> tuple[float, ...] | None:
    """A frame's values of `keywords` in its own `sequence`, else in the shared group's; None where
    neither holds them, or they are no numbers."""
    for group in (item, shared):
        found = group.get(sequence) if group is not None else None
        values = [found[0].get(keyword) for keyword in keywords] if found else [None]
        if any(value is None for value in values):
            continue
        try:
            return tuple(float(v) for value in values for v in (value if _several(value) else [value]))
        except (TypeError, ValueError):
            return None
    return None


def _several(value: Any) -> bool:
    """Whether a DICOM value holds several numbers (a multi-valued element), not one."""
    return hasattr(value, "__iter__") and not isinstance(value, (str, bytes))


def check_frames(path: Path, reader: sitk.ImageFileReader) -> None:
    """A multi-frame file (Number of Frames above 1) is read by ITK as frames stacked in file order
    from the first frame's position at one step: each frame must lie where that places it (frames
    stored out of order, with a gap, a varying step or a tilt would otherwise be read on the wrong
    grid), and the frames must rise along the slice normal."""
    frames = _tag_int(reader, FRAMES, 1) or 1
    if frames <= 1:
        return
    positions = frame_positions(path, frames)
    if positions is None:
        raise InputError(f"{path} holds {frames} frames without an Image Position (Patient) each (a cine loop or "
                         "a legacy multi-frame file), so they cannot be placed in a volume; give a series of "
                         "single-frame slices, or convert the file with dcm2niix.")
    points = np.array(positions)
    normal = np.array(reader.GetDirection(), dtype=float).reshape(3, 3)[:, 2]
    step = float(reader.GetSpacing()[2])
    expected = np.array(reader.GetOrigin(), dtype=float) + np.outer(np.arange(frames) * step, normal)
    error = np.linalg.norm(points - expected, axis=1)
    worst = int(error.argmax())
    if error[worst] > max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_SHARE * abs(step)):
        raise InputError(f"{path}: frame {worst + 1} of {frames} lies at {points[worst].round(3).tolist()} mm, "
                         f"{float(error[worst]):.3g} mm from where a volume of its frames in file order at "
                         f"{abs(step):.4g} mm steps places it: the frames are out of order, or have a gap, a varying "
                         "step or a tilt; convert the file with dcm2niix first.")
    if step < 0:
        raise InputError(f"{path}: its frames are stored from the highest position along the slice normal down, "
                         "which ITK cannot read as a volume; convert the file with dcm2niix first.")
