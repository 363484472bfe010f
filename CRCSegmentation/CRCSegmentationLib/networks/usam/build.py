"""Build a U-SAM network from its configuration (reads no files: weights are mapped in by ``usam.sam_weights``)."""
from __future__ import annotations

from CRCSegmentationLib.networks.usam.config import USAMConfig
from CRCSegmentationLib.networks.usam.model import USAM


def build_usam(config: USAMConfig = USAMConfig()) -> USAM:
    """A U-SAM network with random weights (CARE paper, Fig. 2)."""
    return USAM(config)
