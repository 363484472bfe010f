"""U-SAM at work: SAM weight mapping, checkpoints, slice preprocessing and point prompts (CARE paper).

The network itself is ``CRCSegmentationLib.networks.usam``.
"""
from CRCSegmentationLib.usam.checkpoint import load_usam_checkpoint, read_usam_checkpoint, save_usam_checkpoint
from CRCSegmentationLib.usam.preprocess import SliceTransform, slice_to_input
from CRCSegmentationLib.usam.sam_weights import LoadReport, usam_with_sam_weights

__all__ = [
    "LoadReport",
    "SliceTransform",
    "load_usam_checkpoint",
    "read_usam_checkpoint",
    "save_usam_checkpoint",
    "slice_to_input",
    "usam_with_sam_weights",
]
