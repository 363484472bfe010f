"""2D UNet building blocks: double convolution, down block, up block with a skip (U-SAM paper Eq. 5-6)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BatchNorm -> ReLU) x 2, as in U-SAM's backbone.py and UNet."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DownBlock(nn.Sequential):
    """f_{i+1} = Conv(MaxPool(f_i)): halves the resolution (paper Eq. 5)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class UpBlock(nn.Module):
    """r_i = UP^{i+1}(r_{i+1}, f_{i+1}): 2x transposed conv, concatenate the skip, double conv (paper Eq. 6)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels + skip_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor, skip_term: Optional[Tensor] = None) -> Tensor:
        """x B x Cin x h x w, skip B x Cskip x 2h x 2w -> B x Cout x 2h x 2w.

        ``skip_term``: ``self.skip_term(skip)``, computed once per image. The first convolution of
        cat(up(x), skip) is the sum of one over up(x) and one over the skip; only the first depends
        on the prompts, so a click need not redo the second (same result up to float rounding).
        """
        if skip_term is None:
            return self.conv(torch.cat([self.up(x), skip], dim=1))
        first = self.conv[0]
        up = self.up(x)
        out = F.conv2d(up, first.weight[:, : up.shape[1]], None, first.stride, first.padding) + skip_term
        for layer in list(self.conv)[1:]:
            out = layer(out)
        return out

    def skip_term(self, skip: Tensor) -> Tensor:
        """The skip's share of the first convolution (with its bias): B x Cout x 2h x 2w."""
        first = self.conv[0]
        weight = first.weight[:, first.weight.shape[1] - skip.shape[1]:]
        return F.conv2d(skip, weight, first.bias, first.stride, first.padding)
