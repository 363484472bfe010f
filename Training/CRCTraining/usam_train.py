"""U-SAM training on 2D rectum slices (CARE paper, Implementation Details; public U-SAM code).

- loss: 0.4 cross-entropy + 0.6 soft Dice over all classes (U-SAM's ``calc_loss``, dice_weight 0.6);
- AdamW, learning rate 1e-3 for the mask decoder and 1e-4 for the ViT and the CNN encoder
  (paper: "0.001 and 0.0001"), weight decay 1e-4, poly decay (1 - it / max_it)^0.9 per iteration;
  the prompt encoder is frozen (paper) and has no parameters in the optimizer;
- points: per_class (3) random ground-truth points per present class, all positive, + negatives;
- augmentation: flips, rot90, +-15 degree rotations; points are drawn from the augmented label.

Resumable: ``checkpoint_latest.pt`` (model, optimizer, iteration, torch RNG state, loss history) is
written atomically every ``checkpoint_every`` iterations; a rerun continues from it. Batches are a
function of the iteration number (``usam_data.iteration_keys``), so a resumed run sees the batches
an uninterrupted one would. The finished run leaves ``usam_final.pt`` (``save_usam_checkpoint``
format, loadable by ``load_usam_checkpoint``), ``training_curve.png`` and ``training_log.csv``;
running it again is a no-op.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from CRCSegmentationLib.networks.usam import USAM, USAMConfig
from CRCSegmentationLib.usam import save_usam_checkpoint, usam_with_sam_weights
from CRCSegmentationLib.usam.checkpoint import read_usam_checkpoint
from OrganGuidanceLib.device import resolve_device
from OrganGuidanceLib.atomic import atomic_path, write_text_atomic
from OrganGuidanceLib.validation import InputError

from .usam_data import IterationBatches, PromptSettings, USAMSliceDataset, collate, to_model_prompts

LATEST = "checkpoint_latest.pt"
FINAL = "usam_final.pt"
CURVE = "training_curve.png"
LOG = "training_log.csv"
HISTORY_COLUMNS = ("iteration", "loss", "ce", "dice_loss", "lr_decoder")
POLY_POWER = 0.9  # public U-SAM code: (1 - iter / max_iter) ** 0.9
DICE_SMOOTH = 1e-5  # public U-SAM DiceLoss
# Settings that must match for a run to be continued (the schedule and the batches depend on them).
RESUME_KEYS = ("iterations", "batch_size", "seed", "lr_decoder", "lr_encoder", "weight_decay", "dice_weight",
               "per_class", "negatives", "augmentation", "image_size")


@dataclass
class USAMTrainingSettings:
    slices: Path  # folder of CARE-layout .npz slices (``crcseg usam-slices``)
    output: Path
    iterations: Optional[int] = None  # None: ``epochs`` passes over the slices
    epochs: int = 100  # public U-SAM code's default
    batch_size: int = 24  # CARE paper
    lr_decoder: float = 1e-3  # CARE paper: decoder 0.001
    lr_encoder: float = 1e-4  # CARE paper: encoders 0.0001 (ViT and CNN, public code lr_vit / lr_backbone)
    weight_decay: float = 1e-4  # public U-SAM code
    dice_weight: float = 0.6  # public U-SAM calc_loss: 0.4 CE + 0.6 Dice
    per_class: int = 3  # CARE Table 4: 3 points per class
    negatives: int = 1  # ours (see usam_data.PromptSettings)
    augmentation: bool = True
    image_size: int = 224  # CARE paper
    intensity: str = "hu"  # "unit" for slices already scaled to [0, 1] (CARE release)
    seed: int = 0
    checkpoint_every: int = 500
    device: str = "auto"
    threads: Optional[int] = None
    workers: int = 0
    sam_checkpoint: Optional[Path] = None  # sam_vit_b_01ec64.pth; None: random initialisation

    def plain(self) -> Dict[str, object]:
        """Checkpoint-safe dict (paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass
class TrainingResult:
    final: Path
    iterations: int
    history: np.ndarray  # iterations x len(HISTORY_COLUMNS)
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
        [{"name": n, "params": p, "lr": rates[n], "base_lr": rates[n]} for n, p in groups.items()],
        weight_decay=weight_decay,
    )


def poly_factor(iteration: int, max_iterations: int) -> float:
    """(1 - it / max_it)^0.9, the public U-SAM code's schedule, applied per iteration."""
    return (1.0 - iteration / max_iterations) ** POLY_POWER


def set_learning_rates(optimizer: torch.optim.Optimizer, iteration: int, max_iterations: int) -> None:
    factor = poly_factor(iteration, max_iterations)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def train_step(model: USAM, optimizer: torch.optim.Optimizer, batch: dict, device: torch.device,
               dice_weight: float) -> Tuple[float, float, float]:
    """One optimisation step on a collated batch; returns (loss, ce, dice_loss)."""
    model.train()
    images, target = batch["image"].to(device), batch["label"].to(device)
    coords, labels = to_model_prompts(batch, device)
    logits = model(images, coords, labels)
    loss, ce, dice = usam_loss(logits, target, dice_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), float(ce.detach()), float(dice.detach())


def _total_iterations(settings: USAMTrainingSettings, num_slices: int) -> int:
    if settings.iterations is not None:
        total = int(settings.iterations)
    else:
        total = int(math.ceil(settings.epochs * num_slices / settings.batch_size))
    if total < 1:
        raise InputError(f"U-SAM training: {total} iterations; give --iterations or --epochs of at least 1")
    return total


def _check_settings(settings: USAMTrainingSettings) -> None:
    for name in ("batch_size", "checkpoint_every"):
        if getattr(settings, name) < 1:
            raise InputError(f"U-SAM training: {name} must be at least 1, got {getattr(settings, name)}")
    if not 0.0 <= settings.dice_weight <= 1.0:
        raise InputError(f"U-SAM training: dice_weight must be in [0, 1], got {settings.dice_weight}")
    if settings.per_class < 0 or settings.negatives < 0 or settings.workers < 0:
        raise InputError("U-SAM training: per_class, negatives and workers must be >= 0")


def _compare_resume(stored: dict, current: dict, where: Path) -> None:
    changed = {k: (stored.get(k), current[k]) for k in RESUME_KEYS if stored.get(k) != current[k]}
    if changed:
        listing = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise InputError(f"{where}: holds a run with other settings ({listing}); use a new output folder")


def _save_latest(path: Path, model: USAM, optimizer: torch.optim.Optimizer, iteration: int,
                 history: List[List[float]], settings: dict) -> None:
    training = {"iteration": iteration, "settings": settings, "finished": False}
    save_usam_checkpoint(path, model, extra={
        "training": training,
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "history": torch.tensor(history, dtype=torch.float64).reshape(-1, len(HISTORY_COLUMNS)),
    })
    # A small copy of the run's settings: a rerun checks them before reading the large checkpoint.
    write_text_atomic(path.with_suffix(".json"), json.dumps(training, indent=2) + "\n")


def write_curve(history: np.ndarray, path: Path) -> Path:
    """Training-curve PNG: loss, CE and Dice loss per iteration, with a moving average of the loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    iterations = history[:, 0]
    for column, style in ((1, "-"), (2, ":"), (3, "--")):
        axis.plot(iterations, history[:, column], style, linewidth=0.8, alpha=0.6, label=HISTORY_COLUMNS[column])
    window = max(1, len(history) // 50)
    if len(history) >= window > 1:
        smooth = np.convolve(history[:, 1], np.ones(window) / window, mode="valid")
        axis.plot(iterations[window - 1:], smooth, "k-", linewidth=1.5, label=f"loss, mean of {window}")
    axis.set_xlabel("iteration")
    axis.set_ylabel("loss")
    axis.set_title("U-SAM training: 0.4 CE + 0.6 Dice")
    axis.legend()
    figure.tight_layout()
    with atomic_path(path, ".png") as temporary:
        figure.savefig(temporary)
    plt.close(figure)
    return path


def _write_log(history: np.ndarray, path: Path) -> Path:
    lines = [",".join(HISTORY_COLUMNS)] + [
        f"{int(row[0])}," + ",".join(f"{v:.6g}" for v in row[1:]) for row in history
    ]
    return write_text_atomic(path, "\n".join(lines) + "\n")


def _finished_result(final: Path, total: int) -> TrainingResult:
    _, extra = read_usam_checkpoint(final)
    training = extra.get("training", {})
    if training.get("iteration") != total:
        raise InputError(f"{final}: a finished run of {training.get('iteration')} iterations, not {total}; "
                         f"use a new output folder")
    history = extra.get("history", torch.zeros(0, len(HISTORY_COLUMNS))).numpy()
    return TrainingResult(final, total, history, skipped=True)


def train_usam(settings: USAMTrainingSettings, stop_after: Optional[int] = None, progress: bool = True) -> TrainingResult:
    """Train (or resume, or skip a finished run); ``stop_after``: stop at that iteration as if interrupted."""
    _check_settings(settings)
    if settings.threads:
        torch.set_num_threads(int(settings.threads))
    device = resolve_device(settings.device)
    output = Path(settings.output)
    config = USAMConfig(image_size=settings.image_size)
    dataset = USAMSliceDataset(settings.slices, config.image_size, config.hu_window,
                               PromptSettings(settings.per_class, settings.negatives),
                               settings.intensity, settings.augmentation)
    total = _total_iterations(settings, len(dataset))
    plain = {**settings.plain(), "iterations": total}
    if (output / FINAL).exists():
        return _finished_result(output / FINAL, total)

    warnings: List[str] = []
    history: List[List[float]] = []
    start = 0
    if (output / LATEST).exists():
        summary = output / LATEST.replace(".pt", ".json")
        if summary.exists():
            _compare_resume(json.loads(summary.read_text())["settings"], plain, output / LATEST)
        model, extra = read_usam_checkpoint(output / LATEST, device)
        _compare_resume(extra["training"]["settings"], plain, output / LATEST)
        start = int(extra["training"]["iteration"])
        history = extra["history"].tolist()
        optimizer = build_optimizer(model, settings.lr_decoder, settings.lr_encoder, settings.weight_decay)
        optimizer.load_state_dict(extra["optimizer"])
        torch.set_rng_state(extra["torch_rng"])
    else:
        torch.manual_seed(settings.seed)
        model, report = usam_with_sam_weights(config, settings.sam_checkpoint)
        warnings += report.warnings
        model = model.to(device)
        optimizer = build_optimizer(model, settings.lr_decoder, settings.lr_encoder, settings.weight_decay)
    stop = total if stop_after is None else min(total, int(stop_after))

    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=IterationBatches(len(dataset), settings.batch_size, settings.seed, start, stop),
        collate_fn=collate, num_workers=settings.workers, pin_memory=device.type == "cuda",
    )
    bar = tqdm(loader, total=stop - start, initial=0, desc=f"U-SAM training {start}->{stop}/{total}",
               unit="it", disable=not progress)
    iteration = saved = start
    try:
        for batch in bar:
            set_learning_rates(optimizer, iteration, total)
            loss, ce, dice = train_step(model, optimizer, batch, device, settings.dice_weight)
            if not math.isfinite(loss):
                raise FloatingPointError(f"U-SAM training: loss became {loss} at iteration {iteration}")
            history.append([iteration, loss, ce, dice, optimizer.param_groups[0]["lr"]])
            iteration += 1
            bar.set_postfix(loss=f"{loss:.4f}", ce=f"{ce:.4f}", dice=f"{dice:.4f}")
            if iteration % settings.checkpoint_every == 0 and iteration < stop:
                _save_latest(output / LATEST, model, optimizer, iteration, history, plain)
                saved = iteration
    except KeyboardInterrupt:  # Ctrl-C: keep what was done, then stop
        if iteration > saved:
            _save_latest(output / LATEST, model, optimizer, iteration, history, plain)
        raise
    finally:
        bar.close()

    history_array = np.asarray(history, dtype=float).reshape(-1, len(HISTORY_COLUMNS))
    if iteration < total:  # stopped on purpose (stop_after): keep the state to continue from
        if iteration > saved:
            _save_latest(output / LATEST, model, optimizer, iteration, history, plain)
        return TrainingResult(output / LATEST, iteration, history_array, resumed_from=start, warnings=warnings)
    save_usam_checkpoint(output / FINAL, model, extra={
        "training": {"iteration": total, "settings": plain, "finished": True, "warnings": warnings},
        "history": torch.tensor(history_array),
    })
    write_curve(history_array, output / CURVE)
    _write_log(history_array, output / LOG)
    for name in (LATEST, LATEST.replace(".pt", ".json")):  # the final checkpoint marks the run as finished
        (output / name).unlink(missing_ok=True)
    return TrainingResult(output / FINAL, total, history_array, resumed_from=start, warnings=warnings)
