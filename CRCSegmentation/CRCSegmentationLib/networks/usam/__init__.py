"""U-SAM: point-prompted, U-shaped Segment Anything for 2D rectum and rectal tumor segmentation.

CARE paper (Zhang et al.): a CNN encoder tokenises the slice for SAM's ViT-B, SAM's frozen prompt
encoder embeds the points, and a U-shaped decoder with skip connections outputs one logit map per class.
Weights, checkpoints, slice preprocessing and prompts live in ``CRCSegmentationLib.usam``.
"""
from CRCSegmentationLib.networks.usam.build import build_usam
from CRCSegmentationLib.networks.usam.config import USAMConfig
from CRCSegmentationLib.networks.usam.model import USAM, ImageEncoding

__all__ = ["USAM", "ImageEncoding", "USAMConfig", "build_usam"]
