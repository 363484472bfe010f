"""U-SAM's convolutional encoder: UNet-style downsampling path that tokenises the image (paper Eq. 5)."""
from __future__ import annotations

from typing import List, Sequence, Tuple

from torch import Tensor, nn

from CRCSegmentationLib.networks.blocks.unet_2d import DoubleConv, DownBlock
from CRCSegmentationLib.networks.usam.config import CNN_CHANNELS


class CNNEncoder(nn.Module):
    """Images B x 3 x S x S -> (f4: B x c4 x S/16 x S/16, skips [f0..f3]), channels c0..c4.

    ViT-B sizes: f0: B x 32 x S x S, f1: B x 64 x S/2 x S/2, f2: B x 128 x S/4 x S/4, f3: B x 256 x S/8 x S/8.
    f4 replaces SAM's patch embedding: one c4-channel token (768 for ViT-B) per 16 x 16 pixels.
    """

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = CNN_CHANNELS) -> None:
        super().__init__()
        self.stem = DoubleConv(in_channels, channels[0])
        self.downs = nn.ModuleList(DownBlock(a, b) for a, b in zip(channels[:-1], channels[1:]))

    def forward(self, images: Tensor) -> Tuple[Tensor, List[Tensor]]:
        features = [self.stem(images)]
        for down in self.downs:
            features.append(down(features[-1]))
        return features[-1], features[:-1]
