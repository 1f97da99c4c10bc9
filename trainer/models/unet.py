"""The U-Net family: UNet, ResUNet and Inception UNet share one encoder-decoder layout.

Encoder level l (0..depth) has `level_filters(spec)[l]` channels; levels are joined by 2x
max-pooling on the way down and 2x transposed convolutions on the way up, with the encoder's
output at each level concatenated to the decoder's input (skip connections). Output: raw
logits (batch, out_channels, *spatial) on the input's grid.
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.models.layers import BlockFactory, InceptionBlock, LayerKit, ResidualBlock, double_conv
from trainer.models.shapes import check_input
from trainer.models.spec import ModelSpec

FILTER_CAP = 320


def level_filters(spec: ModelSpec) -> list[int]:
    """Channels per level: base * 2**level, capped at min(base * 16, 320) (never below base)."""
    cap = max(spec.base_filters, min(spec.base_filters * 16, FILTER_CAP))
    return [min(spec.base_filters * 2 ** level, cap) for level in range(spec.depth + 1)]


class Encoder(nn.Module):
    """depth + 1 blocks joined by max-pooling; returns every level's features, finest first."""

    def __init__(self, spec: ModelSpec, kit: LayerKit, block: BlockFactory) -> None:
        super().__init__()
        filters = level_filters(spec)
        inputs = [spec.in_channels] + filters[:-1]
        self.blocks = nn.ModuleList([block(kit, cin, cout) for cin, cout in zip(inputs, filters)])
        self.pool = kit.pool()
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level, block in enumerate(self.blocks):
            x = block(x if level == 0 else self.pool(x))
            features.append(x)
        features[-1] = self.dropout(features[-1])
        return features


class UNet(nn.Module):
    """Encoder-decoder with skip concatenation; `block` makes every level's block."""

    def __init__(self, spec: ModelSpec, block: BlockFactory) -> None:
        super().__init__()
        kit = LayerKit(spec.dimensions, spec.norm)
        filters = level_filters(spec)
        self.spec = spec
        self.encoder = Encoder(spec, kit, block)
        coarse_to_fine = list(reversed(range(spec.depth)))
        self.ups = nn.ModuleList([kit.up(filters[level + 1], filters[level]) for level in coarse_to_fine])
        self.decoder = nn.ModuleList([block(kit, 2 * filters[level], filters[level]) for level in coarse_to_fine])
        self.head = kit.conv(filters[0], spec.out_channels, kernel=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spec)
        skips = self.encoder(x)
        x = skips.pop()
        for up, block in zip(self.ups, self.decoder):
            x = block(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def build_unet(spec: ModelSpec) -> nn.Module:
    """Classic U-Net: two conv-norm-LeakyReLU layers per level."""
    return UNet(spec, double_conv)


def build_resunet(spec: ModelSpec) -> nn.Module:
    """Residual U-Net: residual blocks (1x1 projection where the channel count changes)."""
    return UNet(spec, ResidualBlock)


def build_uinc(spec: ModelSpec) -> nn.Module:
    """Inception U-Net: inception blocks (1x1, 3x3, double 3x3, dilated 3x3 branches) with residuals."""
    return UNet(spec, InceptionBlock)
