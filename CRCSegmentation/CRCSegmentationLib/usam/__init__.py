"""U-SAM at work: SAM weight mapping, checkpoints, slice preprocessing and point prompts (CARE paper).

The network itself is ``CRCSegmentationLib.networks.usam``.
"""
from .checkpoint import load_usam_checkpoint, read_usam_checkpoint, save_usam_checkpoint
from .preprocess import SliceTransform, slice_to_input
from .sam_weights import LoadReport, usam_with_sam_weights

__all__ = [
    "LoadReport",
    "SliceTransform",
    "load_usam_checkpoint",
    "read_usam_checkpoint",
    "save_usam_checkpoint",
    "slice_to_input",
    "usam_with_sam_weights",
]
