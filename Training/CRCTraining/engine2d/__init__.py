"""One 2D training engine for U-SAM, the HCF slice classifier and SANet.

A method describes itself as an ``EngineTask`` (data, network, optimiser, loss, validation, checkpoint
format); ``train(task, settings)`` runs it on one device or, under ``torchrun``, on several processes with
PyTorch's ``DistributedDataParallel`` (NCCL on GPUs, gloo on CPU). Everything else is the engine's:
the ``DistributedSampler`` batches, AMP on CUDA, resumable checkpoints, the learning-rate schedule,
validation each epoch with early stopping, tqdm, the training log and curve, all on rank 0.
"""
from CRCTraining.engine2d.batches import EpochBatches, sample_seed
from CRCTraining.engine2d.distributed import DistributedContext, distributed_context, is_main_process
from CRCTraining.engine2d.engine import EngineResult, train
from CRCTraining.engine2d.schedules import SCHEDULES, learning_rate_factor
from CRCTraining.engine2d.settings import EngineSettings
from CRCTraining.engine2d.task import EngineTask

__all__ = [
    "DistributedContext", "EngineResult", "EngineSettings", "EngineTask", "EpochBatches", "SCHEDULES",
    "distributed_context", "is_main_process", "learning_rate_factor", "sample_seed", "train",
]
