"""What a model saw in training, and whether a scan looks like it: the input profile.

The trainer measures every training subject as it reads it (`scan_stats`): per channel, the 0.5th,
50th and 99.5th percentiles of its non-zero voxels as read (before preprocessing), its spacing and
its orientation. `build_profile` keeps, per percentile and spacing axis, the range over the
subjects, and the orientations seen; export stores that as `provenance.input_profile`. Before a
scan is predicted, `deviations` holds the scan's own figures against it:

- a percentile outside its training range by more than the range's width (at least a quarter of
  the channel's whole training range, so that a narrow cohort does not make every other scan of
  the same kind "far"): a brain MR (nothing below 0) given to a CT model (air at -1000 HU);
- a spacing under half or over twice the training range on any axis;
- an orientation (the direction of each array axis, as DICOM's letters) never seen in training.

The runtime warns in one line naming what is off, or refuses with `--strict-input`. A model without
a profile (one packaged from ONNX, or exported before profiles) is not checked.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from runtime.errors import ManifestError
from runtime.validation import is_number

PERCENTILES = (0.5, 50.0, 99.5)
NAMES = ("p0_5", "p50", "p99_5")
WORDS = {"p0_5": "0.5th percentile", "p50": "median", "p99_5": "99.5th percentile"}
# Voxels measured per channel at most: every k-th voxel of a larger scan.
MAX_SAMPLE = 2_000_000
MIN_WIDTH_SHARE = 0.25
SPACING_FACTOR = 2.0


@dataclass(frozen=True)
class ScanStats:
    """One scan's figures: per channel the PERCENTILES of its non-zero voxels (NaN for a channel
    with none), its spacing (mm, array order) and its orientation letters."""

    percentiles: tuple[tuple[float, ...], ...]
    spacing: tuple[float, ...]
    orientation: str


def orientation_of(direction: Sequence[float], dimension: int) -> str:
    """DICOM letters of the direction each ITK index axis (x first) increases toward, e.g. LPS."""
    matrix = np.asarray(direction, dtype=np.float64).reshape(dimension, dimension)
    letters = ("LR", "PA", "SI")[:dimension]
    code = ""
    for axis in range(dimension):
        column = matrix[:, axis]
        major = int(np.argmax(np.abs(column)))
        code += letters[major][0] if column[major] > 0 else letters[major][1]
    return code


def scan_stats(array: np.ndarray, spacing: Sequence[float], direction: Sequence[float]) -> ScanStats:
    """The figures of a scan (C, *spatial) as read, on at most MAX_SAMPLE voxels per channel."""
    step = max(1, math.ceil(array[0].size / MAX_SAMPLE))
    rows = []
    for channel in array:
        values = channel.reshape(-1)[::step]
        values = values[values != 0]
        rows.append(tuple(float(v) for v in np.percentile(values, PERCENTILES)) if values.size
                    else (math.nan,) * len(PERCENTILES))
    return ScanStats(tuple(rows), tuple(float(s) for s in spacing), orientation_of(direction, array.ndim - 1))


def build_profile(stats: Sequence[ScanStats], channels: Sequence[str]) -> dict[str, Any]:
    """The JSON profile of the training subjects' figures."""
    profile: dict[str, Any] = {"subjects": len(stats), "channels": {}}
    for index, name in enumerate(channels):
        ranges = {}
        for position, key in enumerate(NAMES):
            values = [s.percentiles[index][position] for s in stats if not math.isnan(s.percentiles[index][position])]
            if values:
                ranges[key] = [round(min(values), 4), round(max(values), 4)]
        profile["channels"][name] = ranges
    axes = len(stats[0].spacing) if stats else 0
    profile["spacing_mm"] = [[round(min(s.spacing[a] for s in stats), 6), round(max(s.spacing[a] for s in stats), 6)]
                             for a in range(axes)]
    profile["orientations"] = sorted({s.orientation for s in stats})
    return profile


def _pair(value: Any, where: str) -> tuple[float, float]:
    ok = isinstance(value, list) and len(value) == 2 and all(is_number(v) for v in value) and value[0] <= value[1]
    if not ok:
        raise ManifestError(f"provenance.input_profile.{where} must be [low, high] finite numbers, low <= high; "
                            f"got {value!r}. Re-export the model.")
    return float(value[0]), float(value[1])


@dataclass(frozen=True)
class Profile:
    channels: Mapping[str, Mapping[str, tuple[float, float]]]
    spacing: tuple[tuple[float, float], ...]
    orientations: tuple[str, ...]


def parse_profile(data: Any, channels: Sequence[str]) -> Profile:
    """The profile of a manifest's provenance, every value checked (ManifestError naming it)."""
    if not isinstance(data, dict) or not isinstance(data.get("channels"), dict):
        raise ManifestError("provenance.input_profile must be an object with a channels object; re-export the model.")
    parsed = {}
    for name in channels:
        ranges = data["channels"].get(name, {})
        if not isinstance(ranges, dict):
            raise ManifestError(f"provenance.input_profile.channels.{name} must be an object; re-export the model.")
        parsed[name] = {key: _pair(ranges[key], f"channels.{name}.{key}") for key in NAMES if key in ranges}
    spacing = data.get("spacing_mm", [])
    if not isinstance(spacing, list) or len(spacing) > 3:
        raise ManifestError("provenance.input_profile.spacing_mm must be a list of at most 3 [low, high] pairs; "
                            "re-export the model.")
    orientations = data.get("orientations", [])
    if not isinstance(orientations, list) or not all(isinstance(o, str) for o in orientations):
        raise ManifestError("provenance.input_profile.orientations must be a list of strings; re-export the model.")
    return Profile(parsed, tuple(_pair(v, f"spacing_mm[{i}]") for i, v in enumerate(spacing)), tuple(orientations))


def deviations(profile: Profile, stats: ScanStats, channels: Sequence[str]) -> list[str]:
    """What about the scan lies far outside what the model saw in training, in words."""
    found = []
    for index, name in enumerate(channels):
        ranges = profile.channels.get(name, {})
        if not ranges:
            continue
        whole = max(high for _, high in ranges.values()) - min(low for low, _ in ranges.values())
        for position, key in enumerate(NAMES):
            value = stats.percentiles[index][position]
            if key not in ranges or math.isnan(value):
                continue
            low, high = ranges[key]
            width = max(high - low, MIN_WIDTH_SHARE * whole)
            if value < low - width or value > high + width:
                found.append(f"{name} {WORDS[key]} {value:.4g} (training {low:.4g} to {high:.4g})")
    if profile.spacing and len(profile.spacing) == len(stats.spacing):
        for axis, (value, (low, high)) in enumerate(zip(stats.spacing, profile.spacing)):
            if value < low / SPACING_FACTOR or value > high * SPACING_FACTOR:
                found.append(f"spacing {value:.3g} mm on axis {axis} (training {low:.3g} to {high:.3g})")
    if profile.orientations and stats.orientation not in profile.orientations:
        found.append(f"orientation {stats.orientation} (training {', '.join(profile.orientations)})")
    return found
