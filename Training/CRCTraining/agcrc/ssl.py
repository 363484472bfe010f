"""Masks for self-supervised pretraining (AG-CRC §III-D, Eq. 7, and the Table VII ablation).

Eq. 7: min_W || X - f(X̂, O, M; W) ||_1 with X̂ = M(X, B): the CT voxels inside
the bowel wall B are replaced by Gaussian noise, the OOI and MOS channels stay
as they are, and the network reconstructs the CT. The ablation's alternatives
drop other voxels the same way (§V-B3): "inpaint", up to 50 % of the voxels in
random-sized blocks; "mae", a grid of 4 x 32 x 32 patches of which 50 % drop.
All functions work on torch batches B x C x Z x Y x X (channel 0 = CT, already
normalised by nnU-Net, so standard normal noise matches its scale).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from CRCTraining.nnunet.mixins import NoDeepSupervisionMixin

SSL_MASKINGS = ("bowel_wall", "inpaint", "mae")
CT_CHANNEL = 0
MAE_PATCH = (4, 32, 32)  # §V-B3: "dropping patch size is set as 4 x 32 x 32 (about 20 x 25 x 25 mm)"
DROP_FRACTION = 0.5  # §V-B3: up to 50 % (inpaint), 50 % of the patches (MAE)


def mask_ct_channel(data: torch.Tensor, region: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """M(X, B) of Eq. 7: CT voxels in ``region`` (B x 1 x ...) become N(0, 1) noise; other channels untouched."""
    masked = data.clone()
    noise = torch.randn(data[:, :1].shape, generator=generator, dtype=data.dtype, device=data.device)
    ct = masked[:, CT_CHANNEL : CT_CHANNEL + 1]
    masked[:, CT_CHANNEL : CT_CHANNEL + 1] = torch.where(region.bool(), noise, ct)
    return masked


def bowel_wall_region(wall_target: torch.Tensor) -> torch.Tensor:
    """AG-SSL: the bowel wall (carried as the segmentation target of the SSL dataset) is the region."""
    return wall_target > 0.5


def inpaint_region(shape: Sequence[int], generator: Optional[torch.Generator] = None,
                   max_fraction: float = DROP_FRACTION) -> torch.Tensor:
    """Random-sized boxes, added until the next one would exceed ``max_fraction`` of the voxels."""
    batch, _, *spatial = shape
    region = torch.zeros((batch, 1, *spatial), dtype=torch.bool)
    for index in range(batch):
        target = torch.rand((), generator=generator).item() * max_fraction * region[index].numel()
        for _ in range(64):  # bounded: small boxes on a big patch
            size = [max(1, int(n * (0.1 + 0.3 * torch.rand((), generator=generator).item()))) for n in spatial]
            start = [int(torch.randint(0, n - s + 1, (), generator=generator)) for n, s in zip(spatial, size)]
            box = tuple(slice(a, a + s) for a, s in zip(start, size))
            candidate = region[index, 0].clone()
            candidate[box] = True
            if candidate.sum() > max_fraction * candidate.numel():
                break
            region[index, 0] = candidate
            if candidate.sum() >= target:
                break
    return region


def mae_region(shape: Sequence[int], generator: Optional[torch.Generator] = None,
               patch: Tuple[int, int, int] = MAE_PATCH, fraction: float = DROP_FRACTION) -> torch.Tensor:
    """A regular grid of ``patch``-sized cells; a random ``fraction`` of them is dropped per sample."""
    batch, _, *spatial = shape
    cells = [max(1, -(-n // p)) for n, p in zip(spatial, patch)]  # ceil division
    count = cells[0] * cells[1] * cells[2]
    region = torch.zeros((batch, 1, *cells), dtype=torch.bool)
    for index in range(batch):
        dropped = torch.randperm(count, generator=generator)[: int(round(fraction * count))]
        region[index, 0].view(-1)[dropped] = True
    for axis, p in enumerate(patch):
        region = region.repeat_interleave(p, dim=2 + axis)
    return region[(slice(None), slice(None), *[slice(0, n) for n in spatial])]


def ssl_region(masking: str, data: torch.Tensor, wall_target: Optional[torch.Tensor],
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The region to drop for the chosen pretraining task (B x 1 x ... boolean)."""
    if masking == "bowel_wall":
        if wall_target is None:
            raise ValueError("AG-SSL needs the bowel-wall mask as the batch target (prepare the dataset with --ssl)")
        return bowel_wall_region(wall_target).to(data.device)
    if masking == "inpaint":
        return inpaint_region(data.shape, generator).to(data.device)
    if masking == "mae":
        return mae_region(data.shape, generator).to(data.device)
    raise ValueError(f"SSL masking '{masking}' is not one of {SSL_MASKINGS}")


class SSLPretrainingTrainerMixin(NoDeepSupervisionMixin):
    """AG-CRC Eq. 7: reconstruct the CT channel from a masked input with an L1 loss.

    ``ssl_masking`` (below) picks the task: "bowel_wall" (AG-SSL; the SSL dataset carries the
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
