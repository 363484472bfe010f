"""HCF's slice classifier (paper §3.1, Fig. 3): a ResNet18 that tells abnormal slices (with GTV) from normal ones.

At inference the segmentation network runs only on the slices the classifier calls abnormal; the
others get an all-zero mask (§3.1). The public code trains it with cross-entropy on single 512x512 slices
and takes a 5-fold majority vote (DESIGN.md, "HCF / SANet").
"""
from __future__ import annotations

from torch import nn
from torchvision.models import resnet18


def build_slice_classifier(in_channels: int = 1, num_classes: int = 2) -> nn.Module:
    """torchvision's ResNet18 (random weights) with its first convolution made for ``in_channels``.

    (B, in_channels, H, W) -> logits (B, num_classes); any H, W >= 32 (global average pooling).
    1 channel, 2 classes: 11,171,266 parameters (paper: HCF 23.99 M = SANet 12.82 M + 11.17 M).
    Reads no files: ``weights=None``, no download.
    """
    if in_channels < 1 or num_classes < 2:
        raise ValueError(f"slice classifier needs in_channels >= 1 and num_classes >= 2, got {in_channels}, "
                         f"{num_classes}")
    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's own init
    return model
