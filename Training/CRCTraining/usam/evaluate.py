"""U-SAM evaluation on 2D slices: Dice and IoU per class (CARE Table 2) and the prompt ablation (Table 4).

Metrics follow the public U-SAM code (``DiceIndexAB`` / ``mIoUAB``): counts are summed over all
slices of the test set, then divided, per class: Dice = sum 2|A n B| / sum (|A| + |B|), IoU =
sum |A n B| / sum |A u B|. Means are over the foreground classes (background excluded). The
comparison is at the model's input resolution (S x S), as in the public code.

Points are deterministic (``sample_points`` without rng): the same slice always gets the same
prompt. The image encoding does not depend on the prompt, so the ablation encodes each batch
once and decodes it for every point count. 0 points means no prompt at all (Table 4 "S+U").
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from CRCSegmentationLib.networks.usam import USAM
from CRCSegmentationLib.usam.prompts import pad_prompts, sample_points
from CRCTraining.usam.data import FOREGROUND_CLASSES, PromptSettings, USAMSliceDataset, collate
from OrganGuidanceLib.atomic import write_text_atomic
from OrganGuidanceLib.validation import InputError

TABLE4_POINTS = (0, 1, 3, 5)  # CARE Table 4 rows: S+U, S+U+1 point, +3 points, +5 points


@dataclass
class OverlapCounts:
    """Per-class sums over slices: intersection |A n B|, |A| (prediction), |B| (reference)."""

    intersection: np.ndarray
    predicted: np.ndarray
    reference: np.ndarray

    @classmethod
    def zeros(cls, num_classes: int) -> "OverlapCounts":
        return cls(*(np.zeros(num_classes, dtype=np.int64) for _ in range(3)))

    def add(self, other: "OverlapCounts") -> None:
        self.intersection += other.intersection
        self.predicted += other.predicted
        self.reference += other.reference

    def dice(self) -> np.ndarray:
        """2 sum|A n B| / sum(|A| + |B|) per class; NaN where a class is absent from both."""
        return _ratio(2 * self.intersection, self.predicted + self.reference)

    def iou(self) -> np.ndarray:
        return _ratio(self.intersection, self.predicted + self.reference - self.intersection)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.full(numerator.shape, np.nan)
    nonzero = denominator > 0
    out[nonzero] = numerator[nonzero] / denominator[nonzero]
    return out


def overlap_counts(prediction: torch.Tensor, reference: torch.Tensor, num_classes: int) -> OverlapCounts:
    """Label maps B x S x S (or any shape, equal) -> per-class overlap counts."""
    if prediction.shape != reference.shape:
        raise InputError(f"overlap: prediction shape {tuple(prediction.shape)} != reference {tuple(reference.shape)}")
    classes = torch.arange(num_classes, device=prediction.device)
    pred = prediction.reshape(1, -1) == classes[:, None]
    ref = reference.reshape(1, -1).to(prediction.device) == classes[:, None]
    return OverlapCounts(
        intersection=(pred & ref).sum(dim=1).cpu().numpy().astype(np.int64),
        predicted=pred.sum(dim=1).cpu().numpy().astype(np.int64),
        reference=ref.sum(dim=1).cpu().numpy().astype(np.int64),
    )


@dataclass
class USAMEvaluation:
    """Dice and IoU per class of one prompt setting over a slice set."""

    class_names: Tuple[str, ...]
    points_per_class: int
    negatives: int
    slices: int
    counts: OverlapCounts
    checkpoint: str = ""

    @property
    def dice(self) -> np.ndarray:
        return self.counts.dice()

    @property
    def iou(self) -> np.ndarray:
        return self.counts.iou()

    @property
    def mean_dice(self) -> float:
        return _foreground_mean(self.dice)

    @property
    def mean_iou(self) -> float:
        return _foreground_mean(self.iou)

    def to_dict(self) -> dict:
        def number(value: float) -> Optional[float]:
            return None if math.isnan(value) else float(value)

        per_class = {
            name: {"dice": number(self.dice[c]), "iou": number(self.iou[c]),
                   "intersection": int(self.counts.intersection[c]), "predicted": int(self.counts.predicted[c]),
                   "reference": int(self.counts.reference[c])}
            for c, name in enumerate(self.class_names) if c > 0
        }
        return {"checkpoint": self.checkpoint, "points_per_class": self.points_per_class, "negatives": self.negatives,
                "slices": self.slices, "classes": per_class,
                "mean_dice": number(self.mean_dice), "mean_iou": number(self.mean_iou)}


def _foreground_mean(values: np.ndarray) -> float:
    foreground = values[1:]
    foreground = foreground[~np.isnan(foreground)]
    return float(foreground.mean()) if foreground.size else float("nan")


def _prompt_tensors(labels: np.ndarray, per_class: int, negatives: int,
                    device: torch.device) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Deterministic points for each label map of a batch; (None, None) for 0 points (no prompt)."""
    if per_class == 0:
        return None, None
    prompts = [sample_points(label, FOREGROUND_CLASSES, per_class, negatives) for label in labels]
    coords, point_labels = pad_prompts(prompts)
    return torch.from_numpy(coords).to(device), torch.from_numpy(point_labels).to(device)


@torch.no_grad()
def evaluate_point_counts(model: USAM, dataset: USAMSliceDataset, point_counts: Sequence[int], negatives: int = 1,
                          batch_size: int = 8, device: Optional[torch.device] = None, checkpoint: str = "",
                          progress: bool = True) -> List[USAMEvaluation]:
    """Evaluate ``model`` on every slice of ``dataset`` once per point count (encode once, decode per count)."""
    if any(k < 0 for k in point_counts) or not point_counts:
        raise InputError(f"U-SAM evaluation: point counts {list(point_counts)} must be one or more numbers >= 0")
    if batch_size < 1:
        raise InputError(f"U-SAM evaluation: batch_size must be at least 1, got {batch_size}")
    device = device or next(model.parameters()).device
    model.eval()
    num_classes = model.config.num_classes
    totals = {k: OverlapCounts.zeros(num_classes) for k in point_counts}
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collate,
        sampler=[(i, None) for i in range(len(dataset))],  # seed None: no augmentation, deterministic points
    )
    for batch in tqdm(loader, desc="U-SAM evaluation", unit="batch", disable=not progress):
        encoding = model.encode_image(batch["image"].to(device))
        reference = batch["label"].to(device)
        for count in point_counts:
            coords, labels = _prompt_tensors(batch["label"].numpy(), count, negatives if count else 0, device)
            prediction = model.decode(encoding, coords, labels).argmax(dim=1)
            totals[count].add(overlap_counts(prediction, reference, num_classes))
    names = tuple(model.config.class_names)
    return [USAMEvaluation(names, k, negatives if k else 0, len(dataset), totals[k], checkpoint) for k in point_counts]


def evaluation_dataset(slices: Path, model: USAM, intensity: str = "hu") -> USAMSliceDataset:
    """The slice set at the model's input size and HU window (prompts are drawn by the evaluator)."""
    return USAMSliceDataset(slices, model.config.image_size, model.config.hu_window, PromptSettings(0, 0),
                            intensity=intensity, augmentation=False)


def format_table(evaluations: Sequence[USAMEvaluation]) -> str:
    """A table laid out like CARE Table 4: per class Dice (%) and IoU (%), then the foreground mean."""
    names = [n.capitalize() for n in evaluations[0].class_names[1:]]
    header = f"{'Method':<26}" + "".join(f"{n:>20}" for n in names + ["Mean"])
    sub = f"{'':<26}" + "".join(f"{'Dice (%)':>10}{'IoU (%)':>10}" for _ in names + ["Mean"])
    lines = [header, sub]

    def cell(value: float) -> str:
        return f"{'n/a':>10}" if math.isnan(value) else f"{100 * value:>10.2f}"

    for e in evaluations:
        label = "U-SAM, no prompt" if e.points_per_class == 0 else (
            f"U-SAM + {e.points_per_class} point" + ("s" if e.points_per_class > 1 else "")
            + (f" +{e.negatives} neg." if e.negatives else ""))
        row = f"{label:<26}"
        for c in range(1, len(e.class_names)):
            row += cell(e.dice[c]) + cell(e.iou[c])
        lines.append(row + cell(e.mean_dice) + cell(e.mean_iou))
    return "\n".join(lines)


def write_reports(evaluations: Sequence[USAMEvaluation], folder: Path, stem: str = "usam_evaluation") -> Tuple[Path, Path]:
    """``<stem>.csv`` (one row per point count and class, plus the mean) and ``<stem>.json``; atomic."""
    folder = Path(folder)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["points_per_class", "negatives", "class", "dice", "iou", "slices", "checkpoint"])
    for e in evaluations:
        for c in range(1, len(e.class_names)):
            writer.writerow([e.points_per_class, e.negatives, e.class_names[c], _csv_number(e.dice[c]),
                             _csv_number(e.iou[c]), e.slices, e.checkpoint])
        writer.writerow([e.points_per_class, e.negatives, "mean", _csv_number(e.mean_dice), _csv_number(e.mean_iou),
                         e.slices, e.checkpoint])
    csv_path = write_text_atomic(folder / f"{stem}.csv", buffer.getvalue())
    json_path = write_text_atomic(folder / f"{stem}.json",
                                  json.dumps([e.to_dict() for e in evaluations], indent=2) + "\n")
    return csv_path, json_path


def _csv_number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6f}"


def prompt_ablation(checkpoints: Dict[int, Path], slices: Path, negatives: int = 1, batch_size: int = 8,
                    device: Optional[torch.device] = None, intensity: str = "hu",
                    progress: bool = True) -> List[USAMEvaluation]:
    """CARE Table 4: evaluate each point count with its checkpoint (one model may serve several counts).

    The paper trains one model per row; with a single checkpoint the rows show how one model
    behaves with fewer or more points than it was trained with.
    """
    from CRCSegmentationLib.usam import load_usam_checkpoint

    by_checkpoint: Dict[Path, List[int]] = {}
    for count, path in sorted(checkpoints.items()):
        by_checkpoint.setdefault(Path(path), []).append(count)
    results: Dict[int, USAMEvaluation] = {}
    for path, counts in by_checkpoint.items():
        model = load_usam_checkpoint(path, device or "cpu")
        dataset = evaluation_dataset(slices, model, intensity)
        for evaluation in evaluate_point_counts(model, dataset, counts, negatives, batch_size, device,
                                                str(path), progress):
            results[evaluation.points_per_class] = evaluation
    return [results[k] for k in sorted(results)]
