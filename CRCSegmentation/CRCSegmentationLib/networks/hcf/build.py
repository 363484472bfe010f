"""Builders and the paper's parameter counts of HCF's two networks (paper Table 2), reading no files."""
from __future__ import annotations

from CRCSegmentationLib.networks.hcf.sanet import SANet
from CRCSegmentationLib.networks.hcf.slice_classifier import build_slice_classifier

# Millions of parameters: paper Table 2 and what DESIGN.md measured from the public code.
PAPER_SANET_PARAMETERS_M = 12.82
PAPER_HCF_PARAMETERS_M = 23.99  # SANet + slice classifier
PUBLIC_CODE_SANET_PARAMETERS_M = 12.71
SLICE_CLASSIFIER_PARAMETERS_M = 11.17  # 1-channel, 2-class ResNet18


def build_sanet(num_classes: int = 2, in_channels: int = 1) -> SANet:
    """A randomly initialised SANet (see ``sanet``); (B, in_channels, H, W) -> (B, num_classes, H, W)."""
    return SANet(num_classes=num_classes, in_channels=in_channels)


def build_hcf(num_classes: int = 2, in_channels: int = 1):
    """HCF's two stages: (slice classifier (abnormal vs normal slice), SANet), both randomly initialised."""
    return build_slice_classifier(in_channels, 2), build_sanet(num_classes, in_channels)

