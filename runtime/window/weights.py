"""Blending weight maps: how much each voxel of a patch counts when windows overlap."""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from runtime.window.spec import BLENDINGS

_SIGMA_FRACTION = 1.0 / 8.0


def blending_weights(patch: Sequence[int], blending: str) -> np.ndarray:
    """Weight map of shape `patch`, float32, read-only (it is cached and shared).

    "gaussian": a separable Gaussian with sigma = patch / 8 per axis, centred at (p - 1) / 2,
    scaled to a maximum of 1; values that underflow to 0 are raised to the smallest non-zero
    value so every voxel keeps some weight. "constant": ones. "nnunet": nnU-Net v2's map: the
    Gaussian with sigma = patch / 8 centred at p // 2 (as SciPy's gaussian_filter spreads one
    voxel, cut off 4 sigma from the centre), scaled to a maximum of 10 and rounded to float16,
    zeros raised to the smallest non-zero value. "monai": MONAI's map (compute_importance_map):
    the Gaussian with sigma = patch / 8 centred at (p - 1) / 2, computed in float32, not rescaled,
    every value below 1e-3 raised to 1e-3.
    """
    if blending not in BLENDINGS:
        raise ValueError(f"unknown blending {blending!r}; expected one of {BLENDINGS}")
    patch_key = tuple(int(p) for p in patch)
    if any(p < 1 for p in patch_key):
        raise ValueError(f"patch sizes must be at least 1, got {patch_key}")
    return _cached_weights(patch_key, blending)


@functools.lru_cache(maxsize=16)
def _cached_weights(patch: tuple[int, ...], blending: str) -> np.ndarray:
    if blending == "constant":
        weights = np.ones(patch, dtype=np.float32)
    elif blending == "nnunet":
        weights = _nnunet_gaussian(patch)
    elif blending == "monai":
        weights = _monai_gaussian(patch)
    else:
        weights = _gaussian(patch)
    weights.flags.writeable = False
    return weights


def _gaussian(patch: tuple[int, ...]) -> np.ndarray:
    weights = np.ones((), dtype=np.float64)
    for size in patch:
        weights = np.multiply.outer(weights, _gaussian_1d(size))
    return _no_zeros(weights.astype(np.float32))


def _no_zeros(weights: np.ndarray) -> np.ndarray:
    positive = weights[weights > 0]
    weights[weights == 0] = positive.min()
    return weights


def _nnunet_gaussian(patch: tuple[int, ...]) -> np.ndarray:
    weights = np.ones((), dtype=np.float64)
    for size in patch:
        weights = np.multiply.outer(weights, _spread_1d(size))
    weights /= weights.max() / 10.0
    return _no_zeros(weights.astype(np.float16)).astype(np.float32)


def _monai_gaussian(patch: tuple[int, ...]) -> np.ndarray:
    weights = np.ones((), dtype=np.float32)
    for size in patch:
        offsets = np.arange(-(size - 1) / 2.0, (size - 1) / 2.0 + 1, dtype=np.float32)
        sigma = np.float32(size * _SIGMA_FRACTION)
        axis = np.exp(offsets ** 2 / (np.float32(-2) * sigma ** 2)).astype(np.float32)
        weights = np.multiply.outer(weights, axis).astype(np.float32)
    return np.maximum(weights, max(float(weights.min()), 1e-3)).astype(np.float32)


def _spread_1d(size: int) -> np.ndarray:
    """One voxel at size // 2 spread by a sampled Gaussian of sigma size / 8 cut off at
    int(4 sigma + 0.5) voxels, each value as SciPy's gaussian_filter1d gives it."""
    sigma = size * _SIGMA_FRACTION
    radius = int(4.0 * sigma + 0.5)
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 / (sigma * sigma) * taps ** 2)
    kernel /= kernel.sum()
    offsets = np.arange(size) - size // 2
    values = np.zeros(size, dtype=np.float64)
    inside = np.abs(offsets) <= radius
    values[inside] = kernel[offsets[inside] + radius]
    return values


def _gaussian_1d(size: int) -> np.ndarray:
    centre = (size - 1) / 2.0
    sigma = size * _SIGMA_FRACTION
    offsets = np.arange(size, dtype=np.float64) - centre
    values = np.exp(-0.5 * (offsets / sigma) ** 2)
    return values / values.max()
