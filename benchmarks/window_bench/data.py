"""The inputs: a synthetic BraTS-like case made in code, the real brain MR and CT series of the
shared test data, and the SimpleITK reading, z-score and writing the peers use.

Frames: arrays are (C, z, y, x) as SimpleITK gives them; shapes named `_xyz` are in image order.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from runtime.io import read_scan
from runtime.window import window_grid

from window_bench.options import CHANNELS, OVERLAP, SEED, Settings

BRAIN_FILE = "radiology/pyradiomics_brain1_image.nrrd"
CT_SERIES = "dicom/totalseg_ct_series"
QUICK_CT_CROP_XY = 192
QUICK_CT_FIRST_ROW = 40  # rows 40.. hold air above the body (which starts near row 136), then the body
QUICK_BRAIN_CROP_XY = 140

# Mean intensity of each tissue per channel (t1, t1ce, t2, flair): different contrast per channel.
CONTRAST = {
    "skull": (900, 850, 300, 350),
    "brain": (600, 620, 450, 500),
    "ventricles": (200, 210, 1400, 150),
    "oedema": (480, 500, 1000, 1100),
    "core": (350, 1300, 800, 700),
}


def ellipsoid(grid: Sequence[np.ndarray], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def texture(shape_zyx: tuple[int, ...], sigma: float, seed: int) -> np.ndarray:
    """Smooth random texture, zero mean and unit standard deviation."""
    noise = sitk.GetImageFromArray(np.random.default_rng(seed).normal(size=shape_zyx).astype(np.float32))
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(noise, sigma))
    return (smooth - smooth.mean()) / max(float(smooth.std()), 1e-6)


def tissues(shape_zyx: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Boolean maps of a head: scalp/skull shell, brain, ventricles, oedema and tumour core."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape_zyx)]
    size = np.array(shape_zyx, dtype=float)
    centre = size / 2.0
    head = ellipsoid(grid, centre, size * (0.45, 0.42, 0.36))
    brain = ellipsoid(grid, centre, size * (0.39, 0.36, 0.30))
    ventricles = ellipsoid(grid, centre + size * (0.02, 0.0, 0.0), size * (0.08, 0.10, 0.03))
    lesion_centre = centre + size * (0.06, -0.10, 0.10)
    oedema = ellipsoid(grid, lesion_centre, size * (0.12, 0.11, 0.10)) & brain
    core = ellipsoid(grid, lesion_centre, size * (0.06, 0.055, 0.05)) & brain
    return {"skull": head & ~brain, "brain": brain & ~ventricles, "ventricles": ventricles & brain,
            "oedema": oedema & ~core, "core": core}


def channel_volume(regions: dict[str, np.ndarray], head: np.ndarray, index: int, seed: int) -> np.ndarray:
    """Channel `index` (int16, z y x): each tissue's contrast, textured, with noise, 0 outside the head."""
    volume = np.zeros(head.shape, dtype=np.float32)
    for name, region in regions.items():
        volume[region] = CONTRAST[name][index]
    volume *= 1.0 + 0.12 * texture(head.shape, 4.0, seed + index)
    volume += 15.0 * np.random.default_rng(seed + 10 + index).normal(size=head.shape).astype(np.float32)
    return np.where(head, np.clip(volume, 1, 32000), 0).astype(np.int16)


def synthetic_channels(shape_xyz: tuple[int, int, int], seed: int = SEED) -> list[np.ndarray]:
    """Four int16 (z, y, x) volumes of a textured head on an exactly-zero background."""
    regions = tissues(tuple(reversed(shape_xyz)))
    head = np.logical_or.reduce(list(regions.values()))
    return [channel_volume(regions, head, index, seed) for index in range(len(CHANNELS))]


def write_atomically(image: sitk.Image, path: Path, compress: bool = False) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial{''.join(path.suffixes)}")
    sitk.WriteImage(image, str(partial), useCompression=compress)
    os.replace(partial, path)


def ensure_synthetic(cache: Path, shape_xyz: tuple[int, int, int]) -> list[Path]:
    """The four NIfTI files (1 mm spacing) of the synthetic case, written once into the cache."""
    folder = cache / f"synthetic_{'x'.join(map(str, shape_xyz))}"
    paths = [folder / f"{name}.nii.gz" for name in CHANNELS]
    if all(p.is_file() for p in paths):
        return paths
    print(f"writing the synthetic {shape_xyz} case into {folder} ...", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    for array, path in zip(synthetic_channels(shape_xyz), paths):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.0, 1.0, 1.0))
        write_atomically(image, path, compress=True)
    return paths


def read_sitk(inputs: Sequence[Path]) -> tuple[sitk.Image, np.ndarray]:
    """The first image (for its grid) and a float32 (C, z, y, x) array of every channel."""
    images = [sitk.ReadImage(str(path)) for path in inputs]
    array = np.stack([sitk.GetArrayFromImage(image).astype(np.float32) for image in images])
    return images[0], array


def zscore_nonzero(array: np.ndarray) -> np.ndarray:
    """Per channel (x - mean) / std over voxels non-zero in any channel; 0 elsewhere (in place)."""
    foreground = np.any(array != 0, axis=0)
    for channel in array:
        values = channel[foreground]
        channel -= np.float32(values.mean(dtype=np.float64))
        channel /= np.float32(max(float(values.std(dtype=np.float64)), 1e-8))
        channel[~foreground] = 0
    return array


def write_labels(labels: np.ndarray, reference: sitk.Image, output: Path) -> None:
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(reference)
    sitk.WriteImage(image, str(output), useCompression=True)


def window_counts(foreground: np.ndarray, patch: int) -> tuple[int, int]:
    """Windows (patch^3, the benchmark's overlap) holding some foreground voxel, and all windows."""
    grid = window_grid(foreground.shape, (patch,) * 3, OVERLAP)
    return sum(1 for window in grid if foreground[window].any()), len(grid)


def shared_input(settings: Settings, relative: str, what: str) -> Path | None:
    """A file or folder of the shared test data; None, with a message, where it is missing."""
    path = settings.data_root / relative
    if not path.exists():
        print(f"\n{what} not found at {path}; give --data-dir or set TEST_DATA_DIR to the shared data folder. "
              "Skipped.")
        return None
    return path


def brain_input(settings: Settings, work: Path) -> Path | None:
    """The real brain MR, cropped in plane for --quick; None when the data folder lacks it."""
    path = shared_input(settings, BRAIN_FILE, "real brain MR")
    if path is None or not settings.quick:
        return path
    image = sitk.ReadImage(str(path))
    start = (image.GetSize()[0] - QUICK_BRAIN_CROP_XY) // 2
    stop = start + QUICK_BRAIN_CROP_XY
    cropped = work / "brain_quick.nrrd"
    sitk.WriteImage(image[start:stop, start:stop, :], str(cropped))
    return cropped


def ct_input(settings: Settings, work: Path) -> Path | None:
    """The real CT series folder; for --quick an in-plane crop of it (air above the body, and the
    body) as NRRD, on the series' own spacing, direction and grid position; None when the data
    folder lacks it."""
    folder = shared_input(settings, CT_SERIES, "real CT series")
    if folder is None or not settings.quick:
        return folder
    scan = read_scan([folder])
    rows = slice(QUICK_CT_FIRST_ROW, QUICK_CT_FIRST_ROW + QUICK_CT_CROP_XY)
    image = sitk.GetImageFromArray(scan.array_zyx[0, :, rows, :QUICK_CT_CROP_XY])
    geometry = scan.reference
    image.SetSpacing(geometry.GetSpacing())
    image.SetDirection(geometry.GetDirection())
    image.SetOrigin(geometry.TransformIndexToPhysicalPoint((0, QUICK_CT_FIRST_ROW, 0)))   # the crop's first voxel
    cropped = work / "ct_quick.nrrd"
    sitk.WriteImage(image, str(cropped))
    return cropped
