"""Intensity steps: threshold, clip, rescale, zscore, normalize, and foreground.

The first five work on one channel at a time, in place on `volume.array` (the pipeline hands them
a private float32 copy), and leave the grid, foreground and mask alone. `foreground` only reads
the image: it replaces the foreground map with the voxels whose intensity lies in a range.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Mapping

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
    """The foreground becomes the voxels whose value lies in [min, max] in any selected channel."""
    low, high = _bound(params["min"], -np.inf), _bound(params["max"], np.inf)
    chosen = selected_channels(volume, params)
    region = np.zeros(volume.spatial_shape, dtype=bool)
    for c in chosen:
        channel = volume.array[c]
        inside = np.greater_equal(channel, low)
        inside &= np.less_equal(channel, high)
        region |= inside
    if not region.any():
        raise InputError(
            f"foreground: no voxel of channel(s) {chosen} lies within [{low:g}, {high:g}], so the image holds no "
            "foreground; check that the right image was given and that the step's bounds suit its intensities."
        )
    return replace(volume, foreground=region), None


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


def _region(volume: Volume, region: str) -> np.ndarray | None:
    """The boolean region zscore statistics come from; None means the whole image."""
    if region == "whole":
        return None
    if region == "mask" and volume.mask is None:
        raise InputError(
            "zscore with region 'mask' needs a mask, but none was given; pass a mask with the image "
            "or use region 'whole' or 'nonzero'."
        )
    chosen = volume.foreground if region == "nonzero" else volume.mask
    if not chosen.any():
        what = "the image has no non-zero voxel" if region == "nonzero" else "the mask is empty"
        raise InputError(f"zscore with region {region!r} has nothing to normalise over: {what}.")
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
