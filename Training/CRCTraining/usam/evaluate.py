"""U-SAM evaluation on 2D slices: Dice and IoU per class (CARE Table 2) and the prompt ablation (Table 4).

Metrics follow the public U-SAM code (``DiceIndexAB`` / ``mIoUAB``): counts are summed over all
slices of the test set, then divided, per class: Dice = sum 2|A n B| / sum (|A| + |B|), IoU =
sum |A n B| / sum |A u B|. Means are over the foreground classes (background excluded). The
comparison is at the model's input resolution (S x S), as in the public code.

Points are deterministic by default (``sample_points`` without rng): the same slice always gets the
same prompt. With ``draws`` > 0 they are sampled at random from the ground truth as CARE's evaluation
does ("the selection of promptable points involves random sampling"), ``draws`` seeded draws per
slice whose counts are summed, so a row does not hang on one draw. The image encoding does not depend on the prompt, so the ablation encodes each batch
once and decodes it for every prompt setting. 0 points means no prompt at all (Table 4 "S+U").
Beyond the paper (issue 20): a box prompt, the tumor's tight ground-truth box in input pixels
(SAM's evaluation box), alone or with points; a slice without tumor gets no box (a NaN row).
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from CRCSegmentationLib.networks.usam import USAM
from CRCSegmentationLib.usam.prompts import pad_prompts, sample_points
from CRCTraining.usam.data import FOREGROUND_CLASSES, TUMOR, PromptSettings, USAMSliceDataset, collate
from OrganGuidanceLib.atomic import write_text_atomic
from OrganGuidanceLib.validation import InputError

TABLE4_POINTS = (0, 1, 3, 5)  # CARE Table 4 rows: S+U, S+U+1 point, +3 points, +5 points
BOX_CLASS = TUMOR  # the box prompt frames the tumor (what a user boxes)


@dataclass(frozen=True)
class PromptSetting:
    """One row of the (extended) Table 4: points per class, background negatives, and the tumor's box or not."""

    points_per_class: int = 0
    negatives: int = 0
    box: bool = False

    def __post_init__(self) -> None:
        if self.points_per_class < 0 or self.negatives < 0:
            raise InputError(f"prompt setting: points ({self.points_per_class}) and negatives ({self.negatives}) "
                             "must be >= 0")

    @property
    def name(self) -> str:
        if self.points_per_class == 0 and not self.box:
            return "no prompt"
        parts = ["box"] if self.box else []
        if self.points_per_class:
            parts.append(f"{self.points_per_class} point" + ("s" if self.points_per_class > 1 else ""))
        name = " + ".join(parts)
        return name + (f" +{self.negatives} neg." if self.negatives and self.points_per_class else "")


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
    box: bool = False

    @property
    def setting(self) -> PromptSetting:
        return PromptSetting(self.points_per_class, self.negatives, self.box)

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
        return {"checkpoint": self.checkpoint, "prompt": self.setting.name, "points_per_class": self.points_per_class,
                "negatives": self.negatives, "box": self.box, "slices": self.slices, "classes": per_class,
                "mean_dice": number(self.mean_dice), "mean_iou": number(self.mean_iou)}


def _foreground_mean(values: np.ndarray) -> float:
    foreground = values[1:]
    foreground = foreground[~np.isnan(foreground)]
    return float(foreground.mean()) if foreground.size else float("nan")


def _prompt_tensors(labels: np.ndarray, per_class: int, negatives: int, device: torch.device,
                    rng: Optional[np.random.Generator] = None) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Points for each label map of a batch (random with ``rng``, else deterministic); (None, None) for 0 points."""
    if per_class == 0:
        return None, None
    prompts = [sample_points(label, FOREGROUND_CLASSES, per_class, negatives, rng=rng) for label in labels]
    coords, point_labels = pad_prompts(prompts)
    return torch.from_numpy(coords).to(device), torch.from_numpy(point_labels).to(device)


def ground_truth_boxes(labels: np.ndarray, value: int = BOX_CLASS) -> np.ndarray:
    """B x 4 float32 (x0, y0, x1, y1): the tight box of ``value`` in each label map; NaN rows where it is absent."""
    boxes = np.full((len(labels), 4), np.nan, dtype=np.float32)
    for row, label in enumerate(labels):
        rows, cols = np.nonzero(label == value)
        if len(rows):
            boxes[row] = (cols.min(), rows.min(), cols.max(), rows.max())
    return boxes


def decode_setting(model: USAM, encoding, labels: np.ndarray, setting: PromptSetting,
                   device: torch.device, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
    """Logits B x C x S x S of one prompt setting; the box is passed only when the setting has one."""
    coords, point_labels = _prompt_tensors(labels, setting.points_per_class,
                                           setting.negatives if setting.points_per_class else 0, device, rng)
    if not setting.box:
        return model.decode(encoding, coords, point_labels)
    boxes = torch.from_numpy(ground_truth_boxes(labels)).to(device)
    return model.decode(encoding, coords, point_labels, boxes=boxes)


@torch.no_grad()
def evaluate_prompts(model: USAM, dataset: USAMSliceDataset, settings: Sequence[PromptSetting], batch_size: int = 8,
                     device: Optional[torch.device] = None, checkpoint: str = "",
                     progress: bool = True, draws: int = 0, seed: int = 0) -> List[USAMEvaluation]:
    """Evaluate ``model`` on every slice of ``dataset`` once per prompt setting (encode once, decode per setting).

    ``draws`` > 0: points sampled at random that many times per slice (batch ``b`` draws from
    ``default_rng((seed, b))``), their counts summed; 0: deterministic points."""
    if not settings:
        raise InputError("U-SAM evaluation: no prompt setting to evaluate")
    if batch_size < 1:
        raise InputError(f"U-SAM evaluation: batch_size must be at least 1, got {batch_size}")
    if draws < 0:
        raise InputError(f"U-SAM evaluation: draws must be 0 (deterministic points) or more, got {draws}")
    device = device or next(model.parameters()).device
    if isinstance(model, torch.nn.Module):  # any object with encode_image / decode / config evaluates (stand-ins)
        model.eval()
    num_classes = model.config.num_classes
    totals = {s: OverlapCounts.zeros(num_classes) for s in settings}
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collate,
        sampler=[(i, None) for i in range(len(dataset))],  # seed None: no augmentation, deterministic points
    )
    for number, batch in enumerate(tqdm(loader, desc="U-SAM evaluation", unit="batch", disable=not progress)):
        encoding = model.encode_image(batch["image"].to(device))
        reference = batch["label"].to(device)
        rng = np.random.default_rng((seed, number)) if draws else None
        for setting in totals:
            for _ in range(draws if draws and setting.points_per_class else 1):
                logits = decode_setting(model, encoding, batch["label"].numpy(), setting, device, rng)
                totals[setting].add(overlap_counts(logits.argmax(dim=1), reference, num_classes))
    names = tuple(model.config.class_names)
    return [USAMEvaluation(names, s.points_per_class, s.negatives if s.points_per_class else 0, len(dataset),
                           totals[s], checkpoint, s.box) for s in settings]


def evaluate_point_counts(model: USAM, dataset: USAMSliceDataset, point_counts: Sequence[int], negatives: int = 1,
                          batch_size: int = 8, device: Optional[torch.device] = None, checkpoint: str = "",
                          progress: bool = True) -> List[USAMEvaluation]:
    """Evaluate ``model`` on every slice of ``dataset`` once per point count (encode once, decode per count)."""
    if any(k < 0 for k in point_counts) or not point_counts:
        raise InputError(f"U-SAM evaluation: point counts {list(point_counts)} must be one or more numbers >= 0")
    settings = [PromptSetting(k, negatives if k else 0) for k in point_counts]
    return evaluate_prompts(model, dataset, settings, batch_size, device, checkpoint, progress)


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
        row = f"{'U-SAM, ' + e.setting.name:<26}"
        for c in range(1, len(e.class_names)):
            row += cell(e.dice[c]) + cell(e.iou[c])
        lines.append(row + cell(e.mean_dice) + cell(e.mean_iou))
    return "\n".join(lines)


def write_reports(evaluations: Sequence[USAMEvaluation], folder: Path, stem: str = "usam_evaluation") -> Tuple[Path, Path]:
    """``<stem>.csv`` (one row per prompt setting and class, plus the mean) and ``<stem>.json``; atomic."""
    folder = Path(folder)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    # The columns of the first version first (scripts read them), the prompt's name and box after them.
    writer.writerow(["points_per_class", "negatives", "class", "dice", "iou", "slices", "checkpoint", "prompt", "box"])
    for e in evaluations:
        last = [e.slices, e.checkpoint, e.setting.name, int(e.box)]
        for c in range(1, len(e.class_names)):
            writer.writerow([e.points_per_class, e.negatives, e.class_names[c], _csv_number(e.dice[c]),
                             _csv_number(e.iou[c])] + last)
        writer.writerow([e.points_per_class, e.negatives, "mean", _csv_number(e.mean_dice),
                         _csv_number(e.mean_iou)] + last)
    csv_path = write_text_atomic(folder / f"{stem}.csv", buffer.getvalue())
    json_path = write_text_atomic(folder / f"{stem}.json",
                                  json.dumps([e.to_dict() for e in evaluations], indent=2) + "\n")
    return csv_path, json_path


def _csv_number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6f}"


def prompt_ablation(checkpoints: Dict[int, Path], slices: Path, negatives: int = 1, batch_size: int = 8,
                    device: Optional[torch.device] = None, intensity: str = "hu",
                    progress: bool = True) -> List[USAMEvaluation]:
    """CARE Table 4: evaluate each point count with its model (one model may serve several counts).

    ``checkpoints``: point count -> model source (``.pt`` checkpoint, U-SAM bundle folder or catalogue
    name). The paper trains one model per row; with a single checkpoint the rows show how one model
    behaves with fewer or more points than it was trained with. ``CRCTraining.usam.ablation`` adds the
    box rows and one prompt to 3D.
    """
    settings = {PromptSetting(k, negatives if k else 0): source for k, source in checkpoints.items()}
    return evaluate_settings(settings, slices, batch_size, device, intensity, progress)


def evaluate_settings(sources: Dict[PromptSetting, Union[str, Path]], slices: Path, batch_size: int = 8,
                      device: Optional[torch.device] = None, intensity: str = "hu",
                      progress: bool = True, draws: int = 0) -> List[USAMEvaluation]:
    """Each prompt setting evaluated with its model source; each model is loaded and run once. In setting order."""
    from CRCSegmentationLib.models.usam import load_usam_model

    by_source: Dict[str, List[PromptSetting]] = {}
    for setting, source in sources.items():
        by_source.setdefault(str(source), []).append(setting)
    results: Dict[PromptSetting, USAMEvaluation] = {}
    for source, settings in by_source.items():
        model = load_usam_model(source, device or "cpu")
        dataset = evaluation_dataset(slices, model, intensity)
        for evaluation in evaluate_prompts(model, dataset, settings, batch_size, device, source, progress, draws):
            results[evaluation.setting] = evaluation
    return [results[s] for s in sorted(results, key=lambda s: (s.box, s.points_per_class, s.negatives))]
