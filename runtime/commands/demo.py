"""A synthetic scan and a synthetic slide with known structures, so the runtime can be tried with
no data at hand.

The phantom is an anisotropic volume (3 × 1.2 × 1.2 mm) with a non-identity direction, as real scans
have: a soft-tissue ellipsoid body on a zero background, and bright spheres inside it whose exact
extent is the ground truth. The slide is H&E-like tissue on glass: a pink stroma rectangle holding
purple nuclei, written as a tiled pyramidal TIFF with its resolution, as scanners write slides.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

SHAPE_ZYX = (40, 160, 176)
SPACING_ZYX = (3.0, 1.2, 1.2)
DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
SPHERES_MM = (((60.0, 90.0, 95.0), 14.0), ((50.0, 130.0, 80.0), 9.0), ((75.0, 110.0, 140.0), 11.0))


def _physical_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axes = [np.arange(n) * s for n, s in zip(SHAPE_ZYX, SPACING_ZYX)]
    return np.meshgrid(*axes, indexing="ij")


def phantom(seed: int = 0) -> tuple[sitk.Image, sitk.Image]:
    """The phantom image (int16, CT-like values) and its truth label map (uint8)."""
    z, y, x = _physical_grid()
    centre = [(n - 1) * s / 2 for n, s in zip(SHAPE_ZYX, SPACING_ZYX)]
    body = ((z - centre[0]) / 55) ** 2 + ((y - centre[1]) / 85) ** 2 + ((x - centre[2]) / 95) ** 2 <= 1
    truth = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    for (cz, cy, cx), radius in SPHERES_MM:
        truth[((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) <= radius ** 2] = 1
    truth &= body
    rng = np.random.default_rng(seed)
    values = np.where(body, 40.0, 0.0) + np.where(truth == 1, 120.0, 0.0)
    values += np.where(body, rng.normal(0.0, 12.0, SHAPE_ZYX), 0.0)
    return _on_grid(values.round().astype(np.int16)), _on_grid(truth)


def _on_grid(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(SPACING_ZYX)))
    image.SetDirection(DIRECTION)
    image.SetOrigin((120.0, 95.0, -60.0))
    return image


GLASS = (242, 242, 240)
NUCLEI = (110, 70, 160)
STROMA = (225, 140, 190)
SLIDE_MPP = 0.5
# The slide phantom's truth: each tissue class's name and value (0 is glass).
SLIDE_CLASSES = {"nuclei": 1, "stroma": 2}


def slide_phantom(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(height, width, 3) uint8 RGB: glass with a stroma rectangle holding nuclei discs, and the
    truth (height, width) class indices (0 glass, then SLIDE_CLASSES)."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((height, width), dtype=np.uint8)
    top, left = height // 5, width // 6
    truth[top:height - top, left:width // 2 + width // 5] = 2
    rows, cols = np.ogrid[:height, :width]
    radius = max(3, min(height, width) // 40)
    for _ in range(12):
        cy = rng.integers(top + radius, height - top - radius)
        cx = rng.integers(left + radius, width // 2 + width // 5 - radius)
        truth[(rows - cy) ** 2 + (cols - cx) ** 2 <= radius ** 2] = 1
    colours = np.array([GLASS, NUCLEI, STROMA], dtype=np.int16)
    image = colours[truth] + rng.integers(-6, 7, size=(height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), truth


def write_slide(path: Path, image: np.ndarray, mpp: float | None = SLIDE_MPP, levels: int = 3,
                tile: int = 256) -> Path:
    """`image` as a tiled pyramidal TIFF (one page per level, each half the one before, zlib),
    with its resolution in the TIFF tags when `mpp` is given."""
    import tifffile

    with tifffile.TiffWriter(path, bigtiff=False) as writer:
        for level in range(levels):
            step = 2 ** level
            extra: dict[str, Any] = {}
            if mpp is not None:
                extra = {"resolution": (1e4 / (mpp * step), 1e4 / (mpp * step)), "resolutionunit": "CENTIMETER"}
            writer.write(np.ascontiguousarray(image[::step, ::step]), tile=(tile, tile), compression="zlib",
                         photometric="rgb", subfiletype=1 if level else 0, **extra)
    return path
