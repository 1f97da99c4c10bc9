"""Network architectures by name: an allow-list of builders, each taking a ModelSpec.

Segmentation networks (unet, resunet, uinc, fcn, and MONAI's segresnet, dynunet and swinunetr:
see trainer.models.monai_nets) return raw logits (batch, out_channels,
*spatial) on the input's grid and need every spatial size to be a multiple of
`required_divisor(spec)` (2**depth). vgg16 (classification, regression) returns
(batch, out_channels) for any size. With instance normalisation the coarsest level must keep
more than one voxel. `check_patch_size` checks a patch size up front; every model's forward
pass checks its input the same way (except while tracing for ONNX export) and raises
ModelSpecError, a ValueError, with the size it got and what it needs.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from torch import nn

from trainer.models.fcn import build_fcn
from trainer.models.monai_nets import (build_densenet121, build_dynunet, build_efficientnet_b0, build_resnet18,
                                      build_segresnet, build_swinunetr)
from trainer.models.spec import (ARCHITECTURE_NAMES, GLOBAL_ARCHITECTURES, SEGMENTATION_ARCHITECTURES,
                                 ModelSpec, ModelSpecError, check_spec_values)
from trainer.models.shapes import DOWNSAMPLING, check_spatial_size, coarsest_grid, required_divisor
from trainer.models.unet import build_resunet, build_uinc, build_unet
from trainer.models.vgg import build_vgg16

__all__ = ["ARCHITECTURES", "ARCHITECTURE_NAMES", "GLOBAL_ARCHITECTURES", "SEGMENTATION_ARCHITECTURES",
           "ModelSpec", "ModelSpecError", "build_model", "check_exportable", "check_patch_size", "check_spec_values",
           "coarsest_grid", "required_divisor"]

ARCHITECTURES: Mapping[str, Callable[[ModelSpec], nn.Module]] = MappingProxyType({
    "unet": build_unet,
    "resunet": build_resunet,
    "uinc": build_uinc,
    "fcn": build_fcn,
    "segresnet": build_segresnet,
    "dynunet": build_dynunet,
    "swinunetr": build_swinunetr,
    "vgg16": build_vgg16,
    "resnet18": build_resnet18,
    "densenet121": build_densenet121,
    "efficientnet_b0": build_efficientnet_b0,
})

_CONV_TYPES = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


def _initialise(module: nn.Module) -> None:
    """He-normal weights for LeakyReLU networks, zero biases (deterministic under torch.manual_seed)."""
    if isinstance(module, _CONV_TYPES):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_model(spec: ModelSpec) -> nn.Module:
    """The network `spec` describes, freshly initialised from torch's global random state."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"build_model needs a ModelSpec, got {type(spec).__name__}; use ModelSpec.from_dict")
    model = ARCHITECTURES[spec.architecture](spec)
    model.apply(_initialise)
    return model


def check_exportable(spec: ModelSpec) -> None:
    """ModelSpecError saying why, when the network `spec` describes does not export to ONNX as
    `export build` exports it (opset 17, a dynamic batch axis), tried on the smallest input it takes
    and kept in memory: a network that cannot reach the clinic is refused before training."""
    import io

    import torch

    side = max(required_divisor(spec) * 2, DOWNSAMPLING.get(spec.architecture, 0) + 1)
    example = torch.zeros(1, spec.in_channels, *[side] * spec.dimensions)
    try:
        model = build_model(spec).eval()
        with torch.no_grad(), _quiet():
            torch.onnx.export(model, (example,), io.BytesIO(), opset_version=17, dynamo=False,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    except ModelSpecError:
        raise
    except Exception as error:  # torch.onnx raises many types; each means "does not export"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelSpecError(f"model.architecture: {spec.architecture} ({spec.dimensions}D) does not export to ONNX "
                             f"({reason[:200]}), so it could not run in the runtime; choose another architecture")


def _quiet():
    import contextlib
    import warnings

    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def check_patch_size(spec: ModelSpec, size: Sequence[int]) -> None:
    """Raise ModelSpecError when a patch of spatial size `size` (one entry per axis) cannot run through the network."""
    check_spatial_size(spec, size)
