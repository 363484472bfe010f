"""FLARE24 organ-interference loss (FLARE24 §2.2, Eq. 1-3) as the public code trains it, on nnU-Net v2's
``DC_and_CE_loss``.

    L_Seg(w) = α_dc · L_Dice(y, ŷ, w) + α_ce · L_CE(y, ŷ, w)                                  (Eq. 3)
    L        = (1 - t) · L_Seg(uniform) + t · L_Seg(w),   t = min(1, epoch / 50)         (public code's warm-up)

with w = (1 for background and every organ, 5 for the tumour) / their sum (``flare24_weights``).

Where the public code (``lay-john/FLARE24-Task1``, nnU-Net 1.7; DESIGN.md "What the public code does that the
papers do not say") differs from the paper, we follow the code:

* α_dc = α_ce = 1 (:data:`PUBLIC_ALPHA`, nnU-Net's ``DC_and_CE_loss`` defaults, which the code never changes),
  trained with nnU-Net's SGD (lr 1e-2). Eq. 3's α = 0.5 for both (:data:`PAPER_ALPHA`) halves the gradient,
  i.e. the effective learning rate under SGD; it stays an option (``weight_dice`` / ``weight_ce`` here, the
  trainer ``nnUNetTrainerOrganInterferencePaperAlpha``).
* Eq. 2's class-weighted CE is a weighted mean over each sample's voxels, then the mean over the batch
  (the code calls ``F.cross_entropy(weight=w)`` once per sample), not one weighted mean over the batch's voxels.
* The warm-up mixes two losses, uniform-weighted and class-weighted, with the share t rising linearly over the
  first 50 epochs; it does not ramp one weight vector from uniform to w (``flare24_weights.warmup_share``).

Conventions (chosen so that uniform weights give nnU-Net's own loss exactly: the tests hold them to that):

* Dice (Eq. 1), :class:`ClassWeightedSoftDiceLoss`: nnU-Net's ``MemoryEfficientSoftDiceLoss`` computation kept
  as it is (softmax, soft Dice ``(2·I + smooth) / (Σy + Σŷ + smooth)`` with nnU-Net's smooth = 1e-5,
  ``batch_dice`` from the plans, per-sample Dice otherwise, the ignore label as a loss mask, DDP all-gather),
  only its unweighted ``dc.mean()`` over classes is replaced by ``Σ_i w_i dc_i``. nnU-Net's sign convention is
  kept: the term is ``-Σ_i w_i dc_i``, which is Eq. 1's ``Σ_i w_i (1 - dc_i)`` minus the constant ``Σ_i w_i = 1``
  (same gradient). nnU-Net's ``do_bg = False`` is kept: background is left out of the Dice term and the weights are
  renormalised over the classes the term sums. The public code normalises over all classes and drops the
  background's share afterwards, which scales its Dice term by 1 - w_bg (18/19 weighted, 14/15 uniform for 13
  organs); the renormalisation is what makes the uniform case nnU-Net's loss.
* CE (Eq. 2), :class:`PerSampleWeightedCELoss`: categorical CE (the public code's; Eq. 2 as printed writes a
  one-vs-rest binary CE per class), each voxel weighted by its true class: per sample
  ``Σ_j w_{y_j} (-log ŷ_j^{y_j}) / Σ_j w_{y_j}`` over its voxels that are not the ignore label (the normalisation
  of w cancels), then the mean over the samples that have such a voxel. Without an ignore label every sample has
  the same number of voxels, so uniform weights give nnU-Net's plain mean over the batch; with one, samples count
  equally rather than voxels. A batch without a valid voxel gets no CE term, as in nnU-Net.
* Both terms mix themselves, ``(1 - t) · term(uniform) + t · term(w)``; by linearity the sum is the mixed L above.
* Deep supervision: nnU-Net's ``DeepSupervisionWrapper`` applies this loss at every level with the same weights
  and share, as the public ``MultipleOutputLoss2`` does.
"""
from __future__ import annotations

import os
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.ddp_allgather import AllGatherGrad
from torch import nn

from CRCTraining.flare24.class_weights import (
    OTHER_WEIGHT,
    TUMOR_CLASS_WEIGHT,
    WARMUP_EPOCHS,
    class_weights,
    normalised,
    warmup_share,
)

PUBLIC_ALPHA = 1.0  # α_dc = α_ce in the public code: nnU-Net's DC_and_CE_loss defaults
PAPER_ALPHA = 0.5  # Eq. 3 as printed: α_dc = α_ce = 0.5
NNUNET_SMOOTH = 1e-5  # nnUNetTrainer._build_loss
# Overrides the trainers' warm-up length (epochs, 0 = none) without a new trainer class, as the CRCSEG_* schedule
# variables of trainer_mixins do; `crcseg flare24-ablation --warmup-epochs` sets it.
ENV_WARMUP_EPOCHS = "CRCSEG_FLARE24_WARMUP_EPOCHS"


def warmup_epochs_from_environment(default: int) -> int:
    """``CRCSEG_FLARE24_WARMUP_EPOCHS`` (an integer >= 0) when set, else ``default``."""
    value = os.environ.get(ENV_WARMUP_EPOCHS, "").strip()
    if not value:
        return int(default)
    if not value.isdigit():
        raise ValueError(f"{ENV_WARMUP_EPOCHS}={value!r}: must be a whole number of epochs >= 0")
    return int(value)


def _weight_tensor(weights, device: Optional[torch.device] = None) -> torch.Tensor:
    """A float32 copy of one weight per class (a sequence, numpy array or tensor), checked: >= 0, some > 0."""
    if isinstance(weights, torch.Tensor):
        values = weights.detach().to("cpu", torch.float32).numpy()
    else:
        values = np.asarray(weights, dtype=np.float32)
    if values.ndim != 1 or values.size < 2 or np.any(values < 0) or values[1:].sum() <= 0:
        raise ValueError(f"class weights must be one weight >= 0 per class (at least 2), with some foreground "
                         f"weight > 0; got {values.tolist()}")
    return torch.tensor(values, dtype=torch.float32, device=device)


def _share_tensor(share: float, device: Optional[torch.device] = None) -> torch.Tensor:
    """The class-weighted loss's share t as a scalar float32 tensor, checked: 0 <= t <= 1."""
    value = float(share)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"the class-weighted loss's share t must be in [0, 1], got {value}")
    return torch.tensor(value, dtype=torch.float32, device=device)


class ClassWeightedSoftDiceLoss(MemoryEfficientSoftDiceLoss):
    """Eq. 1 in nnU-Net's form: ``-Σ_i w_i dc_i`` over the classes nnU-Net's Dice includes (``do_bg``), with w
    renormalised over them, mixed with the uniform-weighted term: ``(1 - t) · Dice(uniform) + t · Dice(w)``.
    Everything before the reduction is ``MemoryEfficientSoftDiceLoss.forward``.

    ``class_weights``: one weight per output class, background included; ``weighted_share``: t (both buffers:
    they move with ``.to`` and a compiled module reads their current values).
    """

    def __init__(self, apply_nonlin=None, batch_dice: bool = False, do_bg: bool = True, smooth: float = 1.,
                 ddp: bool = True, class_weights: Sequence[float] = (1.0, 1.0), weighted_share: float = 1.0):
        super().__init__(apply_nonlin, batch_dice, do_bg, smooth, ddp)
        self.register_buffer("class_weights", _weight_tensor(class_weights))
        self.register_buffer("weighted_share", _share_tensor(weighted_share))

    def included_weights(self) -> torch.Tensor:
        """The weights of the classes in the Dice term, summing to 1."""
        weights = self.class_weights if self.do_bg else self.class_weights[1:]
        return weights / weights.sum()  # > 0: _weight_tensor checked the foreground weights

    def forward(self, x: torch.Tensor, y: torch.Tensor, loss_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        # --- nnU-Net 2.8.1 MemoryEfficientSoftDiceLoss.forward, unchanged up to the reduction ---
        if self.apply_nonlin is not None:
            x = self.apply_nonlin(x)
        axes = tuple(range(2, x.ndim))
        with torch.no_grad():
            if x.ndim != y.ndim:
                y = y.view((y.shape[0], 1, *y.shape[1:]))
            if x.shape == y.shape:
                y_onehot = y.to(torch.float32)
            else:
                y_onehot = torch.zeros(x.shape, device=x.device, dtype=torch.float32)
                y_onehot.scatter_(1, y.long(), 1)
            if not self.do_bg:
                y_onehot = y_onehot[:, 1:]
            sum_gt = y_onehot.sum(axes, dtype=torch.float32) if loss_mask is None else \
                (y_onehot * loss_mask).sum(axes, dtype=torch.float32)
        if not self.do_bg:
            x = x[:, 1:]
        if loss_mask is None:
            intersect = (x * y_onehot).sum(axes, dtype=torch.float32)
            sum_pred = x.sum(axes, dtype=torch.float32)
        else:
            intersect = (x * y_onehot * loss_mask).sum(axes, dtype=torch.float32)
            sum_pred = (x * loss_mask).sum(axes, dtype=torch.float32)
        if self.batch_dice:
            if self.ddp:
                intersect = AllGatherGrad.apply(intersect).sum(0, dtype=torch.float32)
                sum_pred = AllGatherGrad.apply(sum_pred).sum(0, dtype=torch.float32)
                sum_gt = AllGatherGrad.apply(sum_gt).sum(0, dtype=torch.float32)
            intersect = intersect.sum(0, dtype=torch.float32)
            sum_pred = sum_pred.sum(0, dtype=torch.float32)
            sum_gt = sum_gt.sum(0, dtype=torch.float32)
        dc = (2 * intersect + self.smooth) / (sum_gt + sum_pred + float(self.smooth)).clamp_min(1e-8)
        # --- Eq. 1: weighted sum over classes (nnU-Net: dc.mean()), then the mean over samples, as nnU-Net; the
        # uniform-weighted sum is nnU-Net's dc.mean() itself ---
        weights = self.included_weights().to(dc.device)
        weighted = -(dc * weights).sum(-1).mean()
        uniform = -dc.mean(-1).mean()
        share = self.weighted_share.to(dc.device)
        return (1.0 - share) * uniform + share * weighted


class PerSampleWeightedCELoss(nn.Module):
    """Eq. 2 as the public code computes it: the class-weighted CE averaged over each sample's voxels, then over
    the samples (module docstring), mixed with the uniform-weighted CE: ``(1 - t) · CE(uniform) + t · CE(w)``.

    ``forward(logits (B, C, ...), target (B, ...) or (B, 1, ...))``; voxels labelled ``ignore_index`` count in
    neither sum. ``class_weights`` and ``weighted_share`` are buffers, as in :class:`ClassWeightedSoftDiceLoss`.
    """

    def __init__(self, class_weights: Sequence[float], ignore_index: Optional[int] = None,
                 weighted_share: float = 1.0, device: Optional[torch.device] = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("class_weights", _weight_tensor(class_weights, device))
        self.register_buffer("weighted_share", _share_tensor(weighted_share, device))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == logits.ndim:  # nnU-Net's (B, 1, ...) target
            target = target[:, 0]
        labels = target.long()
        valid = torch.ones_like(labels, dtype=torch.bool) if self.ignore_index is None else labels != self.ignore_index
        labels = torch.where(valid, labels, 0)  # any class: the voxel's weight below is 0
        nll = F.cross_entropy(logits, labels, reduction="none")  # -log ŷ_j^{y_j}, (B, ...)
        weights = self.class_weights.to(nll.device)
        weighted = self._per_sample_mean(nll, weights[labels] * valid)
        uniform = self._per_sample_mean(nll, valid.to(nll.dtype))
        share = self.weighted_share.to(nll.device)
        return (1.0 - share) * uniform + share * weighted

    @staticmethod
    def _per_sample_mean(nll: torch.Tensor, voxel_weights: torch.Tensor) -> torch.Tensor:
        """Σ_j v_j nll_j / Σ_j v_j per sample, then the mean over the samples with Σ_j v_j > 0 (0 if none)."""
        spatial = tuple(range(1, nll.ndim))
        totals = voxel_weights.sum(spatial)
        per_sample = (voxel_weights * nll).sum(spatial) / totals.clamp_min(torch.finfo(totals.dtype).tiny)
        counted = (totals > 0).to(per_sample.dtype)  # a sample without a counted voxel has per_sample 0
        return (per_sample * counted).sum() / counted.sum().clamp_min(1.0)  # no host sync, unlike a bool test


class ClassWeightedDCandCELoss(DC_and_CE_loss):
    """Eq. 3 with the warm-up: ``(1 - t) · L_Seg(uniform) + t · L_Seg(w)``, ``L_Seg = α_dc · Dice + α_ce · CE``,
    as nnU-Net's ``DC_and_CE_loss`` (its forward and ignore-label handling unchanged) with the weighted Dice
    (:class:`ClassWeightedSoftDiceLoss`) and the per-sample weighted CE (:class:`PerSampleWeightedCELoss`).

    ``soft_dice_kwargs``: nnU-Net's (batch_dice, smooth, do_bg, ddp). ``class_weights``: one per output class;
    created on ``device`` (the trainer's). ``weight_dice`` / ``weight_ce``: α_dc / α_ce, 1 and 1 as the public
    code (:data:`PAPER_ALPHA` for Eq. 3 as printed). ``weighted_share``: t (1: L_Seg(w) alone).
    :meth:`set_class_weights` and :meth:`set_weighted_share` change both terms in place.
    """

    def __init__(self, soft_dice_kwargs: dict, class_weights: Sequence[float], weight_ce: float = PUBLIC_ALPHA,
                 weight_dice: float = PUBLIC_ALPHA, ignore_label: Optional[int] = None,
                 device: Optional[torch.device] = None, weighted_share: float = 1.0):
        weights = _weight_tensor(class_weights, device)
        super().__init__({**soft_dice_kwargs, "class_weights": weights, "weighted_share": weighted_share}, {},
                         weight_ce=weight_ce, weight_dice=weight_dice, ignore_label=ignore_label,
                         dice_class=ClassWeightedSoftDiceLoss)
        self.ce = PerSampleWeightedCELoss(weights, ignore_label, weighted_share, device)  # nnU-Net's forward calls it
        self.to(weights.device)  # the Dice buffers were created on the CPU: keep both terms on the trainer's device

    @property
    def dice(self) -> ClassWeightedSoftDiceLoss:
        """The Dice term, also when nnU-Net has wrapped it with ``torch.compile``."""
        return getattr(self.dc, "_orig_mod", self.dc)

    @property
    def class_weights(self) -> torch.Tensor:
        return self.ce.class_weights

    @property
    def weighted_share(self) -> float:
        return float(self.ce.weighted_share)

    def set_class_weights(self, class_weights: Sequence[float]) -> None:
        """New weights for both terms, in place (the buffers stay the ones a compiled Dice reads)."""
        weights = _weight_tensor(class_weights)
        if weights.shape != self.ce.class_weights.shape:
            raise ValueError(f"{weights.numel()} class weights for a loss of {self.ce.class_weights.numel()} classes")
        with torch.no_grad():
            for buffer in (self.ce.class_weights, self.dice.class_weights):
                buffer.copy_(weights.to(buffer.device))

    def set_weighted_share(self, share: float) -> None:
        """The warm-up's t for both terms, in place."""
        value = _share_tensor(share)
        with torch.no_grad():
            for buffer in (self.ce.weighted_share, self.dice.weighted_share):
                buffer.copy_(value.to(buffer.device))


def weighted_losses(loss: nn.Module) -> Iterator[ClassWeightedDCandCELoss]:
    """Every :class:`ClassWeightedDCandCELoss` inside ``loss`` (deep-supervision wrapper, AF-loss, ...)."""
    return (module for module in loss.modules() if isinstance(module, ClassWeightedDCandCELoss))


def _replace(loss: nn.Module, replacement: nn.Module) -> Tuple[nn.Module, int]:
    if type(loss) is DC_and_CE_loss:  # exactly nnU-Net's class: ours (a subclass) is never replaced again
        return replacement, 1
    count = 0
    for name, child in list(loss.named_children()):
        new, found = _replace(child, replacement)
        if new is not child:
            setattr(loss, name, new)
        count += found
    return loss, count


def replace_dc_and_ce(loss: nn.Module, replacement: nn.Module) -> nn.Module:
    """``loss`` with nnU-Net's plain ``DC_and_CE_loss`` replaced by ``replacement`` where it sits (``loss`` itself,
    ``DeepSupervisionWrapper.loss``, AF-loss's ``base_loss``, ...), so the trainer mixins compose in either order."""
    new, count = _replace(loss, replacement)
    if count != 1:
        raise TypeError(f"expected one nnU-Net DC_and_CE_loss inside {type(loss).__name__} to make class-weighted, "
                        f"found {count}")
    return new


class ClassWeightedLossTrainerMixin:
    """Trainer mixin: nnU-Net's Dice + CE replaced by the FLARE24 organ-interference loss (Eq. 1-3 as the public
    code trains it, module docstring), at every deep-supervision level. Put it before ``nnUNetTrainer``; composes
    with ``AFLossTrainerMixin`` in either order. The optimiser stays nnU-Net's SGD (lr 1e-2), as the public code's.

    Class attributes (a trainer variant changes one, the nnU-Net way): ``loss_tumor_weight`` (5) for the tumour
    (label named "tumor" in dataset.json, else the highest label), ``loss_other_weight`` (1) for background and
    organs, ``loss_alpha_dice`` / ``loss_alpha_ce`` (1 and 1 as the public code; the paper's Eq. 3: 0.5 each),
    ``loss_warmup_epochs`` (50): the class-weighted loss's share t rises linearly from 0 over the first N epochs
    (``(1 - t) · L_uniform + t · L_weighted``, the public code's warm-up; 0: the weighted loss from epoch 0);
    ``CRCSEG_FLARE24_WARMUP_EPOCHS`` overrides it (a run shortened with ``--epochs`` may want a shorter one).
    Everything else is nnU-Net's ``_build_loss``: batch_dice from the plans, smooth 1e-5, do_bg False, the
    ignore label, DDP, ``torch.compile`` of the Dice term where nnU-Net compiles it.
    """

    loss_tumor_weight: float = TUMOR_CLASS_WEIGHT
    loss_other_weight: float = OTHER_WEIGHT
    loss_alpha_dice: float = PUBLIC_ALPHA
    loss_alpha_ce: float = PUBLIC_ALPHA
    loss_warmup_epochs: int = WARMUP_EPOCHS

    def loss_class_weights(self) -> np.ndarray:
        """The class weights (C,), normalised by their sum (FLARE24 §2.2: tumour 5, others 1)."""
        return normalised(class_weights(self.dataset_json, self.loss_tumor_weight, self.loss_other_weight))

    def warmup_epochs(self) -> int:
        return warmup_epochs_from_environment(self.loss_warmup_epochs)

    def loss_weighted_share(self, epoch: int) -> float:
        """t at ``epoch`` (``flare24_weights.warmup_share``)."""
        return warmup_share(epoch, self.warmup_epochs())

    def _build_loss(self):
        if self.label_manager.has_regions:
            raise ValueError("the FLARE24 class-weighted loss is for one label per class, not region-based training")
        loss = super()._build_loss()  # nnU-Net's (deep supervision wrapper, AF-loss, ... around a DC_and_CE_loss)
        weighted = ClassWeightedDCandCELoss(
            {"batch_dice": self.configuration_manager.batch_dice, "smooth": NNUNET_SMOOTH, "do_bg": False,
             "ddp": self.is_ddp},
            self.loss_class_weights(), weight_ce=self.loss_alpha_ce, weight_dice=self.loss_alpha_dice,
            ignore_label=self.label_manager.ignore_label, device=self.device,
            weighted_share=self.loss_weighted_share(self.current_epoch))
        if self._do_i_compile():
            weighted.dc = torch.compile(weighted.dc)
        return replace_dc_and_ce(loss, weighted)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        share = self.loss_weighted_share(self.current_epoch)
        for loss in weighted_losses(self.loss):
            loss.set_weighted_share(share)
        warmup = self.warmup_epochs()
        if warmup > 0 and self.current_epoch <= warmup:
            self.print_to_log_file(f"FLARE24 loss warm-up {self.current_epoch}/{warmup}: "
                                   f"{1 - share:.3f} x uniform-weighted + {share:.3f} x class-weighted loss")
