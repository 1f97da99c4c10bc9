"""Which spatial sizes a network can take: divisibility by 2**depth, and a coarsest grid that can be normalised.

Spatial sizes are given in the input's axis order, one per spatial axis (no batch or channel axes).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from trainer.models.spec import SEGMENTATION_ARCHITECTURES, ModelSpec, ModelSpecError

VGG_DOWNSAMPLING = 16  # four 2x poolings before vgg16's last conv stage
# How many times each global network shrinks its input before its last stage.
DOWNSAMPLING = {"vgg16": VGG_DOWNSAMPLING, "resnet18": 32, "densenet121": 32, "efficientnet_b0": 32}


# SwinUNETR's fixed layout: a patch embedding and four stages, each halving the grid.
SWIN_DIVISOR = 32


def required_divisor(spec: ModelSpec) -> int:
    """Every spatial size must be a multiple of this: 2**depth for the segmentation networks (32 for
    swinunetr, whose depth is fixed), 1 for the global ones."""
    if spec.architecture == "swinunetr":
        return SWIN_DIVISOR
    return 2 ** spec.depth if spec.architecture in SEGMENTATION_ARCHITECTURES else 1


def coarsest_grid(spec: ModelSpec, spatial: Sequence[int]) -> tuple[int, ...]:
    """The spatial size of the deepest normalised layer for an input of size `spatial`."""
    if spec.architecture in SEGMENTATION_ARCHITECTURES:
        return tuple(size // required_divisor(spec) for size in spatial)
    return tuple(math.ceil(size / DOWNSAMPLING[spec.architecture]) for size in spatial)


def check_spatial_size(spec: ModelSpec, spatial: Sequence[int]) -> None:
    """Raise ModelSpecError when an input of spatial size `spatial` cannot run through the network."""
    spatial = tuple(int(size) for size in spatial)
    divisor = required_divisor(spec)
    if len(spatial) != spec.dimensions:
        raise ModelSpecError(f"{spec.architecture}: size {spatial} has {len(spatial)} spatial axes; "
                             f"a {spec.dimensions}D model needs {spec.dimensions}")
    if not all(size >= divisor and size % divisor == 0 for size in spatial):
        why = "its fixed depth" if spec.architecture == "swinunetr" else f"2**depth, depth {spec.depth}"
        raise ModelSpecError(f"{spec.architecture}: spatial size {spatial} must be a positive multiple of "
                             f"{divisor} ({why}) on every axis; choose a patch size divisible by {divisor}")
    shrink = DOWNSAMPLING.get(spec.architecture, 1)
    if spec.architecture not in SEGMENTATION_ARCHITECTURES and min(spatial) <= shrink:
        raise ModelSpecError(f"{spec.architecture}: spatial size {spatial} leaves one voxel before the last pooling "
                             f"on some axis, which OpenVINO and TensorRT refuse; make every axis of the patch at "
                             f"least {shrink + 1} (and resize the images to it in preprocessing)")
    if spec.norm == "instance" and math.prod(coarsest_grid(spec, spatial)) < 2:
        remedy = " (64 on one axis) or norm: batch" if spec.architecture == "swinunetr" else " or a smaller depth"
        raise ModelSpecError(f"{spec.architecture}: spatial size {spatial} leaves a single voxel at the coarsest "
                             f"level, which instance normalisation cannot normalise; use a larger patch{remedy}")


def check_input(x: torch.Tensor, spec: ModelSpec) -> None:
    """The eager-mode size check of a (batch, channels, *spatial) input; skipped while tracing for export."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return
    check_spatial_size(spec, tuple(x.shape[2:]))
