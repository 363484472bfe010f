"""nnU-Net v2 trainers for AG-sampling and the sampling ablations of AG-CRC Table VI.

nnU-Net finds them through ``nnUNet_extTrainer=<this folder>`` and imports this file as a top-level module, so
imports here are absolute. ``nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainerAGSampling``.
The "Hybrid uniform" row of Table VI is nnU-Net's default sampling: the plain ``nnUNetTrainer``.
"""
from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from CRCTraining.agcrc.nnunet_sampling import AGSamplingTrainerMixin
from CRCTraining.nnunet.mixins import ScheduleFromEnvironmentMixin


class nnUNetTrainerAGSampling(ScheduleFromEnvironmentMixin, AGSamplingTrainerMixin, nnUNetTrainer):
    """AG-sampling: centres drawn from the PSM, AG-CRC Eq. 1-6 (Table VI, "AG sampling (ours)")."""

    sampling_strategy = "ag"


class nnUNetTrainerSamplingUniform(ScheduleFromEnvironmentMixin, AGSamplingTrainerMixin, nnUNetTrainer):
    """Table VI "Uniform": centres uniform over the grid."""

    sampling_strategy = "uniform"


class nnUNetTrainerSamplingUniformOOI(ScheduleFromEnvironmentMixin, AGSamplingTrainerMixin, nnUNetTrainer):
    """Table VI "Uniform OOI": centres uniform over the OOI."""

    sampling_strategy = "uniform_ooi"


class nnUNetTrainerSamplingUniformColon(ScheduleFromEnvironmentMixin, AGSamplingTrainerMixin, nnUNetTrainer):
    """Table VI "Uniform colon": centres uniform over colon + rectum."""

    sampling_strategy = "uniform_colon"


class nnUNetTrainerSamplingHybridOOI(ScheduleFromEnvironmentMixin, AGSamplingTrainerMixin, nnUNetTrainer):
    """Table VI "Hybrid OOI": 67 % of centres from the OOI, 33 % from the tumor."""

    sampling_strategy = "hybrid_ooi"


class nnUNetTrainerSamplingHybridColon(ScheduleFromEnvironmentMixin, AGSamplingTrainerMixin, nnUNetTrainer):
    """Table VI "Hybrid colon": 67 % of centres from colon + rectum, 33 % from the tumor."""

    sampling_strategy = "hybrid_colon"
