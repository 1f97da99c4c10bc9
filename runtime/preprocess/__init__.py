"""Deterministic preprocessing: the one implementation used by training and by inference.

A model manifest lists ordered steps, each `{"name": ..., "params": {...}}`. Arrays arrive
channels first, `(C, *spatial)` with 2 or 3 spatial axes, in the model's axis order, with a
spacing in mm per spatial axis in the same order; every per-axis parameter below uses that order.
`run_steps` applies the steps and returns a `Record` of what the geometric ones did; `invert`
maps a model output from the preprocessed grid back onto the original grid using that record.

Geometric steps move the image (linear interpolation) together with its foreground and mask
(nearest neighbour). Intensity steps change only the image, each channel normalised separately.
Parameters marked optional may be omitted and take the default shown.

reorient
    orientation: three capital letters, required: one of L/R, P/A and S/I each (RAS, LPS, ...). First
    step only, 3D only. Not run by `run_steps`: the scan as read is turned before it
    (runtime.preprocess.orient; runtime.predict and trainer.data do it), its index axes x, y, z then
    increasing toward those directions, and the outputs are turned back.
resample
    spacing: [s0, s1(, s2)], required. Target spacing in mm; null on an axis keeps the image's
    spacing there (one number at least). New size per axis =
    max(1, size * old_spacing / new_spacing rounded half up). Voxel 0 keeps its position; points past
    the last input voxel take the nearest voxel's value. Inverted by resampling back to the exact
    original shape.
    method: "linear" or "nnunet", optional ("linear"). "nnunet" resamples as nnU-Net v2 does
    (runtime.preprocess.nnunet_resample): edge-aligned grids, the image by a cubic spline, a much
    coarser axis apart, the outputs back by linear interpolation.
resize
    shape: [n0, n1(, n2)], required. Exact output shape; the grid's outer edges stay in place and the
    spacing changes to cover the same extent. Inverted by resizing back.
crop_nonzero
    margin: integer >= 0, optional (0). Crop to the bounding box of the foreground (voxels non-zero
    in any channel of the raw input, unless a `foreground` step redefined it) widened by `margin`
    voxels and kept inside the image. An image with no foreground voxel is refused. Inverted by placing the output back into the box; everything
    outside gets the caller's fill value.
pad
    shape: [n0, n1(, n2)], required. Pad symmetrically (the odd voxel after) to at least this shape;
    axes already as long are left alone.
    value: number, optional (0). Value of the added image voxels.
threshold
    min, max: number or null, optional (null); at least one given, min <= max. Voxels outside
    [min, max] become 0.
clip
    min, max: number or null, optional (null); at least one given, min <= max. Voxels are clamped to
    [min, max].
rescale
    out_min, out_max: numbers, optional (0 and 1), out_min < out_max.
    in_min, in_max: number or null, optional (null: the channel's minimum / maximum).
    percentiles: [lo, hi] with 0 <= lo < hi <= 100, or null, optional (null). Take in_min / in_max
    from these percentiles of the channel instead; not together with in_min / in_max.
    Maps [in_min, in_max] linearly onto [out_min, out_max] and clips to that range. A constant
    channel maps to out_min.
foreground
    min, max: number or null, optional (null); at least one given, min <= max. The foreground becomes
    the voxels whose value lies in [min, max] in any channel, as the image is at this step (a CT's
    body, say, with `min: -900` leaving out the air, which is not 0 there). The image is unchanged.
    What follows uses the new foreground: crop_nonzero, zscore over "nonzero", and the sliding
    window's skipping of background windows. A foreground with no voxel is refused.
zscore
    region: "whole", "nonzero" or "mask", required. (x - mean) / max(std, 1e-8) with mean and std
    over the whole image, over the foreground ("nonzero"), or over the mask given with the image
    ("mask"). With "nonzero" or "mask" voxels outside the region become 0.
histogram_standardise
    landmarks: one list per channel (of `channels` where given) of numbers, strictly increasing,
    one per percentile, required (`trainer landmarks` learns them from the training images).
    percentiles: 2 to 101 numbers in [0, 100], strictly increasing, optional (1, the deciles 10..90,
    99). region: "whole" or "nonzero", optional ("nonzero"). Nyul and Udupa's standardisation: the
    channel's intensities at the percentiles over the region are mapped piecewise linearly onto the
    landmarks; every voxel is mapped, the end pieces continued straight beyond the first and last
    landmark (their slope at most the number of pieces times the whole range's). Percentiles with the
    same intensity are merged (their landmarks averaged); a channel with one intensity at every
    percentile, or with values that are not finite once mapped, is refused.

Every intensity step (threshold, clip, rescale, zscore, histogram_standardise, foreground) also takes
    channels: list of channel indices, or null, optional (null: all channels). Apply the step to
    (or, for foreground, look at) these channels only.

`run_steps(..., min_shape=patch_size)` pads the end of any axis shorter than the patch with 0 (and
records it), so a sliding window fits; `invert` removes that padding again.
`invert_rows` gives a slab of rows of the first axis of what `invert` gives, from the rows of
the output `rows_needed` names, so that an output is brought back a slab at a time.
"""
from __future__ import annotations

from runtime.preprocess.geometry import Cropped, Padded, Resampled, Resized, Transform
from runtime.preprocess.pipeline import Record, invert, invert_rows, planned_shape, rows_needed, run_steps, transfer
from runtime.preprocess.steps import STEPS, Step, StepSpec, check_step
from runtime.preprocess.volume import Volume

__all__ = [
    "STEPS", "Step", "StepSpec", "check_step", "Volume", "Record", "run_steps", "invert", "invert_rows", "rows_needed",
    "planned_shape", "transfer",
    "Transform", "Resampled", "Resized", "Cropped", "Padded",
]
