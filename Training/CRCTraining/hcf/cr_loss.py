"""HCF's Combined Regularization (CR) loss (Shi et al., CMIG 2024, §3.3, Eq. 4-8), for 2D and 3D outputs.

    L_CR   = L_dice + L_ce-ε                                                   (Eq. 4)
    L_dice = 1 - 1/K' Σ_k  2 Σ_i p_i^k q_i^k / (Σ_i p_i^k + q_i^k)             (Eq. 5)
    L_ce-ε = (1 - α) L_ce + α ε,   α = 0.1                                     (Eq. 6)
    L_ce   = 1/N Σ_i -log p_i^{y_i}                                            (Eq. 7, see below)
    ε      = 1/K Σ_k 1/N Σ_i -log p_i^k                                        (Eq. 8)

p = softmax of the logits over the K classes, q the one-hot target, N the pixels (voxels) of one image.
Conventions, all the public code's (``CELabelSmoothingPlusDice(smoothing=0.1, ignore_index=0)`` with its
``DiceLoss`` and ``LabelSmoothing``), which trained the paper's models:

* Dice (Eq. 5): over the foreground classes (K' = K - 1; the public code passes ``ignore_index=0``);
  ``include_background=True`` gives Eq. 5 read literally (all K classes). Soft Dice per image, averaged
  over images and classes, with the public code's smooth 1e-5 in numerator and denominator:
  (2 I + s) / (Σp + Σq + s). ``batch_dice=True`` sums I, Σp, Σq over the batch first (nnU-Net's option).
* CE (Eq. 7): the standard cross-entropy, the mean over pixels of -log p of the true class
  (``torch.nn.CrossEntropyLoss``). Eq. 7 as printed carries an extra 1/K in front of the sum over k;
  with one-hot q that would be CE / K, which neither the public code nor the text ("the standard
  cross-entropy loss") uses.
* ε (Eq. 8): mean of -log p over classes and pixels (the public code's ``-log_softmax(x).mean()``).
  (1 - α) CE + α ε is exactly cross-entropy with label smoothing α (``F.cross_entropy(...,
  label_smoothing=α)``): the uniform distribution gets weight α.
* Ignore label (nnU-Net's ``label_manager.ignore_label``): ignored voxels count in no term (Dice sums,
  CE and ε means), as nnU-Net's ``DC_and_CE_loss`` masks its Dice and CE; with none left the CE and ε
  terms are 0 and the Dice term is 1 - s / s = 0.

``CRLossTrainerMixin`` trains nnU-Net v2 with it, wrapped in nnU-Net's ``DeepSupervisionWrapper``.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CR_ALPHA = 0.1  # §3.3: "penalized by a factor α (set to 0.1)"
DICE_SMOOTH = 1e-5  # public code's BinaryDiceLoss; also nnU-Net's


class CRLoss(nn.Module):
    """Eq. 4-8 on logits (B, K, *spatial) and integer targets (B, *spatial) or (B, 1, *spatial).

    Args:
        alpha: α of Eq. 6 (0.1).
        include_background: include class 0 in the Dice term (Eq. 5 literally); public code: False.
        batch_dice: one Dice per class over the whole batch instead of per image (nnU-Net's ``batch_dice``).
        smooth: added to the Dice numerator and denominator.
        ignore_label: target value whose voxels are left out of every term (None: none).
        ddp: with ``batch_dice``, sum the Dice statistics over all DDP processes (nnU-Net's
            ``MemoryEfficientSoftDiceLoss``, with its gradient-carrying all-gather).

    Returns a scalar (float32; float64 for float64 logits).
    """

    def __init__(self, alpha: float = CR_ALPHA, include_background: bool = False, batch_dice: bool = False,
                 smooth: float = DICE_SMOOTH, ignore_label: Optional[int] = None, ddp: bool = False) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"CR loss alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.include_background = include_background
        self.batch_dice = batch_dice
        self.smooth = float(smooth)
        self.ignore_label = ignore_label
        self.ddp = ddp

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, include_background={self.include_background}, batch_dice={self.batch_dice}, "
                f"smooth={self.smooth}, ignore_label={self.ignore_label}")

    def _labels(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == logits.ndim:
            if target.shape[1] != 1:
                raise ValueError(f"CR loss needs integer labels (B, 1, ...) or (B, ...), got a target of shape "
                                 f"{tuple(target.shape)} for logits {tuple(logits.shape)}")
            target = target[:, 0]
        if target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(f"CR loss: target shape {tuple(target.shape)} does not match logits "
                             f"{tuple(logits.shape)} (B, K, ...)")
        return target

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim < 3 or logits.shape[1] < 2:
            raise ValueError(f"CR loss needs logits (B, K >= 2, ...), got {tuple(logits.shape)}")
        target = self._labels(logits, target)
        valid = torch.ones_like(target, dtype=torch.bool) if self.ignore_label is None else target != self.ignore_label
        labels = torch.where(valid, target, torch.zeros_like(target)).long()  # ignored: any class, masked below
        precise = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()  # fp16/bf16 (AMP)
        log_p = F.log_softmax(precise, dim=1)
        p = log_p.exp()
        mask = valid.unsqueeze(1).to(p.dtype)  # (B, 1, ...)
        with torch.no_grad():
            q = torch.zeros_like(p).scatter_(1, labels.unsqueeze(1), 1.0) * mask  # one-hot, (B, K, ...)

        # Eq. 5: soft Dice per image (or over the batch) and class
        axes = tuple(range(2, p.ndim))
        intersect = (p * q).sum(axes)  # (B, K)
        denominator = (p * mask).sum(axes) + q.sum(axes)
        if self.batch_dice:
            if self.ddp:
                from nnunetv2.utilities.ddp_allgather import AllGatherGrad

                intersect = AllGatherGrad.apply(intersect).sum(0)
                denominator = AllGatherGrad.apply(denominator).sum(0)
            intersect, denominator = intersect.sum(0, keepdim=True), denominator.sum(0, keepdim=True)
        dice = (2 * intersect + self.smooth) / (denominator + self.smooth)
        dice = dice if self.include_background else dice[:, 1:]
        dice_loss = 1 - dice.mean()

        # Eq. 7 and 8 over the voxels that count
        count = valid.sum().clamp_min(1).to(p.dtype)
        ce = -(log_p.gather(1, labels.unsqueeze(1)) * mask).sum() / count  # Eq. 7
        regulariser = -(log_p.mean(1, keepdim=True) * mask).sum() / count  # Eq. 8
        return dice_loss + (1 - self.alpha) * ce + self.alpha * regulariser  # Eq. 4, 6


def deep_supervision_weights(levels: int, is_ddp: bool = False, compiled: bool = False) -> np.ndarray:
    """nnU-Net 2.8.1's ``nnUNetTrainer._build_loss`` weights: 1 / 2^i, the lowest level 0 (1e-6 under DDP
    without torch.compile, where a 0 makes DDP complain of unused parameters), normalised to sum 1."""
    weights = np.array([1 / (2 ** i) for i in range(levels)])
    weights[-1] = 1e-6 if is_ddp and not compiled else 0
    return weights / weights.sum()


class CRLossTrainerMixin:
    """nnU-Net v2 trainer mixin: the CR loss instead of Dice + CE, at every deep-supervision level.

    ``batch_dice`` follows the nnU-Net configuration, as nnU-Net's own loss does (the paper's per-slice
    Dice is ``batch_dice=False``); the ignore label is masked as in ``DC_and_CE_loss``. Region-based
    datasets are refused: the CR loss is a softmax loss over mutually exclusive classes.
    """

    cr_alpha = CR_ALPHA

    def _build_loss(self):
        if self.label_manager.has_regions:
            raise ValueError("the CR loss (HCF Eq. 4-8) is a softmax loss over mutually exclusive classes; this "
                             "dataset is region-based (dataset.json 'regions_class_order'): train it with "
                             "nnU-Net's default trainer instead")
        loss = CRLoss(alpha=self.cr_alpha, batch_dice=self.configuration_manager.batch_dice,
                      ignore_label=self.label_manager.ignore_label, ddp=self.is_ddp)
        if self.enable_deep_supervision:
            from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

            weights = deep_supervision_weights(len(self._get_deep_supervision_scales()), self.is_ddp,
                                               self._do_i_compile())
            loss = DeepSupervisionWrapper(loss, weights)
        return loss


def cr_losses(loss: nn.Module) -> List[CRLoss]:
    """The ``CRLoss`` modules inside ``loss`` (itself, or inside a deep-supervision wrapper)."""
    return [module for module in loss.modules() if isinstance(module, CRLoss)]
