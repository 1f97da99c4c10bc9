"""FCN: a convolutional encoder whose every level predicts the output, fused across scales.

Level l (0..depth, at 1/2**l of the input's size) gives a 1x1-conv side output with
out_channels maps, up-sampled by 2**l (bilinear or trilinear, align_corners=False) to the
input's grid; a 1x1 conv fuses the concatenated side outputs into raw logits
(batch, out_channels, *spatial).
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.models.layers import LayerKit, double_conv
from trainer.models.spec import ModelSpec
from trainer.models.shapes import check_input
from trainer.models.unet import Encoder, level_filters


class FCN(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.kit = LayerKit(spec.dimensions, spec.norm)
        self.spec = spec
        self.encoder = Encoder(spec, self.kit, double_conv)
        self.sides = nn.ModuleList([self.kit.conv(channels, spec.out_channels, kernel=1, bias=True)
                                    for channels in level_filters(spec)])
        self.fuse = self.kit.conv(spec.out_channels * (spec.depth + 1), spec.out_channels, kernel=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spec)
        features = self.encoder(x)
        sides = [self.kit.upsample(side(feature), 2 ** level)
                 for level, (side, feature) in enumerate(zip(self.sides, features))]
        return self.fuse(torch.cat(sides, dim=1))


def build_fcn(spec: ModelSpec) -> nn.Module:
    return FCN(spec)
