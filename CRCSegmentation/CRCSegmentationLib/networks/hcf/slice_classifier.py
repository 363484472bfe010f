"""HCF's slice classifier (paper §3.1, Fig. 3): a ResNet18 that tells abnormal slices (with GTV) from normal ones.

At inference the segmentation network runs only on the slices the classifier calls abnormal; the
others get an all-zero mask (§3.1). The public code trains it with cross-entropy on single 512x512 slices
and takes a 5-fold majority vote (DESIGN.md, "HCF / SANet").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

# The public code (shijun18/GTV_AutoSeg, cls/config.py "drop_rate": 0.2) drops the pooled features before the
# last layer; the paper does not say so (DESIGN.md, "What the public code does that the papers do not say").
PUBLIC_FINAL_DROPOUT = 0.2


class DropoutLinear(nn.Linear):
    """``nn.Linear`` that applies ``Dropout(p)`` to its input first: the public classifier's ``drop`` then ``fc``.

    The dropout has no parameters or buffers, so the state dict keeps ``fc.weight`` / ``fc.bias``: checkpoints of
    the classifier with or without it load into each other strictly. In eval mode dropout is the identity, so
    inference is unchanged.
    """

    def __init__(self, in_features: int, out_features: int, p: float = PUBLIC_FINAL_DROPOUT, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.dropout = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.dropout(x), self.weight, self.bias)


def build_slice_classifier(in_channels: int = 1, num_classes: int = 2,
                           dropout: float = PUBLIC_FINAL_DROPOUT) -> nn.Module:
    """torchvision's ResNet18 (random weights) with its first convolution made for ``in_channels`` and, when
    ``dropout > 0``, ``Dropout(dropout)`` before the final layer (the public code's 0.2; 0: plain ResNet18).

    (B, in_channels, H, W) -> logits (B, num_classes); any H, W >= 32 (global average pooling).
    1 channel, 2 classes: 11,171,266 parameters (paper: HCF 23.99 M = SANet 12.82 M + 11.17 M), with or without
    the dropout, and the same state-dict keys. Reads no files: ``weights=None``, no download.
    """
    if in_channels < 1 or num_classes < 2:
        raise ValueError(f"slice classifier needs in_channels >= 1 and num_classes >= 2, got {in_channels}, "
                         f"{num_classes}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"slice classifier dropout must be in [0, 1), got {dropout}")
    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's own init
    if dropout > 0:
        final = DropoutLinear(model.fc.in_features, num_classes, float(dropout))
        final.load_state_dict(model.fc.state_dict())  # torchvision's initialisation of fc, kept
        model.fc = final
    return model
