"""VGG16 for classification and regression: five conv stages, global average pooling, an MLP head.

Stages have 2, 2, 3, 3, 3 conv-norm-LeakyReLU layers with base, 2, 4, 8, 8 x base filters, each
followed by 2x max-pooling that rounds up, so any spatial size works (with instance
normalisation, one that leaves more than one voxel at the last stage). Output: raw scores
(batch, out_channels).
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.models.layers import LayerKit, activation
from trainer.models.shapes import check_input
from trainer.models.spec import ModelSpec

STAGES = ((1, 2), (2, 2), (4, 3), (8, 3), (8, 3))  # (filters as a multiple of base, conv layers)


def stage(kit: LayerKit, in_channels: int, out_channels: int, layers: int) -> nn.Sequential:
    convs = [kit.conv_norm_act(in_channels if index == 0 else out_channels, out_channels) for index in range(layers)]
    return nn.Sequential(*convs, kit.pool(ceil_mode=True))


class VGG16(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        kit = LayerKit(spec.dimensions, spec.norm)
        widths = [spec.base_filters * multiple for multiple, _ in STAGES]
        inputs = [spec.in_channels] + widths[:-1]
        self.features = nn.Sequential(*[stage(kit, cin, cout, layers)
                                        for cin, cout, (_, layers) in zip(inputs, widths, STAGES)])
        self.pool = kit.global_pool()
        self.head = nn.Sequential(
            nn.Flatten(1), nn.Dropout(spec.dropout), nn.Linear(widths[-1], widths[-1]), activation(),
            nn.Dropout(spec.dropout), nn.Linear(widths[-1], spec.out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spec)
        return self.head(self.pool(self.features(x)))


def build_vgg16(spec: ModelSpec) -> nn.Module:
    return VGG16(spec)
