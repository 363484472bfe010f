"""FLARE24 class-weighted Dice + cross-entropy (FLARE24 §2.2, Eq. 1-3) on nnU-Net v2's ``DC_and_CE_loss``.

    L_Seg = α_dc · L_Dice(y, ŷ, w) + α_ce · L_CE(y, ŷ, w),   α_dc = α_ce = 0.5            (Eq. 3)

with w = (1 for background and every organ, 5 for the tumour) / their sum (``flare24_weights``).

Conventions (chosen so that uniform weights give nnU-Net's own loss exactly: the test holds them to that):

* Dice (Eq. 1), :class:`ClassWeightedSoftDiceLoss`: nnU-Net's ``MemoryEfficientSoftDiceLoss`` computation kept
  as it is (softmax, soft Dice ``(2·I + smooth) / (Σy + Σŷ + smooth)`` with nnU-Net's smooth = 1e-5,
  ``batch_dice`` from the plans, per-sample Dice otherwise, the ignore label as a loss mask, DDP all-gather),
  only its unweighted ``dc.mean()`` over classes is replaced by ``Σ_i w_i dc_i``. nnU-Net's sign convention is
  kept: the term is ``-Σ_i w_i dc_i``, which is Eq. 1's ``Σ_i w_i (1 - dc_i)`` minus the constant ``Σ_i w_i = 1``
  (same gradient). nnU-Net's ``do_bg = False`` is kept: background is left out of the Dice term and the weights are
  renormalised over the classes the term sums (the public code normalises over all classes and drops the
  background's share afterwards, which only scales the Dice term by 1 - w_bg = 18/19 for 13 organs).
* CE (Eq. 2), :class:`ClassWeightedDCandCELoss`: ``torch.nn.CrossEntropyLoss(weight=w)`` as the public code and
  nnU-Net's ``ce_kwargs["weight"]`` do: ``Σ_j w_{y_j} (-log ŷ_j^{y_j}) / Σ_j w_{y_j}``, each voxel weighted by its
  true class (the weighted mean makes the normalisation of w irrelevant here). Eq. 2 as printed writes a
  one-vs-rest binary CE per class; with softmax outputs the categorical CE is what the code trains with.
  The ignore label is CE's ``ignore_index``, as in nnU-Net.
* Deep supervision: nnU-Net's ``DeepSupervisionWrapper`` applies this loss at every level with the same weights.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.ddp_allgather import AllGatherGrad

from CRCTraining.flare24_weights import OTHER_WEIGHT, RAMP_EPOCHS, TUMOR_WEIGHT, class_weights, ramped_weights

ALPHA_DICE = 0.5  # Eq. 3, α_dc
ALPHA_CE = 0.5  # Eq. 3, α_ce
NNUNET_SMOOTH = 1e-5  # nnUNetTrainer._build_loss


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


class ClassWeightedSoftDiceLoss(MemoryEfficientSoftDiceLoss):
    """Eq. 1 in nnU-Net's form: ``-Σ_i w_i dc_i`` over the classes nnU-Net's Dice includes (``do_bg``), with w
    renormalised over them; everything before the reduction is ``MemoryEfficientSoftDiceLoss.forward``.

    ``class_weights``: one weight per output class, background included (a buffer: it moves with ``.to``).
    """

    def __init__(self, apply_nonlin=None, batch_dice: bool = False, do_bg: bool = True, smooth: float = 1.,
                 ddp: bool = True, class_weights: Sequence[float] = (1.0, 1.0)):
        super().__init__(apply_nonlin, batch_dice, do_bg, smooth, ddp)
        self.register_buffer("class_weights", _weight_tensor(class_weights))

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
        # --- Eq. 1: weighted sum over classes (nnU-Net: dc.mean()); then the mean over samples, as nnU-Net ---
        weights = self.included_weights().to(dc.device)
        return -(dc * weights).sum(-1).mean()


class ClassWeightedDCandCELoss(DC_and_CE_loss):
    """Eq. 3: ``α_dc · L_Dice(w) + α_ce · L_CE(w)`` as nnU-Net's ``DC_and_CE_loss`` with a weighted Dice
    (:class:`ClassWeightedSoftDiceLoss`) and ``ce_kwargs["weight"] = w``; ignore label as nnU-Net handles it.

    ``soft_dice_kwargs``: nnU-Net's (batch_dice, smooth, do_bg, ddp). ``class_weights``: one per output class;
    create it on the trainer's device (``device``). :meth:`set_class_weights` changes both terms in place.
    """

    def __init__(self, soft_dice_kwargs: dict, class_weights: Sequence[float], weight_ce: float = ALPHA_CE,
                 weight_dice: float = ALPHA_DICE, ignore_label: Optional[int] = None,
                 ce_kwargs: Optional[dict] = None, device: Optional[torch.device] = None):
        weights = _weight_tensor(class_weights, device)
        super().__init__({**soft_dice_kwargs, "class_weights": weights}, {**(ce_kwargs or {}), "weight": weights},
                         weight_ce=weight_ce, weight_dice=weight_dice, ignore_label=ignore_label,
                         dice_class=ClassWeightedSoftDiceLoss)
        self.to(weights.device)  # the Dice buffer was copied on construction: keep both on the trainer's device

    @property
    def dice(self) -> ClassWeightedSoftDiceLoss:
        """The Dice term, also when nnU-Net has wrapped it with ``torch.compile``."""
        return getattr(self.dc, "_orig_mod", self.dc)

    @property
    def class_weights(self) -> torch.Tensor:
        return self.ce.weight

    def set_class_weights(self, class_weights: Sequence[float]) -> None:
        """New weights for both terms, in place (the buffers stay the ones a compiled Dice reads)."""
        weights = _weight_tensor(class_weights)
        if weights.shape != self.ce.weight.shape:
            raise ValueError(f"{weights.numel()} class weights for a loss of {self.ce.weight.numel()} classes")
        with torch.no_grad():
            self.ce.weight.copy_(weights.to(self.ce.weight.device))
            self.dice.class_weights.copy_(weights.to(self.dice.class_weights.device))


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
    """Trainer mixin: nnU-Net's Dice + CE replaced by the FLARE24 class-weighted one (Eq. 1-3), at every
    deep-supervision level. Put it before ``nnUNetTrainer``; composes with ``AFLossTrainerMixin`` in either order.

    Class attributes: ``loss_tumor_weight`` (5) for the tumour (label named "tumor" in dataset.json, else the
    highest label), ``loss_other_weight`` (1) for background and organs, ``loss_alpha_dice`` / ``loss_alpha_ce``
    (Eq. 3: 0.5 each), ``class_weight_ramp_epochs``: linear ramp from uniform weights to the target weights over
    the first N epochs, as the public code does (50; 0: the target weights from epoch 0, the paper's Eq. 1-3).
    Everything else is nnU-Net's ``_build_loss``: batch_dice from the plans, smooth 1e-5, do_bg False, the
    ignore label, DDP, ``torch.compile`` of the Dice term where nnU-Net compiles it.
    """

    loss_tumor_weight: float = TUMOR_WEIGHT
    loss_other_weight: float = OTHER_WEIGHT
    loss_alpha_dice: float = ALPHA_DICE
    loss_alpha_ce: float = ALPHA_CE
    class_weight_ramp_epochs: int = RAMP_EPOCHS

    def loss_class_weights(self, epoch: int) -> np.ndarray:
        """Normalised class weights (C,) at ``epoch`` (``flare24_weights.ramped_weights``)."""
        target = class_weights(self.dataset_json, self.loss_tumor_weight, self.loss_other_weight)
        return ramped_weights(target, epoch, self.class_weight_ramp_epochs)

    def _build_loss(self):
        if self.label_manager.has_regions:
            raise ValueError("the FLARE24 class-weighted loss is for one label per class, not region-based training")
        loss = super()._build_loss()  # nnU-Net's (deep supervision wrapper, AF-loss, ... around a DC_and_CE_loss)
        weighted = ClassWeightedDCandCELoss(
            {"batch_dice": self.configuration_manager.batch_dice, "smooth": NNUNET_SMOOTH, "do_bg": False,
             "ddp": self.is_ddp},
            self.loss_class_weights(self.current_epoch), weight_ce=self.loss_alpha_ce,
            weight_dice=self.loss_alpha_dice, ignore_label=self.label_manager.ignore_label, device=self.device)
        if self._do_i_compile():
            weighted.dc = torch.compile(weighted.dc)
        return replace_dc_and_ce(loss, weighted)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        weights = self.loss_class_weights(self.current_epoch)
        for loss in weighted_losses(self.loss):
            loss.set_class_weights(weights)
        if self.class_weight_ramp_epochs > 0 and self.current_epoch <= self.class_weight_ramp_epochs:
            self.print_to_log_file(f"FLARE24 class weights (ramp {self.current_epoch}/{self.class_weight_ramp_epochs}): "
                                   + ", ".join(f"{w:.4f}" for w in weights))
