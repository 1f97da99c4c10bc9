"""Intensity steps: threshold, clip, rescale, zscore, normalize, histogram_standardise, and foreground.

The first six work on one channel at a time, in place on `volume.array` (the pipeline hands them
a private float32 copy), and leave the grid, foreground and mask alone. `foreground` only reads
the image: it replaces the foreground map with the voxels whose intensity lies in a range.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Mapping, Sequence

import numpy as np

from runtime.errors import InputError
from runtime.parallel import for_each
from runtime.preprocess.volume import Volume

STD_EPS = 1e-8
RANGE_EPS = 1e-8


def selected_channels(volume: Volume, params: Mapping[str, Any]) -> list[int]:
    """The channel indices a step applies to: `params["channels"]`, or all channels."""
    count = volume.array.shape[0]
    chosen = params.get("channels")
    if chosen is None:
        return list(range(count))
    missing = [c for c in chosen if c >= count]
    if missing:
        raise InputError(
            f"channels {missing} do not exist: the image has {count} channel(s), indices 0..{count - 1}; "
            "fix the step's `channels` or give the image the channels the model expects."
        )
    return list(chosen)


def _bound(value: float | None, default: float) -> float:
    return default if value is None else float(value)


def threshold(volume: Volume, params: Mapping[str, Any]) -> tuple[Volume, None]:
    """Set voxels outside [min, max] to 0."""
    low, high = _bound(params["min"], -np.inf), _bound(params["max"], np.inf)
    for c in selected_channels(volume, params):
        channel = volume.array[c]
        channel[(channel < low) | (channel > high)] = 0
    return volume, None


def foreground(volume: Volume, params: Mapping[str, Any]) -> tuple[Volume, None]:
    """The foreground becomes the voxels whose value lies in [min, max] in any selected channel (the
    foreground it had, where no bound is given), with its holes filled where `fill_holes` is set
    (nnU-Net's non-zero mask)."""
    chosen = selected_channels(volume, params)
    if params["min"] is None and params["max"] is None:
        region = volume.foreground.copy()
    else:
        region = _within(volume, chosen, _bound(params["min"], -np.inf), _bound(params["max"], np.inf))
    if params.get("fill_holes"):
        from scipy.ndimage import binary_fill_holes

        region = binary_fill_holes(region)
    return replace(volume, foreground=region), None


def _within(volume: Volume, chosen: Sequence[int], low: float, high: float) -> np.ndarray:
    region = np.zeros(volume.spatial_shape, dtype=bool)
    for c in chosen:
        channel = volume.array[c]
        inside = np.greater_equal(channel, low)
        inside &= np.less_equal(channel, high)
        region |= inside
    if not region.any():
        raise InputError(
            f"foreground: no voxel of channel(s) {list(chosen)} lies within [{low:g}, {high:g}], so the image holds "
            "no foreground; check that the right image was given and that the step's bounds suit its intensities."
        )
    return region


def clip(volume: Volume, params: Mapping[str, Any]) -> tuple[Volume, None]:
    """Clamp voxels to [min, max]."""
    low, high = _bound(params["min"], -np.inf), _bound(params["max"], np.inf)
    for c in selected_channels(volume, params):
        np.clip(volume.array[c], low, high, out=volume.array[c])
    return volume, None


def _input_range(channel: np.ndarray, params: Mapping[str, Any]) -> tuple[float, float]:
    if params["percentiles"] is not None:
        low, high = np.percentile(channel, params["percentiles"])
        return float(low), float(high)
    low = params["in_min"] if params["in_min"] is not None else channel.min()
    high = params["in_max"] if params["in_max"] is not None else channel.max()
    return float(low), float(high)


def rescale(volume: Volume, params: Mapping[str, Any]) -> tuple[Volume, None]:
    """Map [in_min, in_max] linearly onto [out_min, out_max] and clip to the output range."""
    out_min, out_max = float(params["out_min"]), float(params["out_max"])
    for c in selected_channels(volume, params):
        channel = volume.array[c]
        in_min, in_max = _input_range(channel, params)
        scale = (out_max - out_min) / max(in_max - in_min, RANGE_EPS)
        channel -= np.float32(in_min)
        channel *= np.float32(scale)
        channel += np.float32(out_min)
        np.clip(channel, out_min, out_max, out=channel)
    return volume, None


def _region(volume: Volume, region: str, step: str = "zscore") -> np.ndarray | None:
    """The boolean region a step's statistics come from; None means the whole image."""
    if region == "whole":
        return None
    if region == "mask" and volume.mask is None:
        raise InputError(
            f"{step} with region 'mask' needs a mask, but none was given; pass one (runtime predict --mask, or a "
            "mask column of a --csv table) or use region 'whole' or 'nonzero'."
        )
    chosen = volume.foreground if region == "nonzero" else volume.mask
    if not chosen.any():
        what = "the image has no non-zero voxel" if region == "nonzero" else "the mask is empty"
        raise InputError(f"{step} with region {region!r} has nothing to normalise over: {what}.")
    return chosen


def zscore(volume: Volume, params: Mapping[str, Any]) -> tuple[Volume, None]:
    """(x - mean) / max(std, 1e-8) over the region; outside a nonzero/mask region voxels become 0.

    Channels are normalised side by side, one thread per core (numpy releases the GIL).
    """
    region = _region(volume, params["region"])
    outside = None if region is None else ~region

    def normalise(c: int) -> None:
        channel = volume.array[c]
        mean, std = _mean_std(channel if region is None else channel[region])
        if not (math.isfinite(mean) and math.isfinite(std)):
            raise InputError(f"zscore: channel {c}'s intensities are too large to normalise in single precision "
                             f"(mean {mean:.3g}, standard deviation {std:.3g}); check the image's intensity scaling "
                             "(a NIfTI scl_slope, say).")
        channel -= np.float32(mean)
        channel /= np.float32(max(std, STD_EPS))
        if outside is not None:
            np.copyto(channel, 0, where=outside)

    for_each(normalise, selected_channels(volume, params))
    return volume, None


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and (population) standard deviation, summed in float64; `values` may be a temporary
    or a channel of the image, which is left unchanged."""
    mean = float(values.mean(dtype=np.float64))
    deviations = np.subtract(values, np.float32(mean), dtype=np.float32)
    with np.errstate(over="ignore"):  # an overflow gives an infinite deviation, which the caller refuses
        np.square(deviations, out=deviations)
    return mean, math.sqrt(float(deviations.mean(dtype=np.float64)))


def normalize(volume: Volume, params: Mapping[str, Any]) -> tuple[Volume, None]:
    """(x - mean[c]) / std[c] per channel with the given statistics (a slide model's training
    set's, say), the same for every image."""
    for c, (mean, std) in enumerate(zip(params["mean"], params["std"])):
        channel = volume.array[c]
        channel -= np.float32(mean)
        channel /= np.float32(std)
    return volume, None


# Landmarks are learned on this scale: each training image's first landmark goes to 0, its last to 100.
STANDARD_SCALE = (0.0, 100.0)
# Voxels mapped per block, so that mapping a channel needs no float64 copy of it whole.
MAP_BLOCK_VOXELS = 1 << 22


def image_landmarks(volume: Volume, params: Mapping[str, Any]) -> list[np.ndarray]:
    """Each selected channel's intensities at `params["percentiles"]` over the step's region."""
    region = _region(volume, params["region"], "histogram_standardise")
    found = []
    for c in selected_channels(volume, params):
        channel = volume.array[c]
        with np.errstate(invalid="ignore"):
            values = np.percentile(channel if region is None else channel[region], params["percentiles"])
        if not np.all(np.isfinite(values)):
            raise InputError(f"histogram_standardise: channel {c} holds values that are not finite numbers; "
                             "check the image's intensity scaling.")
        found.append(values)
    return found


def standard_landmarks(per_image: Sequence[np.ndarray]) -> list[float]:
    """One channel's standard landmarks from its landmarks in each training image (Nyul and Udupa):
    each image's landmarks mapped linearly so its first lands on 0 and its last on 100, then averaged.
    An image whose landmarks are all equal says nothing about a histogram's shape and is left out
    (`trainer landmarks` refuses one first, naming its subject)."""
    low, high = STANDARD_SCALE
    scaled = [low + (values - values[0]) * (high - low) / (values[-1] - values[0])
              for values in per_image if values[-1] > values[0]]
    if not scaled:
        raise InputError("histogram_standardise: every image is constant over the step's region, so no landmarks "
                         "can be learned; check the images and the region.")
    return [float(v) for v in np.mean(scaled, axis=0)]


def histogram_standardise(volume: Volume, params: Mapping[str, Any]) -> tuple[Volume, None]:
    """Map each selected channel piecewise linearly from its own landmarks (intensities at the step's
    percentiles over its region) onto the step's learned landmarks; beyond the first and last landmark
    the end pieces continue straight (`_map_in_place`)."""
    chosen = selected_channels(volume, params)
    if len(params["landmarks"]) != len(chosen):
        raise InputError(f"histogram_standardise has {len(params['landmarks'])} landmark list(s) for {len(chosen)} "
                         "channel(s); give one list per channel the step applies to.")
    own = image_landmarks(volume, params)

    def standardise(index: int) -> None:
        source, target = _distinct(own[index], np.asarray(params["landmarks"][index], dtype=np.float64), chosen[index])
        _map_in_place(volume.array[chosen[index]], source, target, chosen[index])

    for_each(standardise, list(range(len(chosen))))
    return volume, None


def _distinct(source: np.ndarray, target: np.ndarray, channel: int) -> tuple[np.ndarray, np.ndarray]:
    """The landmark pairs with equal image landmarks merged into one (their targets averaged), so that
    the image's landmarks increase strictly; a channel with a single distinct landmark is refused."""
    values, groups = np.unique(source, return_inverse=True)
    if len(values) < 2:
        raise InputError(f"histogram_standardise: channel {channel} has the same intensity ({values[0]:g}) at every "
                         "landmark percentile of its region, so it cannot be standardised; check that the right "
                         "image was given.")
    merged = np.bincount(groups, weights=target) / np.bincount(groups)
    return values, merged


def _map_in_place(channel: np.ndarray, source: np.ndarray, target: np.ndarray, index: int) -> None:
    """Piecewise linear from `source` onto `target`; beyond either end the end piece continues
    straight, its slope at most (pieces) x the slope of the whole range, so that two nearly equal end
    landmarks cannot send the voxels beyond them anywhere."""
    bound = (len(source) - 1) * (target[-1] - target[0]) / (source[-1] - source[0])
    first = min((target[1] - target[0]) / (source[1] - source[0]), bound)
    last = min((target[-1] - target[-2]) / (source[-1] - source[-2]), bound)
    rows = max(1, MAP_BLOCK_VOXELS // max(1, channel[0].size))
    for start in range(0, channel.shape[0], rows):
        block = channel[start:start + rows]
        with np.errstate(invalid="ignore"):
            mapped = np.interp(block, source, target)
        below, above = block < source[0], block > source[-1]
        mapped[below] = target[0] + (block[below] - source[0]) * first
        mapped[above] = target[-1] + (block[above] - source[-1]) * last
        with np.errstate(over="ignore", invalid="ignore"):
            block[...] = mapped
        if not np.all(np.isfinite(block)):
            raise InputError(f"histogram_standardise: channel {index} holds values that are not finite numbers, or "
                             "so far beyond its landmarks that they leave single precision; check the image's "
                             "intensity scaling.")
