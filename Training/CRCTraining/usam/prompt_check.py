"""How a U-SAM model answers prompts on slices with a tumor: Dice per prompt, and negative clicks on false regions.

CARE's evaluation (Table 4): ``k`` positive points sampled at random from the ground truth ("the selection
of promptable points involves random sampling", CARE §Ablation), ``draws`` seeded draws per slice and
averaged, so a table does not hang on one lucky draw. Extended as SAM evaluates boxes (the tight
ground-truth box) and as a user corrects, with deterministic clicks (``prompts.sample_points`` without
``rng``: the deepest tumor pixel first): after one positive click, each false-positive region (a
connected component of the prediction outside the tumor) gets one negative click at its deepest pixel, and counts as removed when less than ``REMOVED_FRACTION`` of it stays predicted. And the
constructed case: one click on the tumor plus a loose box around the tumor and a look-alike blob next to
it (a box drawn too large); where the look-alike is then predicted, a negative click on it must remove it.

Dice is on the tumor (label 2) at the model's input resolution, one value per slice, averaged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage

from CRCSegmentationLib.networks.usam import USAM
from CRCSegmentationLib.usam.prompts import NEGATIVE, POSITIVE, sample_points
from CRCTraining.usam.data import TUMOR, PromptSettings, USAMSliceDataset

POINT_COUNTS = (0, 1, 3, 5)
DRAWS = 8  # random point draws per slice and point count
REMOVED_FRACTION = 0.2  # a false region is removed when less than this share of it stays tumor
MIN_TUMOR_PX = 20  # slices with less tumor (its first and last slices) are left out, as a user would


@dataclass
class PromptCheck:
    dice: Dict[str, List[float]] = field(default_factory=dict)  # prompt name -> Dice per slice
    false_regions: int = 0  # false-positive regions after the positive clicks
    removed: int = 0  # ... removed by one negative click each
    lookalike_regions: int = 0  # of the false regions, those on a look-alike
    lookalike_removed: int = 0
    loose_box_regions: int = 0  # look-alikes predicted after 1 click + a box around tumor and look-alike
    loose_box_removed: int = 0  # ... removed by a negative click on them

    def mean(self, name: str) -> float:
        return float(np.mean(self.dice[name])) if self.dice.get(name) else float("nan")

    def table(self) -> str:
        lines = ["prompt            Dice   slices"]
        for name, values in self.dice.items():
            lines.append(f"{name:<16} {self.mean(name):6.3f}  {len(values)}")
        lines.append(f"negative click removes a false region: {self.removed}/{self.false_regions} "
                     f"(on look-alikes {self.lookalike_removed}/{self.lookalike_regions}); after a loose box: "
                     f"{self.loose_box_removed}/{self.loose_box_regions}")
        return "\n".join(lines)


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    total = prediction.sum() + reference.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(prediction, reference).sum() / total)


def _tensor_points(xy: np.ndarray, labels: np.ndarray) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    if len(labels) == 0:
        return None, None
    xy, labels = np.ascontiguousarray(xy, np.float32), np.ascontiguousarray(labels, np.int64)
    return torch.from_numpy(xy)[None], torch.from_numpy(labels)[None]


def predict(model: USAM, encoding, xy: np.ndarray, labels: np.ndarray, box: Optional[np.ndarray] = None) -> np.ndarray:
    """Tumor mask (S x S) for one encoded slice and a prompt in input pixels."""
    coords, point_labels = _tensor_points(xy, labels)
    boxes = None if box is None else torch.as_tensor(box, dtype=torch.float32).reshape(1, 4)
    with torch.inference_mode():
        logits = model.decode(encoding, coords, point_labels, boxes)
    return (logits[0].argmax(0) == TUMOR).numpy()


def tight_box(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=np.float32)


def positive_points(tumor: np.ndarray, count: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """``count`` tumor points: random ones with ``rng``, else the deepest pixel and the farthest-apart inner ones."""
    return sample_points(tumor.astype(np.uint8), (1,), per_class=count, negatives=0, rng=rng).coords_xy


def _negative_round(model: USAM, encoding, tumor: np.ndarray, lookalike: np.ndarray, positives: np.ndarray,
                    result: PromptCheck) -> None:
    """One negative click on each false region left by ``positives``; count those it removes."""
    labels = np.full(len(positives), POSITIVE)
    prediction = predict(model, encoding, positives, labels)
    regions, count = ndimage.label(prediction & ~tumor)
    for region in range(1, count + 1):
        mask = regions == region
        if mask.sum() < 4:
            continue
        depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
        xy = np.concatenate([positives, np.array([[col, row]], dtype=np.float32)])
        after = predict(model, encoding, xy, np.append(labels, NEGATIVE))
        removed = after[mask].mean() < REMOVED_FRACTION
        on_lookalike = bool((mask & lookalike).sum() >= 0.5 * mask.sum())
        result.false_regions += 1
        result.removed += int(removed)
        result.lookalike_regions += int(on_lookalike)
        result.lookalike_removed += int(removed and on_lookalike)


def _deepest_xy(mask: np.ndarray) -> np.ndarray:
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return np.array([[col, row]], dtype=np.float32)


def _loose_box_round(model: USAM, encoding, tumor: np.ndarray, lookalike: np.ndarray, result: PromptCheck) -> None:
    """1 click on the tumor + a box around it and the nearest look-alike blob; a negative click on the blob."""
    blobs, count = ndimage.label(lookalike)
    if not count:
        return
    centre = np.argwhere(tumor).mean(axis=0)
    distances = [np.linalg.norm(np.argwhere(blobs == b).mean(axis=0) - centre) for b in range(1, count + 1)]
    blob = blobs == 1 + int(np.argmin(distances))
    if blob.sum() < 6 or min(distances) > tumor.shape[0] / 4:
        return
    box = tight_box(tumor | blob)
    positives = positive_points(tumor, 1)
    before = predict(model, encoding, positives, np.array([POSITIVE]), box)
    if before[blob].mean() < 0.5:
        return
    after = predict(model, encoding, np.concatenate([positives, _deepest_xy(blob)]), np.array([POSITIVE, NEGATIVE]),
                    box)
    result.loose_box_regions += 1
    result.loose_box_removed += int(after[blob].mean() < REMOVED_FRACTION)


def check_prompts(model: USAM, slices: Path, max_slices: Optional[int] = None,
                  point_counts: Sequence[int] = POINT_COUNTS, negative_after: int = 1, draws: int = DRAWS,
                  seed: int = 0) -> PromptCheck:
    """Dice per prompt (0/1/3/5 random points, box, box + 1 point) and negative clicks, on the tumor slices of
    ``slices``; the points of slice ``i`` come from ``numpy.random.default_rng((seed, i))``."""
    model.eval()
    dataset = USAMSliceDataset(slices, model.config.image_size, model.config.hu_window, PromptSettings(0, 0),
                               augmentation=False)
    result = PromptCheck()
    names = [f"{k} points" for k in point_counts] + ["box", "box + 1 point"]
    result.dice = {name: [] for name in names}
    used = 0
    for index in range(len(dataset)):
        sample = dataset[(index, None)]
        tumor = sample["label"] == TUMOR
        if tumor.sum() < MIN_TUMOR_PX:
            continue
        with torch.inference_mode():
            encoding = model.encode_image(torch.from_numpy(sample["image"])[None])
        rng = np.random.default_rng((seed, index))
        for k in point_counts:
            scores = []
            for _ in range(draws if k else 1):
                xy = positive_points(tumor, k, rng) if k else np.zeros((0, 2), np.float32)
                scores.append(dice(predict(model, encoding, xy, np.full(len(xy), POSITIVE)), tumor))
            result.dice[f"{k} points"].append(float(np.mean(scores)))
        box = tight_box(tumor)
        result.dice["box"].append(dice(predict(model, encoding, np.zeros((0, 2)), np.zeros(0), box), tumor))
        one = positive_points(tumor, 1)
        result.dice["box + 1 point"].append(dice(predict(model, encoding, one, np.array([POSITIVE]), box), tumor))
        _negative_round(model, encoding, tumor, sample["lookalike"], positive_points(tumor, negative_after), result)
        _loose_box_round(model, encoding, tumor, sample["lookalike"], result)
        used += 1
        if max_slices is not None and used >= max_slices:
            break
    return result
