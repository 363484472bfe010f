"""Build an RCSegNeXt network, count its parameters, and compare the sizes with the paper's Table 3."""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, NamedTuple, Tuple

from torch import nn

from CRCSegmentationLib.networks.parameter_count import parameter_count
from CRCSegmentationLib.networks.rcsegnext.config import RCSegNeXtConfig
from CRCSegmentationLib.networks.rcsegnext.network import RCSegNeXt

# RCSegNeXt paper, Table 3 "#P(M)": (anisotropic-stage block, isotropic-stage block) -> millions.
TABLE3_PARAMETERS_M: Dict[Tuple[str, str], float] = {
    ("conv", "conv"): 22.14,
    ("aninext", "conv"): 22.07,
    ("aninext", "convnext"): 5.54,
    ("aninext", "res2net"): 8.11,
    ("aninext", "res2next"): 5.52,
    ("aninext", "isonext"): 2.76,
}
PAPER_CONFIG = RCSegNeXtConfig()  # §3.1: 1 input channel (T2), 3 classes, spacing (4.0, 0.875, 0.875)


def build_rcsegnext(config: RCSegNeXtConfig = PAPER_CONFIG) -> RCSegNeXt:
    """An RCSegNeXt with PyTorch's default initialisation (as the public code); reads no files."""
    return RCSegNeXt(config)


def dead_shortcut_parameters(model: nn.Module) -> int:
    """Parameters of the 1x1x1 shortcut convs the public code allocates but never uses.

    Its ConvNeXtBlock (AniNeXt) and ConvNeStBlock (IsoNeXt) always create ``conv_shortcut``
    (C_in x C_out weights + C_out biases) and apply it only when C_in != C_out, so each block with
    C_in == C_out = C carries C * C + C unused parameters. Its Conv baseline (Refined_UNetIN) has no
    shortcut. The public code has no ConvNeXt, Res2NeXt or Res2Net block; we assume they were made
    from those two blocks and carry the same dead weights, which brings all three to Table 3's sizes.
    """
    total = 0
    for module in model.modules():
        if getattr(module, "public_code_allocates_shortcut", False) and getattr(module, "shortcut", 1) is None:
            channels = module.in_channels
            total += channels * channels + channels
    return total


def public_code_parameter_count(model: nn.Module) -> int:
    """``parameter_count`` plus the public code's unused shortcuts: the count the paper reports.

    Paper configuration: 2,320,611 used + 438,752 dead = 2,759,363 (paper: 2.76 M).
    """
    return parameter_count(model) + dead_shortcut_parameters(model)


class Table3Row(NamedTuple):
    """One Table 3 variant: our parameter count, the public-code count and the paper's size."""

    anisotropic_block: str
    isotropic_block: str
    parameters: int  # ours: every parameter is used
    public_code_parameters: int  # ours + the public code's dead shortcuts (how the paper counts)
    paper_millions: float
    relative_difference: float  # public_code_parameters / (paper_millions * 1e6) - 1


def table3_rows(config: RCSegNeXtConfig = PAPER_CONFIG) -> List[Table3Row]:
    """The six Table 3 variants built on ``config`` (default: the paper's), in the table's order."""
    rows = []
    for (aniso, iso), paper in TABLE3_PARAMETERS_M.items():
        model = build_rcsegnext(replace(config, anisotropic_block=aniso, isotropic_block=iso))
        public = public_code_parameter_count(model)
        rows.append(Table3Row(aniso, iso, parameter_count(model), public, paper, public / (paper * 1e6) - 1.0))
    return rows


def format_table3(rows: List[Table3Row]) -> str:
    """A plain-text table of ``table3_rows()``."""
    header = ("aniso stage", "iso stage", "ours", "public-code rule", "paper (M)", "difference")
    lines = [
        (r.anisotropic_block, r.isotropic_block, f"{r.parameters:,}", f"{r.public_code_parameters:,}",
         f"{r.paper_millions:.2f}", f"{100.0 * r.relative_difference:+.2f} %")
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header] + lines) for i in range(len(header))]

    def fmt(row: Tuple[str, ...]) -> str:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:])]
        return "  ".join(cells)

    rule = "-" * len(fmt(header))
    return "\n".join(
        ["RCSegNeXt Table 3 parameter counts (difference: public-code rule vs paper)", fmt(header), rule]
        + [fmt(row) for row in lines]
    )
