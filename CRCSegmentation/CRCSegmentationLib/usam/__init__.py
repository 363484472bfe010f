"""U-SAM: point-prompted, U-shaped Segment Anything for 2D rectum and rectal tumor segmentation.

CARE paper (Zhang et al.): a CNN encoder tokenises the slice for SAM's ViT-B, SAM's frozen prompt
encoder embeds the points, and a U-shaped decoder with skip connections outputs one logit map per class.
"""
from .build import build_usam
from .checkpoint import load_usam_checkpoint, read_usam_checkpoint, save_usam_checkpoint
from .config import USAMConfig
from .model import USAM, ImageEncoding
from .preprocess import SliceTransform, slice_to_input
from .sam_weights import LoadReport

__all__ = [
    "USAM",
    "ImageEncoding",
    "LoadReport",
    "SliceTransform",
    "USAMConfig",
    "build_usam",
    "load_usam_checkpoint",
    "read_usam_checkpoint",
    "save_usam_checkpoint",
    "slice_to_input",
]
