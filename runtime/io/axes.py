"""Axis order conversion between SimpleITK's arrays (z, y, x) and a model's own order.

This is the one place where array axes are reordered: everything before works in `_zyx`, everything
after (preprocessing, windows, the model) in the model's `axis_order`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _is_reversed(axis_order: str) -> bool:
    return axis_order in ("xyz", "xy")


def in_model_order(values_zyx: Sequence, axis_order: str) -> tuple:
    """Per-axis values (a shape, a spacing) given in (z, y, x) order, in the model's order."""
    return tuple(reversed(values_zyx)) if _is_reversed(axis_order) else tuple(values_zyx)


def to_model_axes(array_zyx: np.ndarray, spacing_zyx: Sequence[float], axis_order: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """(C, z, y, x) and its spacing -> the model's order (channels stay first)."""
    if not _is_reversed(axis_order):
        return array_zyx, tuple(spacing_zyx)
    spatial = array_zyx.ndim - 1
    order = (0, *range(spatial, 0, -1))
    return np.ascontiguousarray(array_zyx.transpose(order)), tuple(reversed(spacing_zyx))


def from_model_axes(array: np.ndarray, axis_order: str) -> np.ndarray:
    """(K, *spatial in the model's order) -> (K, z, y, x)."""
    if not _is_reversed(axis_order):
        return array
    spatial = array.ndim - 1
    return np.ascontiguousarray(array.transpose((0, *range(spatial, 0, -1))))
