"""SANet: the Spatial Alignment Network of HCF (paper §3.2, Fig. 3), a 2D feature-pyramid segmenter.

Layout (shapes for an input (B, C_in, H, W), H and W multiples of 16)::

    encoder  ResNet18 (torchvision), layer4 at stride 1 with dilation 2        §3.2.1
             layer1 (B, 64, H/4, W/4)   layer2 (B, 128, H/8, W/8)
             layer3 (B, 256, H/16, W/16) layer4 (B, 512, H/16, W/16)   -> output stride 16
    PPM      layer4 -> bins 1, 2, 3, 6: adaptive avg pool -> 1x1 conv 512->128 -> BN (no ReLU:
             "CB" in Fig. 3), bilinear back; concat with layer4 (1024) -> 1x1 conv -> 128 -> BN
             -> ReLU (-> Dropout2d 0.1, public code)                                   §3.2.2
    decoder  for layer3, layer2, layer1: lateral 1x1 Conv-BN-ReLU -> 128 (§3.2.4);
             f = lateral + SAM(lateral, f) (Eq. 1-3); a 3x3 Conv-BN-ReLU of each f joins the pyramid
    head     pyramid (PPM output and the three f's) bilinearly to H/4 -> concat (512) -> 3x3
             Conv-BN-ReLU -> 128 -> 1x1 conv -> classes -> x4 bilinear -> (B, classes, H, W)

Output stride 16 (§3.2.1): torchvision's ``replace_stride_with_dilation`` exists only for Bottleneck
ResNets (its BasicBlock refuses dilation > 1), so :func:`dilate_stage` edits layer4 after it is built:
every convolution to stride 1 and every 3x3 convolution to dilation 2 with padding 2 ("setting the stride
of all convolutional layers to 1 while replacing the standard convolution with atrous convolution with a
dilation rate of 2", as the public code does, first block included). The 1x1 downsample convolution
keeps its 256 -> 512 projection at stride 1. Weights and names are torchvision's, so a torchvision
ResNet18 state dict (first convolution aside) loads into ``encoder``.

Parameters (1 input channel, 2 classes): **12,712,386**, matching the 12.71 M measured from the public
code (its count is 12,712,770: its lateral 1x1 convolutions also carry a bias before their BN, 384
parameters we leave out). Paper Table 2 gives SANet 12.82 M (0.84 % more, HCF 23.99 M = 12.82 M + the
11.17 M classifier); no layer of the public code accounts for the 0.11 M, and Table 2 lists exactly
12.71 M for SFNet, so we match the code, whose 12.71 M is within 1 % of both numbers. Breakdown:
encoder 11,170,240; PPM 394,496; laterals 58,112; SAMs 3 x 18,688; pyramid 3x3 convs 443,136; fusion
590,080; classifier 258.

Other choices, each documented where it is made: SAM sampling convention (``alignment``); the final x4
upsampling uses ``align_corners=False`` like every other resize here (the public code's
``UpsamplingBilinear2d`` uses ``align_corners=True``); decoder initialisation as the public code's
(Kaiming-uniform convolutions, Xavier classifier), encoder as torchvision's.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet18

from CRCSegmentationLib.networks.hcf.alignment import SpatialAlignment

OUTPUT_STRIDE = 16
ENCODER_CHANNELS = (64, 128, 256, 512)  # layer1..layer4 of ResNet18
PPM_BINS = (1, 2, 3, 6)  # §3.2.2, PSPNet's default
DECODER_CHANNELS = 128  # §3.2.4


def is_valid_input_size(size: object) -> bool:
    """Whether ``size`` can be a side of SANet's input: an int (not a bool), a positive multiple of
    ``OUTPUT_STRIDE``. The one rule the bundle, training and the network itself check."""
    return isinstance(size, int) and not isinstance(size, bool) and size >= OUTPUT_STRIDE and size % OUTPUT_STRIDE == 0


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """CBR of Fig. 3: conv (no bias, "same" padding) -> BN -> ReLU. (B, C_in, H, W) -> (B, C_out, H, W)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def dilate_stage(stage: nn.Sequential, dilation: int) -> None:
    """Turn a torchvision BasicBlock stage from stride 2 into stride 1 with atrous 3x3 convolutions (§3.2.1).

    In place: every ``Conv2d`` gets stride 1; every 3x3 one dilation ``dilation`` and padding
    ``dilation`` (so the spatial size is kept). No parameter changes.
    """
    for module in stage.modules():
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)
            if module.kernel_size == (3, 3):
                module.dilation = (dilation, dilation)
                module.padding = (dilation, dilation)
    for block in stage:
        if hasattr(block, "stride"):
            block.stride = 1  # torchvision keeps it for information only


class DilatedResNet18Encoder(nn.Module):
    """ResNet18 without its pooling and classifier, layer4 dilated: output stride 16.

    (B, in_channels, H, W) -> [layer1 (B, 64, H/4, W/4), layer2 (B, 128, H/8, W/8),
    layer3 (B, 256, H/16, W/16), layer4 (B, 512, H/16, W/16)].
    """

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        backbone = resnet18(weights=None)
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
        self.bn1 = backbone.bn1
        self.relu = backbone.relu
        self.maxpool = backbone.maxpool
        self.layer1 = backbone.layer1
        self.layer2 = backbone.layer2
        self.layer3 = backbone.layer3
        self.layer4 = backbone.layer4
        dilate_stage(self.layer4, 2)
        # backbone.avgpool and backbone.fc are dropped with ``backbone``.

    def forward(self, x: Tensor) -> List[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # embedding head, stride 4
        features = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):  # S1-S4 of Fig. 3
            x = stage(x)
            features.append(x)
        return features


class PyramidPooling(nn.Module):
    """PPM (§3.2.2): (B, C_in, h, w) -> (B, out_channels, h, w).

    Per bin n: adaptive average pool to n x n -> 1x1 conv C_in -> branch_channels -> BN ("CB", no ReLU),
    bilinearly resized back; concatenated with the input; 1x1 Conv-BN-ReLU -> out_channels; Dropout2d
    (public code, 0.1; identity in eval).
    """

    def __init__(self, in_channels: int = 512, branch_channels: int = DECODER_CHANNELS,
                 out_channels: int = DECODER_CHANNELS, bins: Sequence[int] = PPM_BINS, dropout: float = 0.1) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(bin_size), nn.Conv2d(in_channels, branch_channels, 1, bias=False),
                          nn.BatchNorm2d(branch_channels))
            for bin_size in bins
        )
        self.bottleneck = conv_bn_relu(in_channels + len(bins) * branch_channels, out_channels, 1)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False)
                  for branch in self.branches]
        return self.dropout(self.bottleneck(torch.cat([*pooled, x], dim=1)))


class SANet(nn.Module):
    """SANet (Fig. 3): (B, in_channels, H, W) -> logits (B, num_classes, H, W); H, W multiples of 16.

    Args:
        num_classes: output channels (background included; softmax over them).
        in_channels: input channels (1 for a CT slice).
        decoder_channels: width of the pyramid (128, §3.2.4).
        bins: PPM pooling sizes (1, 2, 3, 6).
        ppm_dropout: Dropout2d after the PPM (public code: 0.1).

    Sub-modules: ``encoder``, ``ppm``, and per encoder level i = 0, 1, 2 (layer1..layer3)
    ``lateral[i]`` (1x1 CBR), ``align[i]`` (SAM) and ``smooth[i]`` (3x3 CBR); ``fuse`` (3x3 CBR over the
    concatenated pyramid) and ``classifier`` (1x1 conv).
    """

    def __init__(self, num_classes: int = 2, in_channels: int = 1, decoder_channels: int = DECODER_CHANNELS,
                 bins: Sequence[int] = PPM_BINS, ppm_dropout: float = 0.1) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1:
            raise ValueError(f"SANet needs num_classes >= 1 and in_channels >= 1, got {num_classes}, {in_channels}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.encoder = DilatedResNet18Encoder(in_channels)
        self.ppm = PyramidPooling(ENCODER_CHANNELS[-1], decoder_channels, decoder_channels, bins, ppm_dropout)
        skips = ENCODER_CHANNELS[:-1]
        self.lateral = nn.ModuleList(conv_bn_relu(c, decoder_channels, 1) for c in skips)
        self.align = nn.ModuleList(SpatialAlignment(decoder_channels) for _ in skips)
        self.smooth = nn.ModuleList(conv_bn_relu(decoder_channels, decoder_channels, 3) for _ in skips)
        self.fuse = conv_bn_relu(len(ENCODER_CHANNELS) * decoder_channels, decoder_channels, 3)
        self.classifier = nn.Conv2d(decoder_channels, num_classes, kernel_size=1)
        self._initialise_decoder()

    def _initialise_decoder(self) -> None:
        """As the public code: Kaiming-uniform (fan-in) decoder convolutions, BN 1 / 0, Xavier classifier."""
        for part in (self.ppm, self.lateral, self.align, self.smooth, self.fuse):
            for module in part.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_uniform_(module.weight, mode="fan_in", nonlinearity="relu")
                elif isinstance(module, nn.BatchNorm2d):
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def check_input(self, x: Tensor) -> None:
        """ValueError unless ``x`` is (B, in_channels, H, W) with H and W positive multiples of 16."""
        if (x.ndim != 4 or x.shape[1] != self.in_channels or not is_valid_input_size(int(x.shape[-2]))
                or not is_valid_input_size(int(x.shape[-1]))):
            raise ValueError(f"SANet needs an input (B, {self.in_channels}, H, W) with H and W multiples of "
                             f"{OUTPUT_STRIDE}; got shape {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, H, W) -> logits (B, num_classes, H, W)."""
        self.check_input(x)
        features = self.encoder(x)
        f = self.ppm(features[-1])  # (B, 128, H/16, W/16)
        pyramid = [f]
        for level in reversed(range(len(self.lateral))):  # layer3 (H/16), layer2 (H/8), layer1 (H/4)
            skip = self.lateral[level](features[level])
            f = skip + self.align[level](skip, f)  # SAM upsampling, added to the skip (§3.2.4)
            pyramid.append(self.smooth[level](f))
        pyramid.reverse()  # [H/4, H/8, H/16, H/16 (PPM)]
        size = pyramid[0].shape[-2:]
        fused = torch.cat([pyramid[0]] + [F.interpolate(p, size=size, mode="bilinear", align_corners=False)
                                          for p in pyramid[1:]], dim=1)  # (B, 512, H/4, W/4)
        logits = self.classifier(self.fuse(fused))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)  # x4
