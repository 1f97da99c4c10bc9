"""Networks from MONAI's maintained implementations (the `monai` extra), built from a ModelSpec.

- `segresnet`: SegResNet (Myronenko 2018), residual encoder blocks (1, 2, 2, 4, ...) down to
  `depth` down-samplings, `base_filters` doubling per level.
- `dynunet`: DynUNet, nnU-Net's dynamic U-Net: 3-voxel kernels and a stride of 2 per level,
  filters doubling from `base_filters` up to nnU-Net's cap of 320, residual encoder blocks, no
  deep supervision (one output, as the runtime takes it).

- `swinunetr`: SwinUNETR (Hatamizadeh et al. 2022), a Swin transformer encoder with a
  convolutional decoder; its depth is fixed (sizes divisible by 32, and at least 64 for instance
  normalisation), `base_filters` is its feature size (a multiple of 12).

They return raw logits on the input's grid and take spatial sizes divisible by 2**depth (32 for
swinunetr); `norm` is instance or batch (they need a normalisation), `dropout` their own dropout.

Classification and regression backbones, fixed layouts (they ignore `base_filters`, `depth` and
`norm`, and are built without downloading any weights), returning (batch, out_channels):
`resnet18`, `densenet121` (with `dropout`) and `efficientnet_b0` (with `dropout`; the swish
that saves memory in training is replaced by the plain one, which exports to ONNX).
"""
from __future__ import annotations

import torch
from torch import nn

from runtime.errors import install_hint
from trainer.models.shapes import check_input
from trainer.models.spec import ModelSpec, ModelSpecError

SEGRESNET_BLOCKS = (1, 2, 2, 4, 4, 4, 4)
DYNUNET_MAX_FILTERS = 320


def _nets():
    try:
        from monai.networks import nets
    except ImportError:
        raise ModelSpecError("the segresnet, dynunet, swinunetr, resnet18, densenet121 and efficientnet_b0 architectures come "
                             f"from MONAI, which is not installed here; {install_hint('monai')}") from None
    return nets


class Checked(nn.Module):
    """A MONAI network behind the project's size check (skipped while tracing for export)."""

    def __init__(self, spec: ModelSpec, network: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spec)
        return self.network(x)


def build_segresnet(spec: ModelSpec) -> nn.Module:
    network = _nets().SegResNet(
        spatial_dims=spec.dimensions, init_filters=spec.base_filters, in_channels=spec.in_channels,
        out_channels=spec.out_channels, dropout_prob=spec.dropout or None, norm=spec.norm.upper(),
        blocks_down=SEGRESNET_BLOCKS[:spec.depth + 1], blocks_up=(1,) * spec.depth)
    return Checked(spec, network)


def build_swinunetr(spec: ModelSpec) -> nn.Module:
    network = _nets().SwinUNETR(in_channels=spec.in_channels, out_channels=spec.out_channels,
                                feature_size=spec.base_filters, spatial_dims=spec.dimensions, norm_name=spec.norm,
                                drop_rate=spec.dropout)
    return Checked(spec, network)


def build_resnet18(spec: ModelSpec) -> nn.Module:
    network = _nets().resnet18(spatial_dims=spec.dimensions, n_input_channels=spec.in_channels,
                               num_classes=spec.out_channels)
    return Checked(spec, network)


def build_densenet121(spec: ModelSpec) -> nn.Module:
    network = _nets().DenseNet121(spatial_dims=spec.dimensions, in_channels=spec.in_channels,
                                  out_channels=spec.out_channels, dropout_prob=spec.dropout)
    return Checked(spec, network)


def build_efficientnet_b0(spec: ModelSpec) -> nn.Module:
    network = _nets().EfficientNetBN("efficientnet-b0", pretrained=False, progress=False, spatial_dims=spec.dimensions,
                                     in_channels=spec.in_channels, num_classes=spec.out_channels)
    network.set_swish(memory_efficient=False)
    network._dropout = nn.Dropout(spec.dropout)
    return Checked(spec, network)


def build_dynunet(spec: ModelSpec) -> nn.Module:
    levels = spec.depth + 1
    network = _nets().DynUNet(
        spatial_dims=spec.dimensions, in_channels=spec.in_channels, out_channels=spec.out_channels,
        kernel_size=[3] * levels, strides=[1] + [2] * spec.depth, upsample_kernel_size=[2] * spec.depth,
        filters=[min(spec.base_filters * 2 ** level, DYNUNET_MAX_FILTERS) for level in range(levels)],
        norm_name=spec.norm, dropout=spec.dropout or None, deep_supervision=False, res_block=True)
    return Checked(spec, network)
