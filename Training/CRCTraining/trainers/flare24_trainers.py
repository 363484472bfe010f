"""FLARE24 organ-interference trainers for nnU-Net v2, found by name through ``nnUNet_extTrainer``.

nnU-Net imports the files of this folder as top-level modules, so they use absolute imports only. Train them on
an organ-interference dataset (background 0, organs 1..K from the MOS, tumour K + 1, labelled "tumor" in
dataset.json); they keep nnU-Net's default network (``CRCSegmentationLib.networks.nnunet_architectures``).

| trainer | FLARE24 / AG-CRC | what changes |
|---|---|---|
| nnUNetTrainerOrganInterference | §2.2, Eq. 1-3 | class-first patch sampling (tumour 5, organs 1) + class-weighted Dice + CE |
| nnUNetTrainerOrganInterferencePaperAlpha | §2.2, Eq. 3 as printed | the same with α_dc = α_ce = 0.5 (public code: 1 and 1) |
| nnUNetTrainerOrganInterferenceAFLoss | §2.2 + AG-CRC Eq. 8 | the same, with the loss computed on prediction x OOI (AF-loss) |

The loss is the public code's (``flare24_losses``): Dice + CE with weights 1 and 1 under nnU-Net's SGD, the
class-weighted CE averaged per sample, and a 50-epoch warm-up that mixes the uniform- and class-weighted losses.

AG-sampling is not combined with class-first sampling: both choose the patch centres (AG-CRC's PSM from the OOI
and the tumour; FLARE24's class -> case -> voxel), so one must give way. These trainers keep FLARE24's, which
is what makes the organ labels and the x5 tumour weight reach the sampled patches; the AF-loss composes, since
it only masks the prediction (the input must carry the OOI as channel 2, which ``crcseg prepare`` writes).
"""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from CRCTraining.agcrc.af_loss import AFLossTrainerMixin
from CRCTraining.flare24.class_first_sampling import ClassFirstSamplingTrainerMixin
from CRCTraining.flare24.losses import PAPER_ALPHA, ClassWeightedLossTrainerMixin
from CRCTraining.nnunet.mixins import ScheduleFromEnvironmentMixin


class nnUNetTrainerOrganInterference(ScheduleFromEnvironmentMixin, ClassFirstSamplingTrainerMixin,
                                     ClassWeightedLossTrainerMixin, nnUNetTrainer):
    """FLARE24 organ interference: class-first sampling and the class-weighted Dice + CE (Eq. 1-3), α = 1 and 1."""


class nnUNetTrainerOrganInterferencePaperAlpha(nnUNetTrainerOrganInterference):
    """The paper's Eq. 3 weights α_dc = α_ce = 0.5 instead of the public code's 1 and 1: the same loss halved,
    so half the gradient (the effective learning rate under SGD)."""

    loss_alpha_dice = PAPER_ALPHA
    loss_alpha_ce = PAPER_ALPHA


class nnUNetTrainerOrganInterferenceAFLoss(ScheduleFromEnvironmentMixin, ClassFirstSamplingTrainerMixin,
                                           AFLossTrainerMixin, ClassWeightedLossTrainerMixin, nnUNetTrainer):
    """FLARE24 organ interference with AG-CRC's AF-loss (Eq. 8) around the class-weighted Dice + CE."""
