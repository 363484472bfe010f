"""RCSegNeXt: anisotropic AniNeXt + multi-scale IsoNeXt U-Net for rectum and tumor in sagittal T2 MRI.

RCSegNeXt paper (MIDL 2025 submission): shallow anisotropic stages (1x3x3 kernels, 1x2x2 pooling)
while spacing_z / spacing_xy >= 2, then isotropic IsoNeXt stages with the Scale-Aware Integration
Module (SAIM). ``blocks`` also holds the Table 3 ablation blocks. nnU-Net integration lives in
``networks.nnunet_architectures``.
"""
from CRCSegmentationLib.networks.rcsegnext.blocks import (
    AniNeXtBlock,
    ConvNeXtBlock,
    HierarchicalScales,
    InvertedBottleneck,
    IsoNeXtBlock,
    PlainConvBlock,
    Res2NetBlock,
    Res2NeXtBlock,
    ScaleAwareIntegration,
    channel_shuffle,
    make_block,
    shuffle_permutation,
)
from CRCSegmentationLib.networks.rcsegnext.build import (
    TABLE3_PARAMETERS_M,
    Table3Row,
    build_rcsegnext,
    dead_shortcut_parameters,
    format_table3,
    parameter_count,
    public_code_parameter_count,
    table3_rows,
)
from CRCSegmentationLib.networks.rcsegnext.config import (
    ANISOTROPIC_BLOCKS,
    ISOTROPIC_BLOCKS,
    RCSegNeXtConfig,
    anisotropic_stage_count,
    level_channels,
    level_is_anisotropic,
    level_pooling,
    total_downsampling,
)
from CRCSegmentationLib.networks.rcsegnext.network import RCSegNeXt

__all__ = [
    "ANISOTROPIC_BLOCKS", "ISOTROPIC_BLOCKS", "TABLE3_PARAMETERS_M",
    "AniNeXtBlock", "ConvNeXtBlock", "HierarchicalScales", "InvertedBottleneck", "IsoNeXtBlock",
    "PlainConvBlock", "RCSegNeXt", "RCSegNeXtConfig", "Res2NetBlock", "Res2NeXtBlock",
    "ScaleAwareIntegration", "Table3Row",
    "anisotropic_stage_count", "build_rcsegnext", "channel_shuffle", "dead_shortcut_parameters",
    "format_table3", "level_channels", "level_is_anisotropic", "level_pooling", "make_block",
    "parameter_count", "public_code_parameter_count", "shuffle_permutation", "table3_rows",
    "total_downsampling",
]
