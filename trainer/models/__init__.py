"""Network architectures by name: an allow-list of builders, each taking a ModelSpec.

Segmentation networks (unet, resunet, uinc, fcn, and MONAI's segresnet and dynunet: see
trainer.models.monai_nets) return raw logits (batch, out_channels,
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
from trainer.models.monai_nets import build_dynunet, build_segresnet
from trainer.models.spec import (ARCHITECTURE_NAMES, GLOBAL_ARCHITECTURES, SEGMENTATION_ARCHITECTURES,
                                 ModelSpec, ModelSpecError, check_spec_values)
from trainer.models.shapes import check_spatial_size, coarsest_grid, required_divisor
from trainer.models.unet import build_resunet, build_uinc, build_unet
from trainer.models.vgg import build_vgg16

__all__ = ["ARCHITECTURES", "ARCHITECTURE_NAMES", "GLOBAL_ARCHITECTURES", "SEGMENTATION_ARCHITECTURES",
           "ModelSpec", "ModelSpecError", "build_model", "check_patch_size", "check_spec_values",
           "coarsest_grid", "required_divisor"]

ARCHITECTURES: Mapping[str, Callable[[ModelSpec], nn.Module]] = MappingProxyType({
    "unet": build_unet,
    "resunet": build_resunet,
    "uinc": build_uinc,
    "fcn": build_fcn,
    "segresnet": build_segresnet,
    "dynunet": build_dynunet,
    "vgg16": build_vgg16,
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


def check_patch_size(spec: ModelSpec, size: Sequence[int]) -> None:
    """Raise ModelSpecError when a patch of spatial size `size` (one entry per axis) cannot run through the network."""
    check_spatial_size(spec, size)
