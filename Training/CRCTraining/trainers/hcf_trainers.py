"""HCF (Shi et al., CMIG 2024) trainers for nnU-Net v2, found by name through ``nnUNet_extTrainer``.

nnU-Net imports the files of this folder as top-level modules, so they use absolute imports only.

| trainer | HCF | what changes |
|---|---|---|
| nnUNetTrainerCRLoss | §3.3, Eq. 4-8 | nnU-Net's Dice + CE replaced by the CR loss (Dice + 0.9 CE + 0.1 ε) |

It keeps nnU-Net's default network (``CRCSegmentationLib.networks.nnunet_architectures``): the CR loss on
its own, as an ablation next to HCF's two-stage classifier + SANet pipeline.
"""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from CRCTraining.hcf.cr_loss import CRLossTrainerMixin
from CRCTraining.nnunet.mixins import ScheduleFromEnvironmentMixin


class nnUNetTrainerCRLoss(ScheduleFromEnvironmentMixin, CRLossTrainerMixin, nnUNetTrainer):
    """nnU-Net with HCF's CR loss (Eq. 4-8, α = 0.1) at every deep-supervision level."""
