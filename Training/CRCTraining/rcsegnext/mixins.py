"""nnU-Net v2 trainer mixins for RCSegNeXt: its network, and the paper's training schedule.

Compose ``RCSegNeXtNetworkMixin`` before ``nnUNetTrainer`` (and after ``ScheduleFromEnvironmentMixin``)
to train RCSegNeXt in place of nnU-Net's default network; every sampling or loss mixin composes with it,
because it changes nothing but the network. The public RCSegNeXt trainer overrides
``build_network_architecture`` with nnU-Net's older signature, which nnU-Net 2.8.1 no longer calls
from its trainer; this one has 2.8.1's (DESIGN.md, "Facts for the three remaining methods").
"""
from __future__ import annotations

import torch
from torch import nn

from CRCTraining.nnunet.mixins import NoDeepSupervisionMixin

PAPER_EPOCHS = 100  # RCSegNeXt §3.1


class RCSegNeXtNetworkMixin(NoDeepSupervisionMixin):
    """RCSegNeXt (``CRCSegmentationLib.networks.rcsegnext``) from the configuration's spacing and options.

    No deep supervision: the paper's network has one output (§2.1, Fig. 2). The configuration's patch
    must be a multiple of the network's total downsampling; ``crcseg rcsegnext-plans`` writes one that is,
    and a configuration that is not fails when the network is built, before the first iteration.
    """

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        # enable_deep_supervision is ignored: the trainer passes False (set above), the predictor always False.
        from CRCSegmentationLib.networks.rcsegnext.plans import rcsegnext_from_plans

        return rcsegnext_from_plans(plans_manager, configuration_manager, num_input_channels, num_output_channels)

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """nnU-Net's default sets ``network.decoder.deep_supervision``; RCSegNeXt has no such switch."""


class PaperScheduleMixin:
    """RCSegNeXt §3.1: SGD with momentum 0.99, initial lr 0.01, 'poly' decay, 100 epochs.

    nnU-Net's ``configure_optimizers`` already is that SGD (lr 1e-2, momentum 0.99, Nesterov, weight
    decay 3e-5) with ``PolyLRScheduler`` over ``num_epochs`` (the public RCSegNeXt trainer inherits it),
    so only the epoch count changes. ``CRCSEG_EPOCHS`` still wins when set (``ScheduleFromEnvironmentMixin``
    comes first in the bases). The paper's batch size 2 and patch 16 x 320 x 320 belong to the plans:
    ``crcseg rcsegnext-plans --paper``.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = PAPER_EPOCHS
