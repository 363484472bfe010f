"""RCSegNeXt trainers for nnU-Net v2, found by name through ``nnUNet_extTrainer``.

nnU-Net imports the files of this folder as top-level modules, so they use absolute imports only.
Train them on a configuration written by ``crcseg rcsegnext-plans`` (default ``3d_fullres_rcsegnext``),
whose patch the network's poolings divide. The network comes from ``CRCSegmentationLib``
(``networks.nnunet_architectures`` maps these names to ``rcsegnext``), so their bundles predict without
``CRCTraining``.

| trainer | paper | what changes |
|---|---|---|
| nnUNetTrainerRCSegNeXt | RCSegNeXt §2, Fig. 2 | the network (AniNeXt + IsoNeXt/SAIM), no deep supervision |
| nnUNetTrainerRCSegNeXtPaperSchedule | RCSegNeXt §3.1 | + 100 epochs of SGD 0.99 / lr 0.01 poly |
| nnUNetTrainerRCSegNeXtAGCRC | + AG-CRC §III-C, §III-E | + AG-sampling and AF-loss (CT + MOS + OOI input) |
| nnUNetTrainerRCSegNeXtOrganInterference | + FLARE24 §2.2 | + class-first sampling and class-weighted Dice + CE |
"""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from CRCTraining.agcrc.af_loss import AFLossTrainerMixin
from CRCTraining.agcrc.nnunet_sampling import AGSamplingTrainerMixin
from CRCTraining.flare24.class_first_sampling import ClassFirstSamplingTrainerMixin
from CRCTraining.flare24.losses import ClassWeightedLossTrainerMixin
from CRCTraining.nnunet.mixins import ScheduleFromEnvironmentMixin
from CRCTraining.rcsegnext.mixins import PaperScheduleMixin, RCSegNeXtNetworkMixin


class nnUNetTrainerRCSegNeXt(ScheduleFromEnvironmentMixin, RCSegNeXtNetworkMixin, nnUNetTrainer):
    """RCSegNeXt with nnU-Net's default sampling, loss and optimiser."""


class nnUNetTrainerRCSegNeXtPaperSchedule(ScheduleFromEnvironmentMixin, PaperScheduleMixin, RCSegNeXtNetworkMixin,
                                          nnUNetTrainer):
    """RCSegNeXt trained as in its paper (§3.1): 100 epochs."""


class nnUNetTrainerRCSegNeXtAGCRC(ScheduleFromEnvironmentMixin, RCSegNeXtNetworkMixin, AGSamplingTrainerMixin,
                                  AFLossTrainerMixin, nnUNetTrainer):
    """RCSegNeXt with AG-CRC's AG-sampling (Eq. 1-6) and AF-loss (Eq. 8) on a CT + MOS + OOI dataset."""


class nnUNetTrainerRCSegNeXtOrganInterference(ScheduleFromEnvironmentMixin, RCSegNeXtNetworkMixin,
                                              ClassFirstSamplingTrainerMixin, ClassWeightedLossTrainerMixin,
                                              nnUNetTrainer):
    """RCSegNeXt with FLARE24's organ interference (class-first sampling, class-weighted loss, Eq. 1-3)."""
