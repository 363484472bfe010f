"""RCSegNeXt: a U-shaped network with anisotropic shallow and isotropic deep stages (paper Fig. 2)."""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from CRCSegmentationLib.networks.rcsegnext.blocks import ANISOTROPIC_KERNEL, ISOTROPIC_KERNEL, make_block
from CRCSegmentationLib.networks.rcsegnext.config import (
    RCSegNeXtConfig,
    level_channels,
    level_is_anisotropic,
    level_pooling,
    total_downsampling,
)


class Stage(nn.Sequential):
    """``blocks_per_stage`` blocks of one kind at one resolution; the first maps C_in -> C_out.

    (B, C_in, D, H, W) -> (B, C_out, D, H, W).
    """

    def __init__(self, config: RCSegNeXtConfig, anisotropic: bool, in_channels: int, out_channels: int) -> None:
        kind = config.anisotropic_block if anisotropic else config.isotropic_block
        kernel = ANISOTROPIC_KERNEL if anisotropic else ISOTROPIC_KERNEL  # §2.1
        blocks = [
            make_block(kind, in_channels if i == 0 else out_channels, out_channels, kernel, config.expansion, config.scales)
            for i in range(config.blocks_per_stage)
        ]
        super().__init__(*blocks)


class DecoderLevel(nn.Module):
    """Upsample the deeper level, concatenate the skip, run the level's stage (Fig. 2, right side).

    ``up``: ConvTranspose3d 2C -> C with kernel = stride = that level's pooling; ``stage``: 2C -> C.
    (B, 2C, d, h, w), skip (B, C, d*p0, h*p1, w*p2) -> (B, C, d*p0, h*p1, w*p2).
    """

    def __init__(self, config: RCSegNeXtConfig, anisotropic: bool, channels: int, pool: Tuple[int, int, int]) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(2 * channels, channels, kernel_size=pool, stride=pool)
        self.stage = Stage(config, anisotropic, 2 * channels, channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.stage(torch.cat((self.up(x), skip), dim=1))


class RCSegNeXt(nn.Module):
    """RCSegNeXt (paper Fig. 2) built from an ``RCSegNeXtConfig``; no deep supervision.

    1x1x1 stem in -> width; encoder level i: a ``Stage`` of width * 2**i channels, max-pooled by
    ``level_pooling(config)[i]`` before level i + 1; the decoder mirrors it (``DecoderLevel``,
    deepest first); 1x1x1 head to the classes. Anisotropic levels (§2.1) use 1x3x3 kernels and
    1x2x2 pooling; they act on axis 0 (``anisotropic_axis``) as the thick axis.

    forward: x (B, in_channels, D, H, W) -> logits (B, num_classes, D, H, W); D, H, W must be
    divisible by ``total_downsampling`` (paper configuration: (4, 16, 16)).
    """

    anisotropic_axis = 0  # of (D, H, W): the spatial axis the anisotropic kernels never convolve along

    def __init__(self, config: RCSegNeXtConfig = RCSegNeXtConfig()) -> None:
        super().__init__()
        self.config = config
        self.pooling: List[Tuple[int, int, int]] = level_pooling(config)
        self.total_downsampling: Tuple[int, int, int] = total_downsampling(config)
        channels = level_channels(config)
        anisotropic = level_is_anisotropic(config)
        self.stem = nn.Conv3d(config.in_channels, config.width, kernel_size=1)
        self.encoder = nn.ModuleList(
            [
                Stage(config, anisotropic[level], channels[max(level - 1, 0)], channels[level])
                for level in range(config.levels)
            ]
        )
        self.decoder = nn.ModuleList(
            [
                DecoderLevel(config, anisotropic[level], channels[level], self.pooling[level])
                for level in reversed(range(config.levels - 1))
            ]
        )
        self.head = nn.Conv3d(config.width, config.num_classes, kernel_size=1)
        # Depthwise and grouped 3D convolutions (most of this network) are ~10x faster on the CPU in
        # channels-last layout (oneDNN; measured in benchmarks/bench_rcsegnext.py's setting), and cuDNN
        # takes it too. load_state_dict copies into these tensors and keeps the layout.
        self.to(memory_format=torch.channels_last_3d)

    def check_input(self, x: Tensor) -> None:
        """ValueError unless x is (B, in_channels, D, H, W) with D, H, W divisible by the downsampling."""
        if x.dim() != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"RCSegNeXt input: shape {tuple(x.shape)} must be (B, {self.config.in_channels}, D, H, W)"
            )
        spatial = tuple(int(s) for s in x.shape[2:])
        if any(size % factor for size, factor in zip(spatial, self.total_downsampling)):
            raise ValueError(
                f"RCSegNeXt input: spatial shape (D, H, W) = {spatial} must be divisible by the total "
                f"downsampling {self.total_downsampling} per axis (pad or crop the input)"
            )

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        skips: List[Tensor] = []
        x = self.stem(x.contiguous(memory_format=torch.channels_last_3d))
        for level, stage in enumerate(self.encoder):
            if level > 0:
                x = F.max_pool3d(x, kernel_size=self.pooling[level - 1], stride=self.pooling[level - 1])
            x = stage(x)
            skips.append(x)
        skips.pop()  # the deepest level's output is the decoder's input, not a skip
        for decoder_level in self.decoder:
            x = decoder_level(x, skips.pop())
        return self.head(x).contiguous()  # the usual layout for nnU-Net's losses and exports
