"""Mixins that change one thing each in nnU-Net v2's ``nnUNetTrainer`` (nnU-Net's trainer-variant style).

Compose them before ``nnUNetTrainer`` in a class's bases, e.g.
``class nnUNetTrainerAGCRC(ScheduleFromEnvironmentMixin, AGSamplingTrainerMixin, AFLossTrainerMixin, nnUNetTrainer)``.
None defines another ``__init__`` signature: nnU-Net records its own constructor
arguments by name, and its command line builds trainers with exactly those.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

import numpy as np
import torch
from torch import nn

from OrganGuidanceLib.atomic import atomic_path

from .losses import AnatomyFocalizedLoss, ooi_from_input, set_loss_focus
from .ssl_masking import mask_ct_channel, ssl_region
from .worker_lifetime import die_with_parent

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


class AFLossTrainerMixin:
    """AG-CRC Eq. 8: nnU-Net's Dice + CE computed on prediction x OOI, at every deep-supervision level."""

    def _build_loss(self):
        loss = super()._build_loss()
        inner = getattr(loss, "loss", None)  # nnU-Net's DeepSupervisionWrapper keeps the per-level loss as .loss
        if inner is not None:
            loss.loss = AnatomyFocalizedLoss(inner)
            return loss
        return AnatomyFocalizedLoss(loss)

    def train_step(self, batch: dict) -> dict:
        set_loss_focus(self.loss, ooi_from_input(batch["data"]).to(self.device))
        return super().train_step(batch)

    def validation_step(self, batch: dict) -> dict:
        set_loss_focus(self.loss, ooi_from_input(batch["data"]).to(self.device))
        return super().validation_step(batch)


class NoDeepSupervisionMixin:
    """Trains one output, as nnU-Net's ``nnUNetTrainerNoDeepSupervision``, for networks built without the
    deep-supervision heads (the SSL reconstruction network, RCSegNeXt)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False


class SSLPretrainingTrainerMixin(NoDeepSupervisionMixin):
    """AG-CRC Eq. 7: reconstruct the CT channel from a masked input with an L1 loss.

    ``ssl_masking`` picks the task: "bowel_wall" (AG-SSL; the SSL dataset carries the
    bowel wall as its segmentation target, so nnU-Net's augmentation moves it with
    the image), "inpaint" or "mae" (Table VII). The network has one output channel
    and no deep supervision; its encoder and decoder initialise supervised training
    through nnU-Net's ``-pretrained_weights`` (the 1x1 output layers are not carried over).
    """

    ssl_masking = "bowel_wall"

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        # One output: the reconstructed CT channel.
        return nnUNetTrainer.build_network_architecture(
            plans_manager, configuration_manager, num_input_channels, 1, False
        )

    def _build_loss(self):
        return nn.L1Loss()

    def _reconstruction_batch(self, batch: dict) -> dict:
        data = batch["data"]
        target = batch["target"]
        target = target[0] if isinstance(target, list) else target
        region = ssl_region(self.ssl_masking, data, target)
        return {**batch, "data": mask_ct_channel(data, region), "target": data[:, :1].clone()}

    def train_step(self, batch: dict) -> dict:
        return super().train_step(self._reconstruction_batch(batch))

    def validation_step(self, batch: dict) -> dict:
        batch = self._reconstruction_batch(batch)
        self.network.eval()
        with torch.no_grad():
            output = self.network(batch["data"].to(self.device, non_blocking=True))
            loss = self.loss(output, batch["target"].to(self.device, non_blocking=True))
        return {"loss": loss.detach().cpu().numpy()}

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        loss = float(np.mean([o["loss"] for o in val_outputs]))
        if self.is_ddp:
            import torch.distributed as dist

            losses = [None] * dist.get_world_size()
            dist.all_gather_object(losses, loss)
            loss = float(np.mean(losses))
        # nnU-Net keeps the "best" checkpoint by an EMA of mean_fg_dice: for reconstruction, higher = -L1.
        self.logger.log("mean_fg_dice", -loss, self.current_epoch)
        self.logger.log("dice_per_class_or_region", [-loss], self.current_epoch)
        self.logger.log("val_losses", loss, self.current_epoch)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("self-supervised pretraining: no segmentation to validate")
