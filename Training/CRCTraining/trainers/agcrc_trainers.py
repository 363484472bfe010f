"""AG-CRC trainers for nnU-Net v2, found by name through ``nnUNet_extTrainer``.

nnU-Net imports the files of this folder as top-level modules, so they use
absolute imports only. Each class composes mixins that change one thing
(``CRCTraining.nnunet.mixins``, ``CRCTraining.agcrc.sampling``):

| trainer | AG-CRC | what changes |
|---|---|---|
| nnUNetTrainerAFLoss | Eq. 8, Table VIII | anatomy-focalized loss |
| nnUNetTrainerAGCRC | §III-C + §III-E | AG-sampling (Eq. 1-6) + AF-loss; add nnU-Net's ``-pretrained_weights`` from AG-SSL for the full method |
| nnUNetTrainerAGSSL | Eq. 7, Table VII | bowel-wall masked reconstruction pretraining |
| nnUNetTrainerSSLInpaint | Table VII | random-block inpainting pretraining |
| nnUNetTrainerSSLMAE | Table VII | MAE-style patch masking pretraining |
| nnUNetTrainerBaseline | Table VI "hybrid" | nnU-Net's default (only the schedule knobs added) |
"""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from CRCTraining.agcrc.af_loss import AFLossTrainerMixin
from CRCTraining.agcrc.nnunet_sampling import AGSamplingTrainerMixin
from CRCTraining.agcrc.ssl import SSLPretrainingTrainerMixin
from CRCTraining.nnunet.mixins import ScheduleFromEnvironmentMixin


class nnUNetTrainerBaseline(ScheduleFromEnvironmentMixin, nnUNetTrainer):
    pass


class nnUNetTrainerAFLoss(ScheduleFromEnvironmentMixin, AFLossTrainerMixin, nnUNetTrainer):
    pass


class nnUNetTrainerAGCRC(ScheduleFromEnvironmentMixin, AGSamplingTrainerMixin, AFLossTrainerMixin, nnUNetTrainer):
    pass


class nnUNetTrainerAGSSL(ScheduleFromEnvironmentMixin, SSLPretrainingTrainerMixin, nnUNetTrainer):
    ssl_masking = "bowel_wall"


class nnUNetTrainerSSLInpaint(ScheduleFromEnvironmentMixin, SSLPretrainingTrainerMixin, nnUNetTrainer):
    ssl_masking = "inpaint"


class nnUNetTrainerSSLMAE(ScheduleFromEnvironmentMixin, SSLPretrainingTrainerMixin, nnUNetTrainer):
    ssl_masking = "mae"
