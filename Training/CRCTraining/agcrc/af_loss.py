"""Anatomy-focalized loss (AG-CRC §III-E, Eq. 8): L_M(Y, Ŷ, O) = L_0(Y, Ŷ ∘ O).

L_0 is nnU-Net's Dice + cross-entropy. The predicted soft tumor mask Ŷ is
multiplied by the binary OOI mask O before the loss, so predictions outside
the organs of interest cost nothing and get no gradient: the supervised phase
only attends to the region that may contain a tumor.

With softmax outputs the masked foreground probabilities are p_c · O for every
foreground class c, and the background takes the rest, 1 - Σ_c p_c · O, so
each voxel still carries a probability distribution (outside the OOI it is
"background" with certainty). Cross-entropy and soft Dice are computed on that
distribution. The OOI comes from the network input (channel 2, see
``prepare.py``), so it is the augmented OOI of the very patch the network saw;
augmentation interpolates it, hence the 0.5 threshold.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

OOI_CHANNEL = 2  # input channels: 0 CT, 1 MOS, 2 OOI (AG-CRC Table V)
OOI_THRESHOLD = 0.5  # the OOI channel is interpolated by spatial augmentation


def ooi_from_input(data: torch.Tensor, channel: int = OOI_CHANNEL) -> torch.Tensor:
    """B x 1 x Z x Y x X float mask of the OOI from a B x C x Z x Y x X input batch."""
    if data.shape[1] <= channel:
        raise ValueError(
            f"AF-loss needs the OOI as input channel {channel}, but the batch has {data.shape[1]} channels; "
            "train on a dataset prepared with CT + MOS + OOI channels"
        )
    return (data[:, channel : channel + 1] > OOI_THRESHOLD).float()


def resize_mask(mask: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of a B x 1 x ... mask to a deep-supervision level's spatial shape."""
    if tuple(mask.shape[2:]) == tuple(shape):
        return mask
    return F.interpolate(mask, size=tuple(shape), mode="nearest")


class FocalizedProbabilities(nn.Module):
    """Ŷ ∘ O for softmax outputs: masked class probabilities, background absorbs the rest."""

    def forward(self, logits: torch.Tensor, focus: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(logits.float(), dim=1)
        foreground = probabilities[:, 1:] * focus
        background = 1.0 - foreground.sum(dim=1, keepdim=True)
        return torch.cat([background, foreground], dim=1)


class AnatomyFocalizedLoss(nn.Module):
    """Eq. 8: L_0(Y, Ŷ ∘ O) with L_0 any nnU-Net loss that takes logits (default: its Dice + CE).

    The masked distribution p' = (1 - Σ p_c·O, p_1·O, ...) sums to one, so log p'
    are logits whose softmax is p' itself: nnU-Net's own ``DC_and_CE_loss``
    (cross-entropy, soft Dice, ignore label, batch Dice, DDP) runs unchanged on them.
    Call ``set_focus(mask)`` with the batch's OOI (B x 1 x ...) before the loss;
    each deep-supervision level resizes it to its own shape.
    """

    def __init__(self, base_loss: nn.Module) -> None:
        super().__init__()
        self.base_loss = base_loss
        self.focalize = FocalizedProbabilities()
        self.focus: Optional[torch.Tensor] = None

    def set_focus(self, focus: torch.Tensor) -> None:
        self.focus = focus

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.focus is None:
            raise RuntimeError("AnatomyFocalizedLoss: set_focus(OOI) must be called before the loss")
        focus = resize_mask(self.focus.to(logits.device), logits.shape[2:])
        focused_logits = torch.log(self.focalize(logits, focus).clamp_min(1e-8))
        return self.base_loss(focused_logits, target)


def set_loss_focus(loss: Union[nn.Module, object], focus: torch.Tensor) -> None:
    """Hand the batch's OOI to an AF-loss, also when nnU-Net wraps it for deep supervision."""
    inner = getattr(loss, "loss", loss)  # DeepSupervisionWrapper keeps the wrapped loss as .loss
    if not isinstance(inner, AnatomyFocalizedLoss):
        raise TypeError(f"expected an AnatomyFocalizedLoss, got {type(inner).__name__}")
    inner.set_focus(focus)


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
