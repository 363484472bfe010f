"""U-SAM training on 2D rectum slices (CARE paper, Implementation Details; public U-SAM code).

- loss: 0.4 cross-entropy + 0.6 soft Dice over all classes (U-SAM's ``calc_loss``, dice_weight 0.6);
- AdamW, learning rate 1e-3 for the mask decoder and 1e-4 for the ViT and the CNN encoder
  (paper: "0.001 and 0.0001"), weight decay 1e-4, poly decay (1 - it / max_it)^0.9 per iteration;
  the prompt encoder is frozen (paper) and has no parameters in the optimizer;
- points: per_class (3) random ground-truth points per present class, all positive, + negatives;
  or, with ``box_fraction``, ``no_prompt_fraction`` or ``min_points`` set, SAM's prompt mix
  (``prompt_mix``: points / a jittered tumor box / box + points / nothing, negatives on look-alikes);
- size: ``preset`` "vit-b" (the paper's, SAM weights) or "small" (the CPU demonstration model);
- augmentation: flips, rot90, +-15 degree rotations; points are drawn from the augmented label.

Runs on the 2D training engine (``engine2d``): one device, or several processes under ``torchrun``
(``batch_size`` is the global batch). Resumable: ``checkpoint_latest.pt`` (model, optimizer, iteration,
loss history) is written atomically every ``checkpoint_every`` iterations; a rerun continues with the
batches an uninterrupted run would see (``engine2d.batches``: epochs of shuffled slices, as the public
code's DataLoader). The finished run leaves ``usam_final.pt`` (``save_usam_checkpoint`` format, loadable
by ``load_usam_checkpoint``), ``training_curve.png`` and ``training_log.csv``; running it again is a no-op.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from CRCSegmentationLib.networks.usam import USAM, USAMConfig
from CRCSegmentationLib.usam import save_usam_checkpoint, usam_with_sam_weights
from CRCSegmentationLib.usam.checkpoint import read_usam_checkpoint
from CRCTraining.engine2d import EngineSettings, EngineTask, learning_rate_factor, train
from CRCTraining.engine2d.engine import CURVE, LATEST, LOG  # noqa: F401 - the run folder's file names, for callers
from CRCTraining.usam.correction_clicks import correction_click_batch
from CRCTraining.usam.data import TUMOR, PromptSettings, USAMSliceDataset, collate, to_model_boxes, to_model_prompts
from CRCTraining.usam.prompt_mix import PromptMix
from OrganGuidanceLib.validation import InputError

FINAL = "usam_final.pt"
LOSS_COLUMNS = ("loss", "ce", "dice_loss")
POLY_POWER = 0.9  # public U-SAM code: (1 - iter / max_iter) ** 0.9
DICE_SMOOTH = 1e-5  # public U-SAM DiceLoss
# U-SAM settings that must match for a run to be continued (the engine adds its own: batches, schedule).
RESUME_KEYS = ("lr_decoder", "lr_encoder", "weight_decay", "dice_weight", "per_class", "negatives", "augmentation",
               "image_size", "intensity", "preset", "box_fraction", "box_points_fraction", "no_prompt_fraction",
               "min_points", "lookalike_negative_fraction", "fallback_fraction", "object_fraction",
               "correction_fraction", "correction_clicks")


@dataclass
class USAMTrainingSettings:
    slices: Path  # folder of CARE-layout .npz slices (``crcseg usam-slices``)
    output: Path
    iterations: Optional[int] = None  # None: ``epochs`` passes over the slices
    epochs: int = 100  # public U-SAM code's default
    batch_size: int = 24  # CARE paper; the global batch when several processes train (torchrun)
    lr_decoder: float = 1e-3  # CARE paper: decoder 0.001
    lr_encoder: float = 1e-4  # CARE paper: encoders 0.0001 (ViT and CNN, public code lr_vit / lr_backbone)
    weight_decay: float = 1e-4  # public U-SAM code
    dice_weight: float = 0.6  # public U-SAM calc_loss: 0.4 CE + 0.6 Dice
    per_class: int = 3  # CARE Table 4: 3 points per class
    negatives: int = 1  # ours (see usam_data.PromptSettings)
    augmentation: bool = True
    image_size: Optional[int] = None  # None: the preset's (ViT-B: 224, CARE paper; small: 128)
    intensity: str = "hu"  # "unit" for slices already scaled to [0, 1] (CARE release)
    preset: str = "vit-b"  # USAMConfig.preset: "vit-b" (SAM weights map in) or "small" (demonstration size)
    # SAM's prompt mix (prompt_mix.PromptMix), used when box_fraction, no_prompt_fraction or min_points is set;
    # per_class is then the most positives and negatives the most negatives of a sample.
    box_fraction: float = 0.0  # samples with a tumor that get its jittered box (0: CARE, points only)
    box_points_fraction: float = 0.5  # of those, the share that also get points
    no_prompt_fraction: float = 0.0  # samples with no prompt at all
    min_points: Optional[int] = None  # fewest positives (drawn uniformly min_points..per_class); None: per_class
    lookalike_negative_fraction: float = 0.7  # a negative goes into a look-alike region (phantom_prompts) if any
    fallback_fraction: float = 0.5  # slices without tumor: positives on the normal rectum (label: no tumor)
    object_fraction: float = 0.25  # prompt on a look-alike blob, which is then the target ("the object at the click")
    correction_fraction: float = 0.3  # a box or points + negatives on a look-alike blob next to the tumor
    # SAM's iterative training, one round: this share of prompted samples gets a click in the largest error
    # of the network's own answer (correction_clicks.py); 0: off (CARE)
    correction_clicks: float = 0.0
    seed: int = 0
    checkpoint_every: int = 500
    device: str = "auto"
    threads: Optional[int] = None
    workers: int = 0
    sam_checkpoint: Optional[Path] = None  # sam_vit_b_01ec64.pth; None: random initialisation

    def __post_init__(self) -> None:
        if self.image_size is None:
            self.image_size = USAMConfig.preset(self.preset).image_size

    @property
    def uses_prompt_mix(self) -> bool:
        return self.box_fraction > 0 or self.no_prompt_fraction > 0 or self.min_points is not None

    def prompt_settings(self) -> PromptSettings:
        """The dataset's prompt settings: CARE's points, or SAM's mix on the tumor (module doc)."""
        mix = None
        if self.uses_prompt_mix:
            mix = PromptMix(
                min_points=self.per_class if self.min_points is None else self.min_points, max_points=self.per_class,
                negatives=self.negatives, box_fraction=self.box_fraction, box_points_fraction=self.box_points_fraction,
                no_prompt_fraction=self.no_prompt_fraction,
                lookalike_negative_fraction=self.lookalike_negative_fraction, fallback_fraction=self.fallback_fraction,
                object_fraction=self.object_fraction, correction_fraction=self.correction_fraction,
            )
        return PromptSettings(self.per_class, self.negatives, mix)

    def plain(self) -> Dict[str, object]:
        """Checkpoint-safe dict (paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass
class TrainingResult:
    final: Path
    iterations: int
    history: np.ndarray  # iterations x (iteration, loss, ce, dice_loss, lr of the decoder group)
    skipped: bool = False  # the run had finished before
    resumed_from: int = 0
    warnings: List[str] = field(default_factory=list)


def usam_loss(logits: Tensor, target: Tensor, dice_weight: float = 0.6) -> Tuple[Tensor, Tensor, Tensor]:
    """(1 - w) CE + w soft Dice (public U-SAM ``calc_loss``); logits B x C x S x S, target B x S x S.

    Soft Dice per class over the whole batch, background included, 1 - (2 sum(p t) + e) / (sum(p^2) + sum(t) + e),
    averaged over classes (public ``DiceLoss``). Returns (loss, ce, dice_loss).
    """
    ce = F.cross_entropy(logits, target)
    probabilities = torch.softmax(logits, dim=1)
    one_hot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probabilities.dtype)
    intersection = (probabilities * one_hot).sum(dim=(0, 2, 3))
    denominator = (probabilities * probabilities).sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
    dice_loss = (1.0 - (2.0 * intersection + DICE_SMOOTH) / (denominator + DICE_SMOOTH)).mean()
    return (1.0 - dice_weight) * ce + dice_weight * dice_loss, ce, dice_loss


def build_optimizer(model: USAM, lr_decoder: float, lr_encoder: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with named groups ``decoder`` (lr_decoder), ``vit`` and ``cnn_encoder`` (lr_encoder).

    Frozen parameters (SAM's prompt encoder) are left out. Each group keeps its ``base_lr`` for the poly decay.
    """
    groups: Dict[str, List[torch.nn.Parameter]] = {"decoder": [], "vit": [], "cnn_encoder": []}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.startswith("image_encoder."):
            groups["vit"].append(parameter)
        elif name.startswith("cnn_encoder."):
            groups["cnn_encoder"].append(parameter)
        else:
            groups["decoder"].append(parameter)
    rates = {"decoder": lr_decoder, "vit": lr_encoder, "cnn_encoder": lr_encoder}
    return torch.optim.AdamW(
        [{"name": n, "params": p, "lr": rates[n]} for n, p in groups.items()],
        weight_decay=weight_decay,
    )


def poly_factor(iteration: int, max_iterations: int) -> float:
    """(1 - it / max_it)^0.9, the public U-SAM code's schedule, applied per iteration (the engine's ``poly``)."""
    return learning_rate_factor("poly", iteration, max_iterations, 1, POLY_POWER)


def _check_settings(settings: USAMTrainingSettings) -> None:
    engine_settings(settings).check(USAMTask.name)  # batch size, checkpoints, epochs, workers
    if not 0.0 <= settings.dice_weight <= 1.0:
        raise InputError(f"U-SAM training: dice_weight must be in [0, 1], got {settings.dice_weight}")
    if settings.per_class < 0 or settings.negatives < 0:
        raise InputError("U-SAM training: per_class and negatives must be >= 0")
    if not 0.0 <= settings.correction_clicks <= 1.0:
        raise InputError(f"U-SAM training: correction_clicks must be in [0, 1], got {settings.correction_clicks}")
    mix = settings.prompt_settings().mix
    if mix is not None:
        mix.check()
    if settings.sam_checkpoint is not None:
        from CRCSegmentationLib.usam.sam_weights import check_vit_b_config

        check_vit_b_config(USAMConfig.preset(settings.preset))


class USAMTask(EngineTask):
    """U-SAM on the engine: CARE slices with points, 0.4 CE + 0.6 Dice, two learning rates, its checkpoint format."""

    name = "U-SAM"
    final_name = FINAL
    loss_columns = LOSS_COLUMNS

    def __init__(self, settings: USAMTrainingSettings) -> None:
        self.settings = settings
        self.config = USAMConfig.preset(settings.preset, image_size=settings.image_size)
        self._dataset = USAMSliceDataset(settings.slices, self.config.image_size, self.config.hu_window,
                                         settings.prompt_settings(), settings.intensity, settings.augmentation)
        self.warnings: List[str] = []

    def dataset(self) -> USAMSliceDataset:
        return self._dataset

    def collate(self, samples):
        return collate(samples)

    def build_model(self) -> USAM:
        model, report = usam_with_sam_weights(self.config, self.settings.sam_checkpoint)
        self.warnings += report.warnings
        return model

    def build_optimizer(self, model: USAM) -> torch.optim.AdamW:
        s = self.settings
        return build_optimizer(model, s.lr_decoder, s.lr_encoder, s.weight_decay)

    def loss(self, model, batch: dict, device: torch.device):
        images, target = batch["image"].to(device), batch["label"].to(device)
        if self.settings.correction_clicks > 0:
            with torch.no_grad():  # the network's own answer to the drawn prompts: where to click next
                first = prompted_logits(getattr(model, "module", model), images, batch, device)  # DDP's module
            batch = correction_click_batch(first, batch, prompted_rows(batch, len(images)),
                                           self.settings.correction_clicks, TUMOR)
        # Through the model's own forward (USAM.decode_mixed): under DDP, only its forward synchronises gradients.
        logits = prompted_logits(model, images, batch, device)
        loss, ce, dice = usam_loss(logits, target, self.settings.dice_weight)
        return loss, (loss, ce, dice)

    def resume_settings(self) -> Dict[str, object]:
        plain = self.settings.plain()
        return {k: plain[k] for k in RESUME_KEYS}

    def settings_record(self) -> Dict[str, object]:
        return self.settings.plain()

    def save(self, path: Path, model: USAM, extra: Dict[str, object]) -> None:
        save_usam_checkpoint(path, model, extra=extra)

    def load(self, path: Path, device: torch.device) -> Tuple[USAM, Dict[str, object]]:
        return read_usam_checkpoint(path, device)


def prompted_rows(batch: dict, size: int) -> Tensor:
    """B booleans: the samples with a point (label 0 or 1) or a box."""
    labels, boxes = batch["point_labels"], batch.get("boxes")
    prompted = (labels >= 0).any(dim=1) if labels.numel() else torch.zeros(size, dtype=torch.bool)
    if boxes is not None:
        prompted |= ~torch.isnan(boxes).any(dim=1)
    return prompted


def prompted_logits(model: USAM, images: Tensor, batch: dict, device: torch.device) -> Tensor:
    """Logits of a batch whose samples may have no prompt (``USAM.decode_mixed``: decoded as at inference)."""
    return model(images, *to_model_prompts(batch, device), to_model_boxes(batch, device))


def engine_settings(settings: USAMTrainingSettings) -> EngineSettings:
    """The run's engine settings: U-SAM's poly schedule, ``epochs`` or ``iterations``, no validation."""
    return EngineSettings(
        output=Path(settings.output), iterations=settings.iterations, epochs=settings.epochs,
        batch_size=settings.batch_size, seed=settings.seed, checkpoint_every=settings.checkpoint_every,
        schedule="poly", poly_power=POLY_POWER, device=settings.device, threads=settings.threads,
        workers=settings.workers)


def train_usam(settings: USAMTrainingSettings, stop_after: Optional[int] = None, progress: bool = True) -> TrainingResult:
    """Train (or resume, or skip a finished run); ``stop_after``: stop at that iteration as if interrupted.

    Under ``torchrun`` every process calls this; rank 0 writes the files.
    """
    _check_settings(settings)
    result = train(USAMTask(settings), engine_settings(settings), stop_after, progress)
    return TrainingResult(result.final, result.iterations, result.history, result.skipped, result.resumed_from,
                          result.warnings)
