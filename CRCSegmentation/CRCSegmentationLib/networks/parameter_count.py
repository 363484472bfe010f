"""The size of a network as the papers report it (RCSegNeXt Table 3, HCF Table 2)."""
from __future__ import annotations

from torch import nn


def parameter_count(module: nn.Module) -> int:
    """Number of parameters of ``module`` (in our networks all are trainable and used in forward)."""
    return sum(p.numel() for p in module.parameters())
