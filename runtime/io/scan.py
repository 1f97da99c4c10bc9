"""Reading scans: NIfTI, NRRD, MHA and DICOM series folders through SimpleITK.

Arrays come out as SimpleITK gives them, channels first then (z, y, x) — or (y, x) for 2D images —
with the spacing in the same order. Conversion to a model's axis order happens in `runtime.io.axes`.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import SimpleITK as sitk

from runtime.budget import check_memory
from runtime.contract import ClassSpec
from runtime.errors import InputError
from runtime.io.dicom import (
    NO_PART10, check_frames, check_series, is_raw_dataset, mixed_types, read_series, read_slice, slice_thickness,
)
from runtime.io.formats import check_unchecked_format, is_dicom_file, plain_mode_problem
from runtime.io.gdcm_stderr import quiet_gdcm
from runtime.io.header import Header, check_finite, check_spacing, orthonormal
from runtime.io.metaimage import is_metaimage, metaimage_header
from runtime.io.nifti import Placement, is_nifti, nifti_header, nifti_placement, same_placement
from runtime.io.nrrd import is_nrrd, nrrd_header
from runtime.io.streams import check_promise, decode_into, read_voxels, verify_stream
from runtime.parallel import allowed_cpus, for_each

log = logging.getLogger(__name__)

GEOMETRY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Scan:
    """One subject's input: every channel on one grid, with the grid it came on."""

    array_zyx: np.ndarray            # float32 (C, z, y, x) or (C, y, x)
    spacing_zyx: tuple[float, ...]   # mm, same order as the spatial axes
    reference: sitk.Image            # an image with the input's exact geometry
    sources: tuple[str, ...]
    series_files: tuple[Path, ...] = ()   # a DICOM series input's files, in slice order
    placement: Placement | None = None    # where a 2D NIfTI input lies in 3D, for its NIfTI outputs

    @property
    def spatial_dims(self) -> int:
        return self.array_zyx.ndim - 1


# Formats read, besides DICOM series folders. NIfTI, NRRD and MetaImage headers are checked by the
# project's own parsers and their data against those headers; PNG carries checks of its own that
# libpng applies; JPEG, BMP and TIFF are checked for truncation (runtime.io.formats).
CHECKED_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
OTHER_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".dcm")
_COMPLEX = {sitk.sitkComplexFloat32, sitk.sitkComplexFloat64}


def image_header(path: Path) -> Header | None:
    """The header of a NIfTI, NRRD or MetaImage file, checked, and what it promises compared with
    the file's size; None for the other formats."""
    for belongs, parse in ((is_nifti, nifti_header), (is_nrrd, nrrd_header), (is_metaimage, metaimage_header)):
        if belongs(path):
            header = parse(path)
            check_promise(header)
            return header
    return None


def _check_format(path: Path) -> None:
    name = path.name.lower()
    if name.endswith(CHECKED_SUFFIXES + OTHER_SUFFIXES) or is_dicom_file(path):
        if name.endswith((".jpg", ".jpeg", ".bmp", ".tif", ".tiff")):
            check_unchecked_format(path)
        return
    raise InputError(f"{path} is not in a format the runtime reads ({', '.join(CHECKED_SUFFIXES + OTHER_SUFFIXES)}, "
                     "or a DICOM file or series folder); convert it to NIfTI, NRRD or MHA.")


def _itk_reason(exc: RuntimeError) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else "unknown reason"


def _open(path: Path, header: Header | None) -> sitk.ImageFileReader:
    """A reader with the file's image information read (not its voxels). Where ITK cannot read it,
    the stored data are checked against the header first, for the precise reason."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        if header is not None:
            verify_stream(header)
        mode = plain_mode_problem(path)
        if mode is not None:
            raise InputError(f"{mode}.") from None
        if is_raw_dataset(path):
            raise InputError(f"{path} cannot be read as an image: {NO_PART10}") from None
        raise InputError(
            f"{path} cannot be read as an image ({_itk_reason(exc)}); it may be truncated or not a "
            "NIfTI/NRRD/MHA file or DICOM series."
        ) from None
    if path.suffix.lower() in (".tif", ".tiff"):
        palette = plain_mode_problem(path)         # a palette TIFF reads as its colour table's values
        if palette is not None:
            raise InputError(f"{palette}.")
    return reader


# A 2D NIfTI image its sform or qform lays outside the axial plane.
_OUT_OF_PLANE = ("{path} is a 2D NIfTI image whose sform or qform lays it outside the axial plane (a coronal, "
                 "sagittal or tilted slice), where ITK's 2D grid cannot follow it; save it as a volume one slice "
                 "thick along z (a 3D NIfTI, its thin axis last).")


def check_geometry(path: Path, dimension: int, spacing: Sequence[float], origin: Sequence[float],
                   direction: Sequence[float]) -> None:
    """An image's grid as ITK reads it: 2D or 3D, spacings in bounds, a finite origin and an
    orthonormal direction (the outputs of the runtime hold no other)."""
    if dimension not in (2, 3):
        raise InputError(f"{path} is a {dimension}D image; the runtime reads 2D and 3D images: save each channel "
                         "or time point as its own file, and a label map as one image of class values.")
    check_spacing(path, "spacing", spacing)
    check_finite(path, "origin", origin)
    if not orthonormal(direction, dimension):
        if dimension == 2 and is_nifti(Path(path)) and nifti_placement(Path(path)) is not None:
            raise InputError(_OUT_OF_PLANE.format(path=path))
        raise InputError(f"{path}: its direction matrix ({' '.join(f'{v:g}' for v in direction)}) is not orthonormal: "
                         "the grid is sheared or scaled, which no output format of the runtime holds; resample the "
                         "image onto an orthogonal grid first.")


def _check_info(path: Path, reader: sitk.ImageFileReader, header: Header | None, budget: int | None) -> None:
    check_geometry(path, reader.GetDimension(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    if reader.GetPixelID() in _COMPLEX:
        raise InputError(f"{path} holds complex voxels; the runtime reads real-valued images: save the magnitude.")
    elements = int(np.prod(reader.GetSize(), dtype=np.int64)) * reader.GetNumberOfComponents()
    if header is not None and elements != header.elements:
        raise InputError(f"{path}: ITK reads {elements} elements where its {header.kind} header declares "
                         f"{header.elements}; the header is inconsistent: export the image again.")
    component = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID()).GetSizeOfPixelComponent()
    check_memory(elements * (component + 4), f"reading {path} ({'×'.join(map(str, reader.GetSize()))} voxels)",
                 "give a smaller image, or raise the budget.", budget)


class Grid(Protocol):
    """What a grid is read from: a sitk.Image, or a reader after ReadImageInformation."""

    def GetSize(self) -> tuple[int, ...]: ...

    def GetSpacing(self) -> tuple[float, ...]: ...

    def GetOrigin(self) -> tuple[float, ...]: ...

    def GetDirection(self) -> tuple[float, ...]: ...


@dataclass(frozen=True)
class Voxels:
    """One image's voxels, in ITK's array order ((z, y, x) or (y, x), components last when there
    are several), and the grid they lie on. `image`: the ITK image the array is a view of, if any."""

    array: np.ndarray
    grid: Grid
    image: sitk.Image | None = None
    scaled: bool = False            # the header maps the stored values to others (NIfTI scl_slope/scl_inter)

    @property
    def components(self) -> int:
        return self.array.shape[-1] if self.array.ndim > len(self.grid.GetSize()) else 1

    def as_image(self) -> sitk.Image:
        if self.image is not None:
            return self.image
        image = sitk.GetImageFromArray(self.array, isVector=self.components > 1)
        _copy_grid(self.grid, image)
        return image


def _copy_grid(grid: Grid, image: sitk.Image) -> None:
    image.SetSpacing(grid.GetSpacing())
    image.SetOrigin(grid.GetOrigin())
    image.SetDirection(grid.GetDirection())


def _itk_voxels(image: sitk.Image) -> Voxels:
    return Voxels(array=sitk.GetArrayViewFromImage(image), grid=image, image=image)


_PIXEL_TYPES = {sitk.sitkUInt8: "u1", sitk.sitkInt8: "i1", sitk.sitkUInt16: "u2", sitk.sitkInt16: "i2",
                sitk.sitkUInt32: "u4", sitk.sitkInt32: "i4", sitk.sitkUInt64: "u8", sitk.sitkInt64: "i8",
                sitk.sitkFloat32: "f4", sitk.sitkFloat64: "f8"}


def _stored_as_read(reader: sitk.ImageFileReader, header: Header) -> bool:
    """Whether ITK would give the stored elements as they are: one component, the same type, no scaling."""
    code = _PIXEL_TYPES.get(reader.GetPixelID())
    return (not header.scaled and reader.GetNumberOfComponents() == 1 and code is not None
            and header.dtype.newbyteorder("=") == np.dtype(code))


def _execute(path: Path, reader: sitk.ImageFileReader) -> sitk.Image:
    try:
        with quiet_gdcm([path]):
            return reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{path} cannot be read as an image ({_itk_reason(exc)}); it may be truncated "
                         "or damaged.") from None


def _read_checked(path: Path, reader: sitk.ImageFileReader, header: Header | None) -> Voxels:
    """The voxels, their stored data checked against the header: decoded once here where ITK would
    give them as stored, else read by ITK with the check running beside it (its refusal, the more
    precise one, wins over ITK's)."""
    if header is None:
        return _itk_voxels(_execute(path, reader))
    if _stored_as_read(reader, header):
        return Voxels(array=read_voxels(header, tuple(reversed(reader.GetSize()))), grid=reader)
    with ThreadPoolExecutor(1, thread_name_prefix="scan-check") as pool:
        checked = pool.submit(verify_stream, header)
        try:
            image = _execute(path, reader)
        finally:
            checked.result()
    return replace(_itk_voxels(image), scaled=header.scaled)


@dataclass(frozen=True)
class Opened:
    """An image whose header has been read and checked, its voxels not yet: `load()` reads them."""

    path: Path
    size: tuple[int, ...]           # ITK order, x first
    spacing: tuple[float, ...]      # mm, x first
    components: int
    load: Callable[[], Voxels]
    grid: Grid | None = None        # the file's header grid; None for a DICOM series folder
    # Where the file's stored voxels are what ITK would give: decode them, checked, into an array
    # of any real dtype (`runtime.io.streams.decode_into`), instead of `load`.
    decode: Callable[[np.ndarray], None] | None = None
    files: tuple[Path, ...] = ()    # a DICOM series folder's files, in slice order
    placement: Placement | None = None      # a 2D NIfTI file's place in 3D (runtime.io.nifti.nifti_placement)


def _first_file(folder: Path) -> list[Path]:
    """The first file of a folder by name, hidden files and a DICOMDIR passed over; none for none."""
    files = (p for p in sorted(folder.iterdir()) if not p.name.startswith(".") and p.name != "DICOMDIR")
    return [next((p for p in files if p.is_file()), folder)]


def _open_folder(folder: Path, budget: int | None, series_uid: str | None = None) -> Opened:
    with quiet_gdcm(_first_file(folder)):
        files, slices, step = check_series(folder, series_uid)
    first = slices[0]
    if len(files) == 1 and first.frames > 1:
        return replace(open_image(files[0], budget), files=tuple(files))
    size = (*first.size[:2], len(files)) if len(files) > 1 else first.size
    spacing = (*first.spacing[:2], step) if step is not None else first.spacing
    thick = len(files) == 1 and len(first.size) == 3 and first.thickness is not None
    if thick:                                   # one slice: as thick as it says, not ITK's 1 mm
        spacing = (*first.spacing[:2], first.thickness)
    voxels = int(np.prod(size, dtype=np.int64))
    wide = mixed_types(slices)
    check_memory(voxels * ((8 if wide else first.pixel_bytes) + 4), f"reading the DICOM series {folder} ({len(files)} "
                 f"slices of {first.size[0]}×{first.size[1]})", "give a smaller series, or raise the budget.", budget)

    def load() -> Voxels:
        try:
            with quiet_gdcm(files):
                image = read_series(folder, files, len(files), step, wide)
        except RuntimeError as exc:
            raise InputError(f"{folder}: its DICOM series cannot be read ({_itk_reason(exc)}); copy the series "
                             "again.") from None
        if thick:
            image.SetSpacing(spacing)
        check_geometry(folder, image.GetDimension(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
        return _itk_voxels(image)

    return Opened(path=folder, size=tuple(size), spacing=tuple(spacing), components=1, load=load, files=tuple(files))


def _open_file(path: Path, budget: int | None) -> tuple[Header | None, sitk.ImageFileReader]:
    """One image file's header and ITK's image information, checked (format, fields, what the
    file can hold, geometry, the memory budget), its voxels not read."""
    _check_format(path)
    header = image_header(path)
    with quiet_gdcm([path]):
        reader = _open(path, header)
    if header is None and is_dicom_file(path):
        read_slice(path, reader)
        check_frames(path, reader)
    _check_info(path, reader, header, budget)
    return header, reader


def open_image(path: Path | str, budget: int | None = None, series_uid: str | None = None) -> Opened:
    """Check one image file's (or DICOM series folder's: of its series `series_uid` where it holds
    several) header, geometry and size against the memory budget, without reading its voxels;
    InputError saying why not."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; check the path.")
    if path.is_dir():
        return _open_folder(path, budget, series_uid)
    header, reader = _open_file(path, budget)
    stored = header if header is not None and _stored_as_read(reader, header) else None
    placement = nifti_placement(path) if is_nifti(path) and reader.GetDimension() == 2 else None
    if placement is not None and placement.tilted():
        raise InputError(_OUT_OF_PLANE.format(path=path))
    thickness = _lone_slice_thickness(path, reader)
    if thickness is not None:                 # one DICOM slice: as thick as it says, not ITK's 1 mm
        spacing = (*reader.GetSpacing()[:2], thickness)
        grid = grid_image(reader)
        grid.SetSpacing(spacing)

        def load() -> Voxels:
            voxels = _read_checked(path, reader, header)
            voxels.image.SetSpacing(spacing)
            return voxels

        return Opened(path=path, size=tuple(reader.GetSize()), spacing=spacing,
                      components=reader.GetNumberOfComponents(), load=load, grid=grid)
    return Opened(path=path, size=tuple(reader.GetSize()), spacing=tuple(reader.GetSpacing()),
                  components=reader.GetNumberOfComponents(), load=lambda: _read_checked(path, reader, header),
                  grid=reader, decode=None if stored is None else lambda out: decode_into(stored, out),
                  placement=placement)


def _lone_slice_thickness(path: Path, reader: sitk.ImageFileReader) -> float | None:
    """A single-frame DICOM file's slice thickness (runtime.io.dicom.slice_thickness), where ITK
    reads it as a volume of one slice; None for any other file."""
    if reader.GetDimension() != 3 or reader.GetSize()[2] != 1 or not is_dicom_file(path):
        return None
    return slice_thickness(reader)


def check_image_file(path: Path, budget: int | None = None) -> sitk.ImageFileReader:
    """Every check of `open_image` on one image file, and its stored data checked against its header
    too (a whole pass over the file); returns the reader, its image information read."""
    header, reader = _open_file(path, budget)
    if header is not None:
        verify_stream(header)
    return reader


def read_image(path: Path | str, budget: int | None = None) -> sitk.Image:
    """Read one image file or DICOM series folder after checking its header, its stored data and
    its size against the memory budget; InputError saying why not."""
    return open_image(path, budget).load().as_image()


def _copy_channels(voxels: Voxels, path: Path, out: np.ndarray) -> None:
    """Cast the voxels into `out` (components, *spatial) float32; refuse NaN and infinity."""
    view = np.moveaxis(voxels.array, -1, 0) if voxels.components > 1 else voxels.array[np.newaxis]
    with np.errstate(over="ignore", invalid="ignore"):     # what overflows is refused below, by name
        np.copyto(out, view, casting="unsafe")
    if view.dtype.kind in "biu":
        return  # integers cast to float32 are always finite
    finite = np.isfinite(out)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        if voxels.scaled or np.isfinite(view).all():          # stored NaN is refused before: the scaling did it
            raise InputError(f"{path} holds {bad} voxels beyond single precision's range (±3.4e38), scaled there by "
                             "its header (a DICOM Rescale Slope (0028,1053) or Intercept (0028,1052), a NIfTI "
                             "scl_slope): check the scaling the file records.")
        raise InputError(f"{path} holds {bad} NaN or infinite voxels; fix them, or mask them, first.")


def _read_images(opened: Sequence[Opened]) -> list[Voxels]:
    """Read every channel; image files several at once (decompressing and decoding release the GIL).

    Errors are raised for the first failing path in the given order, as a sequential read would.
    """
    workers = min(len(opened), len(allowed_cpus()))
    if workers < 2 or any(o.path.is_dir() for o in opened):
        return [o.load() for o in opened]
    with ThreadPoolExecutor(workers, thread_name_prefix="scan-read") as pool:
        return list(pool.map(lambda o: o.load(), opened))


def same_grid(a: Grid, b: Grid) -> bool:
    """Two images share one grid: size, spacing, origin and direction."""
    if a.GetSize() != b.GetSize():
        return False
    pairs = ((a.GetSpacing(), b.GetSpacing()), (a.GetOrigin(), b.GetOrigin()), (a.GetDirection(), b.GetDirection()))
    return all(np.allclose(x, y, rtol=GEOMETRY_TOLERANCE, atol=GEOMETRY_TOLERANCE) for x, y in pairs)


def describe_grid(image: Grid, beside: Grid | None = None) -> str:
    """Size, spacing and origin; the direction too where it differs from `beside`'s."""
    spacing = "×".join(f"{s:g}" for s in image.GetSpacing())
    origin = ",".join(f"{o:.4g}" for o in image.GetOrigin())
    text = f"size {'×'.join(map(str, image.GetSize()))}, spacing {spacing} mm, origin ({origin})"
    if beside is not None and not np.allclose(image.GetDirection(), beside.GetDirection(), rtol=GEOMETRY_TOLERANCE,
                                              atol=GEOMETRY_TOLERANCE):
        text += f", direction ({','.join(f'{d + 0.0:.3g}' for d in image.GetDirection())})"
    return text


def check_same_grid(reference: Grid, other: Grid, ref_path: object, other_path: object,
                    remedy: str = "resample them onto one grid before inference") -> None:
    if not same_grid(reference, other):
        raise InputError(
            f"{other_path} and {ref_path} are not on the same grid ({describe_grid(other, reference)} vs "
            f"{describe_grid(reference, other)}); {remedy}."
        )


Plan = Callable[[tuple[int, ...], tuple[float, ...], int], None]


def read_scan(paths: Sequence[Path | str], budget: int | None = None, plan: Plan | None = None,
              series_uid: str | None = None) -> Scan:
    """Read one subject: each path is one channel (or a multi-component file holds several).

    Every header is checked first; `plan(shape_zyx, spacing_zyx, channels)`, when given, is then
    called with what the first one promises, before any voxel is read (a caller refuses there the
    work it could not do), and the voxels are read and checked last. `series_uid` chooses the
    series of a DICOM folder that holds several.
    """
    if not paths:
        raise InputError("no input image given; pass a scan file or DICOM folder per channel.")
    opened = [open_image(p, budget, series_uid) for p in paths]
    _check_one_plane(opened)
    if plan is not None:
        first = opened[0]
        plan(tuple(reversed(first.size)), tuple(float(s) for s in reversed(first.spacing)),
             sum(o.components for o in opened))
    array, grid, nonzero = _decoded(opened, paths) if all(o.decode for o in opened) else _loaded(opened, paths)
    if not any(nonzero):
        raise InputError(f"{', '.join(map(str, paths))}: every voxel is 0, so there is nothing to predict from; "
                         "check the file.")
    value = one_value(array)
    if value is not None:
        raise InputError(f"{', '.join(map(str, paths))}: every voxel is {value:g} (a series of padding, say), so "
                         "there is nothing to predict from; check the file.")
    reference = grid_image(grid)
    spacing_zyx = tuple(float(s) for s in reversed(grid.GetSpacing()))
    return Scan(array_zyx=array, spacing_zyx=spacing_zyx, reference=reference, sources=tuple(map(str, paths)),
                series_files=opened[0].files, placement=opened[0].placement)


def _check_one_plane(opened: Sequence[Opened]) -> None:
    """InputError where two 2D NIfTI channels lie in different planes of 3D space (two slices of a
    volume, say), which their 2D grids alone would not tell apart."""
    placed = [o for o in opened if o.placement is not None]
    for other in placed[1:]:
        if not same_placement(placed[0].placement, other.placement):
            raise _planes_apart(other.path, placed[0].path, "give channels of one slice")


def one_value(array: np.ndarray) -> float | None:
    """The value every voxel of `array` holds, where they all hold one; None otherwise (most scans
    are told from a sample of their voxels, without a pass over them all)."""
    flat = array.reshape(-1)
    sample = flat[:: max(1, flat.size // 4096) | 1]         # an odd stride: not one column of every slice
    first = sample[0]
    if (sample != first).any() or flat.min() != flat.max():
        return None
    return float(first)


def _decoded(opened: Sequence[Opened], paths: Sequence[Path | str]) -> tuple[np.ndarray, Grid, list[bool]]:
    """Files whose stored voxels are what ITK gives (`Opened.decode`): their grids held to one
    another from their headers, and each decoded straight into its channel of one float32 array,
    several at once (decompressing releases the GIL); with whether each channel holds a voxel
    other than 0."""
    grid = opened[0].grid
    assert grid is not None
    for path, other in zip(paths[1:], opened[1:]):
        check_same_grid(grid, other.grid, paths[0], path)
    array = np.empty((len(opened), *reversed(grid.GetSize())), dtype=np.float32)
    nonzero = [False] * len(opened)

    def decode(index: int) -> None:
        opened[index].decode(array[index])
        nonzero[index] = bool(array[index].any())

    for_each(decode, range(len(opened)))
    return array, grid, nonzero


def _loaded(opened: Sequence[Opened], paths: Sequence[Path | str]) -> tuple[np.ndarray, Grid, list[bool]]:
    """Every channel read (`Opened.load`), its grid held to the first one's, and the voxels copied
    into one float32 array (components, *spatial); with whether each file holds a voxel other than 0."""
    images = _read_images(opened)
    grid = images[0].grid
    for path, image in zip(paths[1:], images[1:]):
        check_same_grid(grid, image.grid, paths[0], path)
    counts = [image.components for image in images]
    array = np.empty((sum(counts), *reversed(grid.GetSize())), dtype=np.float32)
    starts = np.cumsum([0, *counts])
    nonzero = [False] * len(images)

    def copy(index: int) -> None:
        part = array[starts[index]:starts[index + 1]]
        _copy_channels(images[index], Path(paths[index]), part)
        nonzero[index] = bool(part.any())

    for_each(copy, range(len(images)))
    return array, grid, nonzero


def grid_image(grid: Grid) -> sitk.Image:
    """An image on `grid`, standing for a scan's geometry."""
    reference = sitk.Image(grid.GetSize(), sitk.sitkUInt8)
    _copy_grid(grid, reference)
    return reference


def scan_reference(paths: Sequence[Path | str], budget: int | None = None) -> sitk.Image:
    """The grid the scan `read_scan(paths)` reads lies on, as its `reference`: from the first
    channel's header where that is a file, its voxels unread (a DICOM series folder is read)."""
    if not paths:
        raise InputError("no input image given; pass a scan file or DICOM folder per channel.")
    opened = open_image(paths[0], budget)
    return grid_image(opened.grid if opened.grid is not None else opened.load().grid)


def read_mask(path: Path | str, scan: Scan, budget: int | None = None) -> np.ndarray:
    """A binary mask on the scan's grid, as bool (z, y, x)."""
    voxels = open_image(path, budget).load()
    check_same_grid(scan.reference, voxels.grid, scan.sources[0], path)
    check_same_plane(scan.sources[0], path)
    mask = voxels.array != 0
    if voxels.components > 1:
        mask = mask.any(axis=-1)
    if not mask.any():
        raise InputError(f"mask {path} is empty (all 0); give a mask that covers the region to normalise.")
    return mask


def read_label(path: Path | str, scan: Scan, budget: int | None = None,
               classes: Sequence[ClassSpec] | None = None) -> np.ndarray:
    """A reference label map on the scan's grid, as int64 (z, y, x): an image of class values, or
    a DICOM SEG (any file name), each frame placed on the scan's slices, whose segments are the `classes`
    their labels name (runtime.io.dicom_seg.segment_values; segment numbers without `classes`)."""
    return label_on(path, scan.reference, scan.sources[0], budget, classes)


def is_seg_file(path: Path) -> bool:
    """Whether `path` is a DICOM SEG file (a label read as classes, not as an image); pydicom is
    needed only once the file is DICOM."""
    if not (path.is_file() and is_dicom_file(path)):
        return False
    from runtime.io.dicom_seg import is_seg

    return is_seg(path)


def label_on(path: Path | str, reference: sitk.Image, source: str, budget: int | None = None,
             classes: Sequence[ClassSpec] | None = None) -> np.ndarray:
    """`read_label` onto the grid of `reference`, the scan read from `source`."""
    if is_seg_file(Path(path)):
        from runtime.budget import memory_budget
        from runtime.io.dicom_seg import read_seg

        return read_seg(Path(path), reference, budget or memory_budget(), classes).astype(np.int64)
    voxels = open_image(path, budget).load()
    check_same_grid(reference, voxels.grid, source, path)
    check_same_plane(source, path)
    return label_values(voxels, path)


def check_same_plane(source: Path | str, path: Path | str) -> None:
    """InputError where `path` and the scan read from `source`, both 2D NIfTI images, lie in
    different planes of 3D space (a label of another slice), which their 2D grids do not tell."""
    placements = [nifti_placement(Path(p)) if Path(p).is_file() and is_nifti(Path(p)) else None
                  for p in (source, path)]
    if None not in placements and not same_placement(*placements):
        raise _planes_apart(path, source, "give the one of the same slice")


def _planes_apart(path: Path | str, other: Path | str, remedy: str) -> InputError:
    """The refusal of two 2D NIfTI images whose 2D grids agree but whose forms place them apart."""
    return InputError(f"{path} and {other} lie in different planes (their NIfTI sform or qform place them apart, "
                      f"though their 2D grids agree); {remedy}.")


def label_values(voxels: Voxels, path: Path | str) -> np.ndarray:
    """A label map's class values as int64: integers, or floating-point whole numbers (as some tools
    save label maps), one component, none negative. InputError naming what is not: fractions (a mask
    resampled linearly, or saved as 0/0.9999), which read as whole numbers would turn a class into
    another; colours; negative values."""
    from runtime.limits import MAX_CLASS_VALUE

    array = np.asarray(voxels.array)
    if voxels.components != 1:
        raise InputError(f"{path} is not a label map: it holds {voxels.components} values per voxel (a colour or "
                         "palette image?); a label map holds one class value per voxel: save the class values as a "
                         "grey image.")
    if array.dtype.kind == "f":
        whole = bool(np.isfinite(array).all() and np.all(np.floor(array) == array))
        if not whole or (array.size and float(array.max()) > MAX_CLASS_VALUE):
            raise InputError(f"{path} is not a label map: it holds {array.dtype} values that are not whole numbers "
                             f"from 0 to {MAX_CLASS_VALUE} (probabilities, a mask resampled linearly, or an image?); "
                             "a label map holds one class value per voxel: resample labels with nearest neighbour "
                             "and save them as integers.")
        return array.astype(np.int64)
    if array.dtype.kind not in "iub":
        raise InputError(f"{path} is not a label map: it holds {array.dtype} voxels; a label map holds one integer "
                         "class value per voxel.")
    if array.dtype.kind == "i" and array.size and int(array.min()) < 0:
        raise InputError(f"{path} is not a label map: it holds negative values (down to {int(array.min())}); class "
                         "values are 0 (background) and above.")
    return array.astype(np.int64)
