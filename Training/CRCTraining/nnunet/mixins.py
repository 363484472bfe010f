"""Mixins that change one thing each in nnU-Net v2's ``nnUNetTrainer`` (nnU-Net's trainer-variant style).

Compose them before ``nnUNetTrainer`` in a class's bases, e.g.
``class nnUNetTrainerAGCRC(ScheduleFromEnvironmentMixin, AGSamplingTrainerMixin, AFLossTrainerMixin, nnUNetTrainer)``.
The generic hooks are here; each method's mixin sits beside its mechanism in the method's folder
(``agcrc/af_loss.py``, ``agcrc/ssl.py``, ``agcrc/nnunet_sampling.py``, ``flare24/``, ``rcsegnext/mixins.py``).
None defines another ``__init__`` signature: nnU-Net records its own constructor
arguments by name, and its command line builds trainers with exactly those.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from CRCTraining.worker_lifetime import die_with_parent
from OrganGuidanceLib.atomic import atomic_path

# Environment variables that shorten or lengthen training without a new trainer class
# (our CLI sets them from --epochs / --iterations; nnUNetv2_train users may set them too).
ENV_EPOCHS = "CRCSEG_EPOCHS"
ENV_ITERATIONS = "CRCSEG_ITERATIONS_PER_EPOCH"
ENV_VAL_ITERATIONS = "CRCSEG_VAL_ITERATIONS"
ENV_FINAL_VALIDATION = "CRCSEG_FINAL_VALIDATION"  # "0": skip nnU-Net's sliding-window validation after training
ENV_SAVE_EVERY = "CRCSEG_SAVE_EVERY"  # epochs between resumable checkpoints (nnU-Net: 50)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    number = int(value)
    if number < 1:
        raise ValueError(f"{name}={value}: must be a positive integer")
    return number


class AtomicCheckpointMixin:
    """nnU-Net writes ``checkpoint_latest.pth`` in place: a run killed mid-write leaves a truncated file,
    and the rerun (``--c``) then fails to load it. Written to a temporary file and renamed instead."""

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:  # nnU-Net writes nothing then (it logs why)
            return super().save_checkpoint(filename)
        with atomic_path(Path(filename), ".pth") as temporary:
            super().save_checkpoint(str(temporary))


class ScheduleFromEnvironmentMixin(AtomicCheckpointMixin):
    """Epoch and iteration counts from ``CRCSEG_*`` variables (defaults: nnU-Net's 1000 x 250 / 50).

    Every trainer of ours composes this mixin, so it also brings ``AtomicCheckpointMixin``'s atomic
    checkpoint writes to all of them, and makes a DDP rank die with the process that spawned it
    (``worker_lifetime.die_with_parent``; a no-op in a process that ``multiprocessing`` did not start).
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        die_with_parent()  # a DDP rank (spawned): dies with the launcher, as its workers die with it
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = _env_int(ENV_EPOCHS) or self.num_epochs
        self.num_iterations_per_epoch = _env_int(ENV_ITERATIONS) or self.num_iterations_per_epoch
        self.num_val_iterations_per_epoch = _env_int(ENV_VAL_ITERATIONS) or self.num_val_iterations_per_epoch
        self.save_every = _env_int(ENV_SAVE_EVERY) or self.save_every

    def perform_actual_validation(self, save_probabilities: bool = False):
        if os.environ.get(ENV_FINAL_VALIDATION, "1") == "0":
            self.print_to_log_file(f"final validation skipped ({ENV_FINAL_VALIDATION}=0)")
            return
        super().perform_actual_validation(save_probabilities)


class NoDeepSupervisionMixin:
    """Trains one output, as nnU-Net's ``nnUNetTrainerNoDeepSupervision``, for networks built without the
    deep-supervision heads (the SSL reconstruction network, RCSegNeXt)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
