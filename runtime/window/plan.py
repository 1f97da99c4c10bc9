"""The plan of a sliding window over one image: which windows run, in which model calls.

A plan is computed from the image's spatial shape and a `WindowSpec` (and, where empty windows
are skipped, a foreground mask) before any window is read, and then drives every stage: the
source cuts each pass's windows, the backend runs them, the merger stitches their outputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from runtime.errors import InputError
from runtime.window.grid import Window, scaled, window_grid
from runtime.window.spec import WindowSpec
from runtime.window.weights import blending_weights


@dataclass(frozen=True)
class Pass:
    """One model call: a batch of windows, with the spatial axes (0-based) flipped for it.

    `windows` are in input voxels, `targets` the same windows on the output grid (equal where
    the spec's output scale is 1). `first`/`last`: the first and last flip of this batch.
    """

    windows: tuple[Window, ...]
    targets: tuple[Window, ...]
    flip: tuple[int, ...]
    first: bool
    last: bool


@dataclass(frozen=True)
class Plan:
    """Every pass over an image of spatial `shape`, whose output has spatial `output_shape`.

    `windows`: the windows run; `skipped`: those left out for holding no foreground voxel
    (`windows + skipped` is the whole grid); `mirrors`: flips per batch.
    """

    spec: WindowSpec
    shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    passes: tuple[Pass, ...]
    windows: int
    skipped: int
    mirrors: int

    @property
    def total(self) -> int:
        """Windows of the whole grid, run or skipped."""
        return self.windows + self.skipped

    @property
    def weights(self) -> np.ndarray | None:
        """The blending weights of an output window; None where every voxel counts 1."""
        if self.spec.blending == "constant":
            return None
        return blending_weights(self.spec.output_patch, self.spec.blending)


def output_shape(shape: Sequence[int], spec: WindowSpec) -> tuple[int, ...]:
    """The output's spatial shape for an input of spatial `shape`: `shape / output_scale`,
    rounded up (the last windows of a scaled grid may reach past the input's end)."""
    return tuple(math.ceil(int(s) / spec.output_scale) for s in shape)


@dataclass(frozen=True)
class CoarseMask:
    """A foreground mask at a coarser grid than the image's: `mask` pixel i along an axis covers
    image pixels [i * scale, (i + 1) * scale) of that axis (`scale` need not be whole: a tissue
    mask of a slide's overview against the slide at the model's resolution). A window holds
    foreground where any mask pixel it touches does."""

    mask: np.ndarray
    scale: tuple[float, ...]

    def any_in(self, window: Window) -> bool:
        parts = tuple(
            slice(int(math.floor(part.start / s)), max(int(math.ceil(part.stop / s)), int(math.floor(part.start / s)) + 1))
            for part, s in zip(window, self.scale)
        )
        return bool(self.mask[parts].any())


Foreground = np.ndarray | CoarseMask


def plan(shape: Sequence[int], spec: WindowSpec, foreground: Foreground | None = None) -> Plan:
    """The passes of `spec`'s windows over spatial `shape`.

    The windows are laid on the output grid, evenly (`window_grid`), and scaled to input voxels.
    With `spec.skip_empty`, windows where `foreground` (a boolean mask of `shape`, or a
    `CoarseMask` over it) holds no voxel are left out. Each batch of `batch_size` windows is run once per mirror set, those passes in
    a row. InputError where the image is smaller than the patch or the mask does not fit.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != spec.dims:
        raise InputError(f"the image has spatial shape {shape}; expected {spec.dims} spatial axes "
                         f"to match the patch {spec.patch}")
    if any(s < p for s, p in zip(shape, spec.patch)):
        raise InputError(f"the image's spatial shape {shape} is smaller than the patch {spec.patch} "
                         "on some axis; pad the image to at least the patch size first")
    out_shape = output_shape(shape, spec)
    targets = window_grid(out_shape, spec.output_patch, spec.overlap, spec.placement)
    kept = _kept(targets, spec, shape, foreground)
    flips = mirror_sets(spec.mirror_axes)
    passes = []
    for begin in range(0, len(kept), spec.batch_size):
        batch = tuple(kept[begin:begin + spec.batch_size])
        inputs = tuple(scaled(target, spec.output_scale) for target in batch)
        for index, flip in enumerate(flips):
            passes.append(Pass(inputs, batch, flip, index == 0, index == len(flips) - 1))
    return Plan(spec, shape, out_shape, tuple(passes), len(kept), len(targets) - len(kept), len(flips))


def mirror_sets(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of `mirror_axes`, the identity first."""
    sets: list[tuple[int, ...]] = [()]
    for axis in mirror_axes:
        sets += [(*existing, axis) for existing in sets]
    return sets


def _kept(targets: list[Window], spec: WindowSpec, shape: tuple[int, ...],
          foreground: Foreground | None) -> list[Window]:
    if not spec.skip_empty:
        return targets
    if isinstance(foreground, CoarseMask):
        if foreground.mask.ndim != len(shape) or len(foreground.scale) != len(shape) or min(foreground.scale) <= 0:
            raise InputError(f"a coarse foreground mask of {foreground.mask.ndim} axes at scale {foreground.scale} "
                             f"does not fit an image of spatial shape {shape}")
        return [target for target in targets if foreground.any_in(scaled(target, spec.output_scale))]
    if foreground is None or foreground.shape != shape:
        got = None if foreground is None else foreground.shape
        raise InputError(f"skipping empty windows needs a foreground mask of the image's shape {shape}, got {got}")
    return [target for target in targets if foreground[scaled(target, spec.output_scale)].any()]
