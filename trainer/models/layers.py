"""Layers for 2D and 3D networks, and the blocks every architecture is made of.

A `LayerKit` fixes the grid (2 or 3 spatial axes) and the normalisation once, so one block
definition serves both grids. Tensors are (batch, channels, *spatial), spatial in the input's order.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

NEGATIVE_SLOPE = 0.01

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSE = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_GLOBAL_POOL = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
_BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCE_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_INTERPOLATION = {2: "bilinear", 3: "trilinear"}


@dataclass(frozen=True)
class LayerKit:
    """Makes layers for one grid (`dimensions` spatial axes) and one normalisation (batch|instance|none)."""

    dimensions: int
    norm: str

    def conv(self, in_channels: int, out_channels: int, kernel: int = 3, dilation: int = 1,
             bias: bool | None = None) -> nn.Module:
        """A same-size convolution; without bias when a normalisation follows (unless `bias` says)."""
        bias = self.norm == "none" if bias is None else bias
        padding = dilation * (kernel // 2)
        return _CONV[self.dimensions](in_channels, out_channels, kernel, padding=padding,
                                      dilation=dilation, bias=bias)

    def normalise(self, channels: int) -> nn.Module:
        if self.norm == "batch":
            return _BATCH_NORM[self.dimensions](channels)
        if self.norm == "instance":
            return _INSTANCE_NORM[self.dimensions](channels, affine=True)
        return nn.Identity()

    def conv_norm_act(self, in_channels: int, out_channels: int, kernel: int = 3, dilation: int = 1) -> nn.Sequential:
        return nn.Sequential(self.conv(in_channels, out_channels, kernel, dilation),
                             self.normalise(out_channels), activation())

    def pool(self, ceil_mode: bool = False) -> nn.Module:
        """Max-pooling that halves every spatial axis (rounding up with `ceil_mode`)."""
        return _MAX_POOL[self.dimensions](kernel_size=2, stride=2, ceil_mode=ceil_mode)

    def up(self, in_channels: int, out_channels: int) -> nn.Module:
        """A transposed convolution that doubles every spatial axis."""
        return _CONV_TRANSPOSE[self.dimensions](in_channels, out_channels, kernel_size=2, stride=2)

    def global_pool(self) -> nn.Module:
        """Average over all spatial axes to (batch, channels, 1, ...)."""
        return _GLOBAL_POOL[self.dimensions](1)

    def upsample(self, x: torch.Tensor, factor: int) -> torch.Tensor:
        """Bilinear (2D) or trilinear (3D) up-sampling by an integer factor, align_corners=False."""
        if factor == 1:
            return x
        return F.interpolate(x, scale_factor=float(factor), mode=_INTERPOLATION[self.dimensions],
                             align_corners=False)


def activation() -> nn.Module:
    return nn.LeakyReLU(NEGATIVE_SLOPE)


BlockFactory = Callable[[LayerKit, int, int], nn.Module]


def double_conv(kit: LayerKit, in_channels: int, out_channels: int) -> nn.Module:
    """The classic U-Net block: two 3-wide conv-norm-LeakyReLU layers."""
    return nn.Sequential(kit.conv_norm_act(in_channels, out_channels),
                         kit.conv_norm_act(out_channels, out_channels))


def projection(kit: LayerKit, in_channels: int, out_channels: int) -> nn.Module:
    """The residual path: identity, or a 1x1 conv + norm when the channel count changes."""
    if in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(kit.conv(in_channels, out_channels, kernel=1), kit.normalise(out_channels))


class ResidualBlock(nn.Module):
    """conv-norm-act, conv-norm, plus the (projected) input, then act."""

    def __init__(self, kit: LayerKit, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(kit.conv_norm_act(in_channels, out_channels),
                                  kit.conv(out_channels, out_channels), kit.normalise(out_channels))
        self.skip = projection(kit, in_channels, out_channels)
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


def branch_widths(channels: int, branches: int) -> list[int]:
    """Split `channels` over `branches` as evenly as possible (the first ones get the remainder)."""
    return [channels // branches + (1 if index < channels % branches else 0) for index in range(branches)]


class InceptionBlock(nn.Module):
    """Four parallel branches, concatenated: 1x1; 1x1 then 3x3; 1x1 then two 3x3; 1x1 then 3x3 dilated by 2.

    The concatenation is normalised, added to the (projected) input and activated.
    Needs at least 4 output channels (one per branch).
    """

    def __init__(self, kit: LayerKit, in_channels: int, out_channels: int) -> None:
        super().__init__()
        widths = branch_widths(out_channels, 4)
        self.branches = nn.ModuleList([
            kit.conv_norm_act(in_channels, widths[0], kernel=1),
            nn.Sequential(kit.conv_norm_act(in_channels, widths[1], kernel=1),
                          kit.conv_norm_act(widths[1], widths[1])),
            nn.Sequential(kit.conv_norm_act(in_channels, widths[2], kernel=1),
                          kit.conv_norm_act(widths[2], widths[2]), kit.conv_norm_act(widths[2], widths[2])),
            nn.Sequential(kit.conv_norm_act(in_channels, widths[3], kernel=1),
                          kit.conv_norm_act(widths[3], widths[3], dilation=2)),
        ])
        self.mix = nn.Sequential(kit.conv(out_channels, out_channels, kernel=1), kit.normalise(out_channels))
        self.skip = projection(kit, in_channels, out_channels)
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        merged = torch.cat([branch(x) for branch in self.branches], dim=1)
        return self.act(self.mix(merged) + self.skip(x))
