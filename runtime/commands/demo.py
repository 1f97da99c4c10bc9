"""A synthetic scan with known bright structures, so the runtime can be tried with no data at hand.

The phantom is an anisotropic volume (3 × 1.2 × 1.2 mm) with a non-identity direction, as real scans
have: a soft-tissue ellipsoid body on a zero background, and bright spheres inside it whose exact
extent is the ground truth.
"""
from __future__ import annotations

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
