"""The size of one prediction, known before it is run: refuse what the memory budget cannot hold.

From the scan's shape and spacing and the manifest alone, `check_job` works out the grid that
preprocessing makes and the memory the prediction needs (the scan, the preprocessed image, the
sliding window's sums and weights, the batches of the model calls in flight, the outputs and their
written copies), and refuses — naming the
scan, the grids and the budget — a job over the budget (`runtime.budget`) or one whose resampling
would enlarge a scan more than MAX_ENLARGEMENT times: a few kilobytes sent with a spacing of
tens of millimetres would otherwise become gigabytes and minutes of work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from runtime.budget import check_memory
from runtime.errors import InputError
from runtime.io.axes import in_model_order
from runtime.manifest import Manifest
from runtime.postprocess import expected_channels
from runtime.preprocess import planned_shape
from runtime.preprocess.geometry import resampled_shape, target_spacing

MAX_ENLARGEMENT = 64
_FLOAT = 4
# Bytes per input element beside its float32 copy while it is read: ITK's image and its reader's
# buffer (measured on NIfTI: a 512×512×300 CT peaks within the estimate).
_READING = 8
# Bytes per input voxel for the foreground map, the label map and its written copy.
_PER_VOXEL = 1 + 2 + 2
# Model calls whose input and output batches are held at once (a backend keeps a few in flight).
_IN_FLIGHT = 4


@dataclass(frozen=True)
class JobSize:
    """A prediction's grids (in the model's axis order) and the bytes it needs at most."""

    shape: tuple[int, ...]         # one image the model sees (a slice, for a 2D model on a volume)
    planned: tuple[int, ...]       # that image after preprocessing, padded to the patch
    images: int                    # how many such images (slices) the scan holds
    nbytes: int


def _image_grid(manifest: Manifest, shape_zyx: Sequence[int],
                spacing_zyx: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...], int]:
    """The shape and spacing of one image the model sees, in its axis order, and how many such
    images the scan holds (slices, for a 2D model on a volume), as runtime.predict cuts them."""
    images = 1
    if len(shape_zyx) > manifest.dimensions:                  # a volume's axial slices: z goes first
        images, shape_zyx, spacing_zyx = int(shape_zyx[0]), shape_zyx[1:], spacing_zyx[1:]
    shape = tuple(int(n) for n in in_model_order(shape_zyx, manifest.axis_order))
    spacing = tuple(float(s) for s in in_model_order(spacing_zyx, manifest.axis_order))
    return shape, spacing, images


def _check_enlargement(manifest: Manifest, shape: tuple[int, ...], spacing: tuple[float, ...], source: str) -> None:
    """Resampling may enlarge the grid at most MAX_ENLARGEMENT times."""
    for step in manifest.preprocessing:
        target = step.params.get("spacing")
        if step.name != "resample" or target is None or len(target) != len(shape):
            continue
        target = target_spacing(spacing, target)
        after = resampled_shape(shape, spacing, target, step.params.get("method", "linear"))
        if math.prod(after) > MAX_ENLARGEMENT * math.prod(shape):
            raise InputError(
                f"{source}: resampling its {'×'.join(map(str, shape))} grid of {_mm(spacing)} mm to the model's "
                f"{_mm(target)} mm makes {'×'.join(map(str, after))} voxels, {math.prod(after) / math.prod(shape):.0f} "
                f"times as many; the runtime enlarges a scan at most {MAX_ENLARGEMENT} times: check the spacing sent, "
                "or send the scan at a finer resolution.")
        shape, spacing = after, target


def _mm(values: Sequence[float]) -> str:
    return "×".join(f"{v:g}" for v in values)


def job_size(manifest: Manifest, shape_zyx: Sequence[int], spacing_zyx: Sequence[float], channels: int,
             probabilities: bool) -> JobSize:
    """The grids and the most memory a prediction of such a scan needs."""
    shape, spacing, images = _image_grid(manifest, shape_zyx, spacing_zyx)
    patch = manifest.window.patch_size if manifest.window.mode == "sliding" else None
    planned = planned_shape(manifest.preprocessing, shape, spacing, patch)
    original, prepared, k = math.prod(shape) * images, math.prod(planned), expected_channels(manifest)
    scan = original * channels * (_FLOAT + _READING)
    window = prepared * (channels * _FLOAT + 1 + k * _FLOAT + _FLOAT)
    outputs = original * (3 * k * _FLOAT if probabilities else 0) + original * _PER_VOXEL
    calls = _IN_FLIGHT * manifest.window.batch_size * (channels + k) * math.prod(patch or planned) * _FLOAT
    return JobSize(shape=shape, planned=planned, images=images, nbytes=scan + window + outputs + calls)


def check_job(manifest: Manifest, shape_zyx: Sequence[int], spacing_zyx: Sequence[float], channels: int,
              probabilities: bool, source: str, budget: int | None = None) -> JobSize:
    """Refuse a prediction that would enlarge the scan too much or need more memory than the
    budget; returns its size otherwise."""
    shape, spacing, _ = _image_grid(manifest, shape_zyx, spacing_zyx)
    _check_enlargement(manifest, shape, spacing, source)
    size = job_size(manifest, shape_zyx, spacing_zyx, channels, probabilities)
    check_memory(size.nbytes, f"predicting {source} (a {'×'.join(map(str, size.shape))} grid, "
                              f"{'×'.join(map(str, size.planned))} after preprocessing"
                              f"{f', {size.images} slices' if size.images > 1 else ''})",
                 "crop the scan, or raise the budget.", budget)
    return size
