"""What a model saw in training, and whether a scan looks like it: the input profile.

The trainer measures every training subject as it reads it (`scan_stats`): per channel, the 0.5th,
50th and 99.5th percentiles of its non-zero voxels as read (before preprocessing) and after the
model's preprocessing, its spacing and its orientation. `build_profile` keeps, per percentile and
spacing axis, the range over the subjects, and the orientations seen; export stores that as
`provenance.input_profile` (the preprocessed ranges under `preprocessed`). Before a scan is
predicted, `deviations` holds the scan's own figures as read against it; where those pass, once
the scan is preprocessed, `preprocessed_deviations` holds what the model is actually given against
the training subjects' figures after preprocessing (a scan whose foreground, crop or
standardisation lands it where training never was, though it looks like training as read):

- a percentile outside its training range by more than the range's width (at least a quarter of
  the channel's whole training range, so that a narrow cohort does not make every other scan of
  the same kind "far"): a brain MR (nothing below 0) given to a CT model (air at -1000 HU);
- a spacing under half or over twice the training range on any axis;
- an orientation (the direction of each array axis, as DICOM's letters) never seen in training.

A channel whose first intensity step with a scale standardises it by the scan's own values
(`zscore`, `histogram_standardise`, a `rescale` from the image's own range or percentiles) is in
each scan's own units as read (an MR's are the scanner's): where the profile has figures after
preprocessing and they will be checked (not for a 2D model run slice by slice), it is held as read
to the share of its 0.5th to 99.5th percentile range that lies below 0 alone, which no scale
changes (about a half for a CT's air at -1000, none for an MR, all of an inverted MR; a breast MR
scaled by 20 gives the same labels, and was warned of as far outside training), and its scale is
left to the figures after preprocessing.

A model whose preprocessing starts with `reorient` is measured, in training and in the clinic, on
the scan as that step turns it: its spacing in the turned order and the step's orientation. Its
profile says so (`frame: reoriented`); a profile without it was measured on the scans as read and
is held against scans as read.

The runtime warns in one line naming what is off, or refuses with `--strict-input`. A model without
a profile (one packaged from ONNX, or exported before profiles) is not checked.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Collection, Mapping, Sequence

import numpy as np

from runtime.errors import ManifestError
from runtime.preprocess.orient import Reorientation, reorient_code
from runtime.preprocess.steps import Step
from runtime.validation import is_number

PERCENTILES = (0.5, 50.0, 99.5)
NAMES = ("p0_5", "p50", "p99_5")
WORDS = {"p0_5": "0.5th percentile", "p50": "median", "p99_5": "99.5th percentile"}
# Voxels measured per channel at most: every k-th voxel of a larger scan.
MAX_SAMPLE = 2_000_000
MIN_WIDTH_SHARE = 0.25
FRAMES = ("as_read", "reoriented")
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


def scan_stats(array: np.ndarray, spacing: Sequence[float], direction: Sequence[float],
               steps: Sequence[Any] = ()) -> ScanStats:
    """The figures of a scan (C, *spatial) as read, on at most MAX_SAMPLE voxels per channel. Where
    `steps` (a model's preprocessing) start with `reorient`, the spacing and orientation are those
    of the scan turned so, as the model is given it: a scan stored in another order is no stranger."""
    dims = array.ndim - 1
    code = reorient_code(steps) if dims == 3 else None
    if code is not None:
        return ScanStats(channel_percentiles(array), Reorientation.of(direction, code).spacing(spacing), code)
    return ScanStats(channel_percentiles(array), tuple(float(s) for s in spacing), orientation_of(direction, dims))


def channel_percentiles(array: np.ndarray) -> tuple[tuple[float, ...], ...]:
    """Per channel of `array` (C, *spatial) the PERCENTILES of its non-zero voxels, on at most
    MAX_SAMPLE voxels each (NaN for a channel with none)."""
    step = max(1, math.ceil(array[0].size / MAX_SAMPLE))
    rows = []
    for channel in array:
        values = channel.reshape(-1)[::step]
        values = values[values != 0]
        rows.append(tuple(float(v) for v in np.percentile(values, PERCENTILES)) if values.size
                    else (math.nan,) * len(PERCENTILES))
    return tuple(rows)


def _ranges(percentiles: Sequence[tuple[tuple[float, ...], ...]], channels: Sequence[str]) -> dict[str, Any]:
    """Per channel and percentile, [lowest, highest] over the subjects' figures."""
    found: dict[str, Any] = {}
    for index, name in enumerate(channels):
        ranges = {}
        for position, key in enumerate(NAMES):
            values = [row[index][position] for row in percentiles if not math.isnan(row[index][position])]
            if values:
                ranges[key] = [round(min(values), 4), round(max(values), 4)]
        found[name] = ranges
    return found


def build_profile(stats: Sequence[ScanStats], channels: Sequence[str],
                  preprocessed: Sequence[tuple[tuple[float, ...], ...]] = (), reoriented: bool = False) -> dict[str, Any]:
    """The JSON profile of the training subjects' figures, with the ranges of their figures after
    preprocessing (`channel_percentiles` of each) where given; `reoriented`: the spacings and
    orientations are of the scans as a first reorient step turned them (`frame`)."""
    profile: dict[str, Any] = {"subjects": len(stats), "channels": _ranges([s.percentiles for s in stats], channels)}
    if reoriented:
        profile["frame"] = "reoriented"
    if preprocessed:
        profile["preprocessed"] = _ranges(preprocessed, channels)
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
    preprocessed: Mapping[str, Mapping[str, tuple[float, float]]] = field(default_factory=dict)
    frame: str = "as_read"          # or "reoriented": spacings and orientations of the scans as turned


def _channel_ranges(data: Any, channels: Sequence[str], where: str) -> dict[str, dict[str, tuple[float, float]]]:
    if not isinstance(data, dict):
        raise ManifestError(f"provenance.input_profile.{where} must be an object; re-export the model.")
    parsed = {}
    for name in channels:
        ranges = data.get(name, {})
        if not isinstance(ranges, dict):
            raise ManifestError(f"provenance.input_profile.{where}.{name} must be an object; re-export the model.")
        parsed[name] = {key: _pair(ranges[key], f"{where}.{name}.{key}") for key in NAMES if key in ranges}
    return parsed


def parse_profile(data: Any, channels: Sequence[str]) -> Profile:
    """The profile of a manifest's provenance, every value checked (ManifestError naming it)."""
    if not isinstance(data, dict) or not isinstance(data.get("channels"), dict):
        raise ManifestError("provenance.input_profile must be an object with a channels object; re-export the model.")
    parsed = _channel_ranges(data["channels"], channels, "channels")
    preprocessed = _channel_ranges(data.get("preprocessed", {}), channels, "preprocessed")
    spacing = data.get("spacing_mm", [])
    if not isinstance(spacing, list) or len(spacing) > 3:
        raise ManifestError("provenance.input_profile.spacing_mm must be a list of at most 3 [low, high] pairs; "
                            "re-export the model.")
    orientations = data.get("orientations", [])
    if not isinstance(orientations, list) or not all(isinstance(o, str) for o in orientations):
        raise ManifestError("provenance.input_profile.orientations must be a list of strings; re-export the model.")
    frame = data.get("frame", "as_read")
    if frame not in FRAMES:
        raise ManifestError(f"provenance.input_profile.frame must be one of {', '.join(FRAMES)}, got {frame!r}; "
                            "re-export the model.")
    return Profile(parsed, tuple(_pair(v, f"spacing_mm[{i}]") for i, v in enumerate(spacing)), tuple(orientations),
                   MappingProxyType(preprocessed), frame)


def deviations(profile: Profile, stats: ScanStats, channels: Sequence[str], steps: Sequence[Step] = ()) -> list[str]:
    """What about the scan lies far outside what the model saw in training, in words. The channels
    its preprocessing `steps` standardise by the scan's own values (`own_units`; `steps` empty
    where no check after preprocessing follows) are held as read to the share of their range below 0
    alone (`_zero_moved`), their scale left to the figures after preprocessing, where the profile
    has them."""
    own = {index for index in own_units(steps, len(channels)) if profile.preprocessed.get(channels[index])}
    found = _far(profile.channels, stats.percentiles, channels, own)
    found += _zero_moved(profile.channels, stats.percentiles, channels, own)
    if profile.spacing and len(profile.spacing) == len(stats.spacing):
        for axis, (value, (low, high)) in enumerate(zip(stats.spacing, profile.spacing)):
            if value < low / SPACING_FACTOR or value > high * SPACING_FACTOR:
                name = "zyx"[3 - len(stats.spacing):][axis]
                found.append(f"spacing {value:.3g} mm on axis {axis} ({name}) (training {low:.3g} to {high:.3g})")
    seen = stats.orientation[:len(profile.orientations[0])] if profile.orientations else ""   # a volume's slices
    if profile.orientations and seen not in profile.orientations:
        found.append(f"orientation {seen} (training {', '.join(profile.orientations)})")
    return found


def preprocessed_deviations(profile: Profile, percentiles: tuple[tuple[float, ...], ...],
                            channels: Sequence[str]) -> list[str]:
    """What about the preprocessed scan's figures (`channel_percentiles`) lies far outside the
    training subjects' after preprocessing, in words; nothing for a profile without them."""
    return [f"{text} after preprocessing" for text in _far(profile.preprocessed, percentiles, channels)]


# Steps that set a channel's intensities from the scan's own (its mean and spread, its percentiles),
# and every step that reads a channel's intensities; bounds of these that say no scale (0, or none).
_OWN_UNITS = ("zscore", "histogram_standardise")
_INTENSITY = ("threshold", "clip", "rescale", "normalize", "histogram_standardise", "foreground", "zscore")
_BOUND_KEYS = ("min", "max", "in_min", "in_max")
# How far the share of a scan's range below 0 may lie outside the shares training's ranges allow.
ZERO_SLACK = 0.05


def own_units(steps: Sequence[Step], count: int) -> set[int]:
    """The channels (of `count`) whose first intensity step with a scale standardises them by the
    scan's own values (`zscore`, `histogram_standardise`, a `rescale` from the image's own range or
    percentiles): as read, they are in units of each scan's own. A fixed step first (a `clip` at
    HU, a `normalize`) makes the values as read count; a step whose bounds say no scale (a `clip`
    or `threshold` at 0, a `foreground` without bounds) decides nothing."""
    decided: dict[int, bool] = {}
    for step in steps:
        bounds = [step.params.get(key) for key in _BOUND_KEYS]
        if step.name not in _INTENSITY or (step.name in ("clip", "threshold", "foreground")
                                           and all(b is None or b == 0 for b in bounds)):
            continue
        own = step.name in _OWN_UNITS or (step.name == "rescale" and (step.params.get("percentiles") is not None
                                                                     or (bounds[2] in (None, 0) and bounds[3] is None)))
        chosen = step.params.get("channels")
        for index in range(count) if chosen is None else [c for c in chosen if 0 <= c < count]:
            decided.setdefault(index, own)
    return {index for index, own in decided.items() if own}


def _below_zero(low: float, high: float) -> float:
    """The share of the range from `low` to `high` (a 0.5th and a 99.5th percentile) that lies below
    0: the same for a scan whatever its scale, 0 for an MR (nothing below its zero background), about
    a half for a CT (air at -1000), 1 for an MR whose contrast was inverted."""
    return min(1.0, max(0.0, -low / (high - low))) if high > low else (1.0 if high < 0 else 0.0)


def _zero_moved(profile: Mapping[str, Mapping[str, tuple[float, float]]], percentiles: tuple[tuple[float, ...], ...],
                channels: Sequence[str], own: Collection[int]) -> list[str]:
    """For the `own` channels (read in each scan's own units, whose scale says nothing), the share
    of the scan's 0.5th to 99.5th percentile range below 0 (`_below_zero`) held to training's, the
    least and most any subject within its ranges can have, by more than ZERO_SLACK: a CT given to an
    MR model, an MR given to a CT model, or an MR whose contrast was inverted."""
    found = []
    for index in own:
        name, ranges, values = channels[index], profile.get(channels[index], {}), percentiles[index]
        if "p0_5" not in ranges or "p99_5" not in ranges or any(map(math.isnan, values)):
            continue
        corners = [_below_zero(low, high) for low in ranges["p0_5"] for high in ranges["p99_5"]]
        share = _below_zero(values[0], values[-1])
        if share < min(corners) - ZERO_SLACK or share > max(corners) + ZERO_SLACK:
            found.append(f"{name} 0.5th to 99.5th percentile {values[0]:.4g} to {values[-1]:.4g}, {share:.0%} of it "
                         f"below 0 (training {min(corners):.0%} to {max(corners):.0%})")
    return found


def _far(profile: Mapping[str, Mapping[str, tuple[float, float]]], percentiles: tuple[tuple[float, ...], ...],
         channels: Sequence[str], skipped: Collection[int] = ()) -> list[str]:
    """Each channel percentile outside its training range by more than the range's width (at least
    MIN_WIDTH_SHARE of the channel's whole training range); the `skipped` channels left out."""
    found = []
    for index, name in enumerate(channels):
        ranges = profile.get(name, {})
        if not ranges or index in skipped:
            continue
        whole = max(high for _, high in ranges.values()) - min(low for low, _ in ranges.values())
        for position, key in enumerate(NAMES):
            value = percentiles[index][position]
            if key not in ranges or math.isnan(value):
                continue
            low, high = ranges[key]
            width = max(high - low, MIN_WIDTH_SHARE * whole)
            if value < low - width or value > high + width:
                found.append(f"{name} {WORDS[key]} {value:.4g} (training {low:.4g} to {high:.4g})")
    return found
