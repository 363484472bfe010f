"""HCF (heterogeneous cascade framework, Shi et al., CMIG 2024): a slice classifier, then SANet on abnormal slices.

``slice_classifier``: ResNet18 abnormal-vs-normal slice classifier (§3.1), with the public code's dropout
before its last layer. ``sanet``: the 2D Spatial Alignment Network (§3.2, Fig. 3) with its ``alignment``
module (SAM, Eq. 1-3). ``build``: builders and the paper's parameter counts. Training (CR loss, balance
sampling) lives in ``CRCTraining``.
"""
from CRCSegmentationLib.networks.hcf.alignment import SpatialAlignment, align_upsample, identity_grid
from CRCSegmentationLib.networks.hcf.build import (
    PAPER_HCF_PARAMETERS_M,
    PAPER_SANET_PARAMETERS_M,
    PUBLIC_CODE_SANET_PARAMETERS_M,
    SLICE_CLASSIFIER_PARAMETERS_M,
    build_hcf,
    build_sanet,
)
from CRCSegmentationLib.networks.hcf.sanet import (
    OUTPUT_STRIDE,
    DilatedResNet18Encoder,
    PyramidPooling,
    SANet,
    dilate_stage,
    is_valid_input_size,
)
from CRCSegmentationLib.networks.hcf.slice_classifier import (
    PUBLIC_FINAL_DROPOUT,
    DropoutLinear,
    build_slice_classifier,
)
from CRCSegmentationLib.networks.parameter_count import parameter_count

__all__ = [
    "OUTPUT_STRIDE", "PAPER_HCF_PARAMETERS_M", "PAPER_SANET_PARAMETERS_M", "PUBLIC_CODE_SANET_PARAMETERS_M",
    "PUBLIC_FINAL_DROPOUT", "SLICE_CLASSIFIER_PARAMETERS_M",
    "DilatedResNet18Encoder", "DropoutLinear", "PyramidPooling", "SANet", "SpatialAlignment",
    "align_upsample", "build_hcf", "build_sanet", "build_slice_classifier", "dilate_stage", "identity_grid",
    "is_valid_input_size", "parameter_count",
]
