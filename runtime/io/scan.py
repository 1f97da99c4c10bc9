"""Reading scans: NIfTI, NRRD, MHA and DICOM series folders through SimpleITK.

Arrays come out as SimpleITK gives them, channels first then (z, y, x) — or (y, x) for 2D images —
with the spacing in the same order. Conversion to a model's axis order happens in `runtime.io.axes`.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from runtime.errors import InputError
from runtime.io.nifti import check_nifti, is_nifti
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

    @property
    def spatial_dims(self) -> int:
        return self.array_zyx.ndim - 1


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


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = _series_ids(folder)
    if not series:
        raise InputError(f"{folder} is a folder without a DICOM series; pass an image file or a DICOM series folder.")
    if len(series) > 1:
        raise InputError(
            f"{folder} holds {len(series)} DICOM series ({'; '.join(map(_series_name, series))}); "
            "put one series per folder."
        )
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    reader.SetFileNames(files)
    log.info("reading DICOM series %s (%d files) from %s", _series_name(series[0]), len(files), folder)
    return reader.Execute()


def read_image(path: Path | str) -> sitk.Image:
    """Read one image file or DICOM series folder, or raise InputError saying why not."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; check the path.")
    if path.is_file() and is_nifti(path):
        check_nifti(path)
    try:
        image = _read_dicom_series(path) if path.is_dir() else sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise InputError(
            f"{path} cannot be read as an image ({reason}); it may be truncated or not a "
            "NIfTI/NRRD/MHA file or DICOM series."
        ) from None
    if image.GetDimension() not in (2, 3):
        raise InputError(f"{path} is a {image.GetDimension()}D image; give one 2D or 3D image per channel.")
    return image


def _component_count(image: sitk.Image) -> int:
    return image.GetNumberOfComponentsPerPixel()


def _copy_channels(image: sitk.Image, path: Path, out: np.ndarray) -> None:
    """Cast the image's voxels into `out` (components, *spatial) float32; refuse NaN and infinity."""
    view = sitk.GetArrayViewFromImage(image)
    view = np.moveaxis(view, -1, 0) if _component_count(image) > 1 else view[np.newaxis]
    np.copyto(out, view, casting="unsafe")
    if view.dtype.kind in "biu":
        return  # integers cast to float32 are always finite
    finite = np.isfinite(out)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise InputError(f"{path} holds {bad} NaN or infinite voxels; fix or mask them before inference.")


def _read_images(paths: Sequence[Path | str]) -> list[sitk.Image]:
    """Read every channel; image files several at once (decompressing and decoding release the GIL).

    Errors are raised for the first failing path in the given order, as a sequential read would.
    """
    workers = min(len(paths), len(allowed_cpus()))
    if workers < 2 or any(Path(p).is_dir() for p in paths):
        return [read_image(p) for p in paths]
    with ThreadPoolExecutor(workers, thread_name_prefix="scan-read") as pool:
        return list(pool.map(read_image, paths))


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Two images share one grid: size, spacing, origin and direction."""
    if a.GetSize() != b.GetSize():
        return False
    pairs = ((a.GetSpacing(), b.GetSpacing()), (a.GetOrigin(), b.GetOrigin()), (a.GetDirection(), b.GetDirection()))
    return all(np.allclose(x, y, rtol=GEOMETRY_TOLERANCE, atol=GEOMETRY_TOLERANCE) for x, y in pairs)


def describe_grid(image: sitk.Image) -> str:
    spacing = "×".join(f"{s:g}" for s in image.GetSpacing())
    origin = ",".join(f"{o:.4g}" for o in image.GetOrigin())
    return f"size {'×'.join(map(str, image.GetSize()))}, spacing {spacing} mm, origin ({origin})"


def check_same_grid(reference: sitk.Image, other: sitk.Image, ref_path: object, other_path: object) -> None:
    if not same_grid(reference, other):
        raise InputError(
            f"{other_path} and {ref_path} are not on the same grid ({describe_grid(other)} vs "
            f"{describe_grid(reference)}); resample them onto one grid before inference."
        )


def read_scan(paths: Sequence[Path | str]) -> Scan:
    """Read one subject: each path is one channel (or a multi-component file holds several)."""
    if not paths:
        raise InputError("no input image given; pass a scan file or DICOM folder per channel.")
    images = _read_images(paths)
    for path, image in zip(paths[1:], images[1:]):
        check_same_grid(images[0], image, paths[0], path)
    counts = [_component_count(image) for image in images]
    array = np.empty((sum(counts), *reversed(images[0].GetSize())), dtype=np.float32)
    starts = np.cumsum([0, *counts])
    nonzero = [False] * len(images)

    def copy(index: int) -> None:
        part = array[starts[index]:starts[index + 1]]
        _copy_channels(images[index], Path(paths[index]), part)
        nonzero[index] = bool(part.any())

    for_each(copy, range(len(images)))
    if not any(nonzero):
        raise InputError(f"{', '.join(map(str, paths))}: every voxel is 0, so there is nothing to segment; check the file.")
    reference = sitk.Image(images[0].GetSize(), sitk.sitkUInt8)
    reference.CopyInformation(images[0])
    spacing_zyx = tuple(float(s) for s in reversed(images[0].GetSpacing()))
    return Scan(array_zyx=array, spacing_zyx=spacing_zyx, reference=reference, sources=tuple(map(str, paths)))


def read_mask(path: Path | str, scan: Scan) -> np.ndarray:
    """A binary mask on the scan's grid, as bool (z, y, x)."""
    image = read_image(path)
    check_same_grid(scan.reference, image, scan.sources[0], path)
    mask = sitk.GetArrayFromImage(image) != 0
    if not mask.any():
        raise InputError(f"mask {path} is empty (all 0); give a mask that covers the region to normalise.")
    return mask


def read_label(path: Path | str, scan: Scan) -> np.ndarray:
    """A reference label map on the scan's grid, as int64 (z, y, x)."""
    image = read_image(path)
    check_same_grid(scan.reference, image, scan.sources[0], path)
    return sitk.GetArrayFromImage(image).astype(np.int64)
