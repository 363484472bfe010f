"""RCSegNeXt from an nnU-Net v2 configuration: the options ``crcseg rcsegnext-plans`` writes, the spacing, the patch.

One function serves the trainer (``CRCTraining``'s ``nnUNetTrainerRCSegNeXt``) and prediction
(``nnunet_architectures``), so a bundle builds exactly the network it was trained with and needs no
``CRCTraining``. nnU-Net keeps a configuration's raw dictionary as ``ConfigurationManager.configuration``;
our options sit there under ``"rcsegnext"`` (nnU-Net ignores keys it does not know).

The spacing is the configuration's own, in nnU-Net's transposed axis order (largest spacing first:
``ExperimentPlanner.determine_transpose``), so the network's anisotropic axis (tensor axis D) is the
thick axis of the scan whatever the file's orientation, e.g. left-right on a sagittal MRI.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

from torch import nn

from CRCSegmentationLib.networks.rcsegnext import RCSegNeXtConfig, build_rcsegnext, total_downsampling

PLANS_OPTIONS_KEY = "rcsegnext"  # configuration-level key of the plans
OPTION_FIELDS = ("width", "expansion", "scales", "anisotropic_block", "isotropic_block", "levels", "blocks_per_stage")


class PatchSizeError(ValueError):
    """The configuration's patch cannot go through the network's poolings."""


def plans_options(configuration: Dict[str, Any]) -> Dict[str, Any]:
    """The RCSegNeXt options stored in a configuration dictionary (``{}``: the paper's network)."""
    options = dict(configuration.get(PLANS_OPTIONS_KEY) or {})
    unknown = sorted(set(options) - set(OPTION_FIELDS))
    if unknown:
        raise ValueError(f"plans: unknown RCSegNeXt options {unknown} (known: {list(OPTION_FIELDS)})")
    return options


def config_for(spacing: Sequence[float], num_input_channels: int, num_classes: int,
               options: Dict[str, Any]) -> RCSegNeXtConfig:
    return RCSegNeXtConfig(in_channels=int(num_input_channels), num_classes=int(num_classes),
                           spacing=tuple(float(s) for s in spacing), **options)  # type: ignore[arg-type]


def check_patch_size(patch_size: Sequence[int], config: RCSegNeXtConfig, where: str) -> None:
    """``PatchSizeError`` unless every patch axis is a multiple of the network's total downsampling."""
    divisor = total_downsampling(config)
    if any(int(p) % d for p, d in zip(patch_size, divisor)):
        raise PatchSizeError(
            f"{where}: patch size {list(patch_size)} is not divisible by RCSegNeXt's total downsampling "
            f"{list(divisor)} (spacing {list(config.spacing)} mm); run `crcseg rcsegnext-plans` to write a "
            "configuration whose patch fits"
        )
    if all(int(p) == d for p, d in zip(patch_size, divisor)):  # InstanceNorm needs more than one voxel
        raise PatchSizeError(
            f"{where}: patch size {list(patch_size)} equals RCSegNeXt's total downsampling {list(divisor)}: its "
            "deepest level would be a single voxel, where instance normalisation is undefined; use a larger patch"
        )


def rcsegnext_from_plans(plans_manager, configuration_manager, num_input_channels: int,
                         num_output_channels: int) -> nn.Module:
    """The RCSegNeXt of an nnU-Net configuration (no deep supervision: the paper's network has none)."""
    raw = configuration_manager.configuration
    config = config_for(configuration_manager.spacing, num_input_channels, num_output_channels, plans_options(raw))
    check_patch_size(configuration_manager.patch_size, config,
                     f"the plans configuration of {configuration_manager.data_identifier}")
    return build_rcsegnext(config)
