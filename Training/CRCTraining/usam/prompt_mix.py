"""Training prompts as SAM trained: a random mix of points, a jittered box, both, or nothing, per sample.

SAM (Kirillov et al. 2023, Appendix "Training algorithm"): the first prompt of a mask is a random
foreground point or a box, the box being the ground truth's bounding box with noise of standard
deviation 10 % of the box side per coordinate, at most 20 pixels. We draw, per sample:

- no prompt with probability ``no_prompt_fraction`` (the automatic case; also taught to U-SAM);
- else, when the slice has a target, a box with probability ``box_fraction``, and points with it
  with probability ``box_points_fraction``; without a box always points;
- points: ``min_points..per_class`` positives (uniform) in the target class (the tumor), and
  ``0..negatives`` negatives, each in a look-alike region (background that looks like tumor,
  ``phantom_prompts``) with probability ``lookalike_negative_fraction`` when the slice has one, else
  in the background near the foreground (``prompts.sample_points``);
- a slice without the target: with probability ``fallback_fraction`` positives on the other
  foreground classes (the normal rectum), as propagation does when it runs past the tumor's end; the
  label then says "no tumor here". Otherwise no positive point;
- a correction (``correction_fraction`` of the samples with a look-alike blob near the target): the
  prompt a user ends with after the network took in the blob: positives (or a box drawn around target
  and blob, as a box drawn too large) and one or two negatives on the blob; the target stays the tumor;
- "the object at the click" (SAM's task: a prompt, not the image, says what to segment): with
  probability ``object_fraction``, when the slice has a look-alike blob apart from the rectum, the
  prompt (points, box or both) is on that blob and the sample's target is that blob as the target
  class (the tumor then counts as normal rectum). Without it a network can segment the phantom's tumor
  from the image alone and learns to ignore prompts.

Coordinates are input pixels (x = column, y = row); a box is (x0, y0, x1, y1) of corner pixel centres.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from CRCSegmentationLib.usam.prompts import NEGATIVE, POSITIVE, PointPrompts, sample_points
from OrganGuidanceLib.validation import InputError

SAM_BOX_NOISE = 0.1  # SAM: noise std = 10 % of the box side
SAM_BOX_NOISE_MAX_PX = 20.0  # SAM: at most 20 pixels
NEAR_FRACTION = 0.2  # a look-alike blob is "near" the target within this share of the image side


@dataclass
class PromptMix:
    """How a training sample's prompt is drawn (module doc). Defaults: the demonstration model's mix."""

    target_classes: Tuple[int, ...] = (2,)  # the tumor (CARE label 2)
    min_points: int = 1
    max_points: int = 5
    negatives: int = 2
    box_fraction: float = 0.35
    box_points_fraction: float = 0.5
    no_prompt_fraction: float = 0.1
    lookalike_negative_fraction: float = 0.7
    fallback_fraction: float = 0.5
    object_fraction: float = 0.25
    correction_fraction: float = 0.3

    def check(self) -> None:
        for name in ("box_fraction", "box_points_fraction", "no_prompt_fraction", "lookalike_negative_fraction",
                     "fallback_fraction", "object_fraction", "correction_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"U-SAM prompt mix: {name} must be in [0, 1], got {value}")
        if not 0 <= self.min_points <= self.max_points or self.negatives < 0:
            raise InputError(
                f"U-SAM prompt mix: need 0 <= min_points ({self.min_points}) <= points ({self.max_points}) "
                f"and negatives ({self.negatives}) >= 0"
            )
        if not self.target_classes or any(int(c) <= 0 for c in self.target_classes):
            raise InputError(f"U-SAM prompt mix: target classes {self.target_classes} must be foreground labels")


def jittered_box(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The bounding box (x0, y0, x1, y1) of ``mask`` with SAM's noise, clipped to the image."""
    rows, cols = np.nonzero(mask)
    box = np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=np.float64)
    sides = np.array([box[2] - box[0] + 1, box[3] - box[1] + 1] * 2)
    noise = np.clip(rng.normal(0.0, SAM_BOX_NOISE * sides), -SAM_BOX_NOISE_MAX_PX, SAM_BOX_NOISE_MAX_PX)
    box = box + noise
    high = np.array([mask.shape[1], mask.shape[0]] * 2, dtype=np.float64) - 1.0
    box = np.clip(box, 0.0, high)
    return np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])],
                    dtype=np.float32)


def _pixels(mask: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random (x, y) pixels of ``mask``."""
    rows_cols = np.argwhere(mask)
    picked = rows_cols[rng.choice(len(rows_cols), count, replace=len(rows_cols) < count)]
    return picked[:, ::-1].astype(np.float32)


def _negatives(label: np.ndarray, lookalike: Optional[np.ndarray], count: int, mix: PromptMix,
               foreground: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    points = []
    has_lookalike = lookalike is not None and bool(lookalike.any())
    for _ in range(count):
        if has_lookalike and rng.random() < mix.lookalike_negative_fraction:
            points.append(_pixels(lookalike, 1, rng))
        else:
            near = sample_points(label, foreground, per_class=0, negatives=1, rng=rng)
            points.append(near.coords_xy)
    return np.concatenate(points) if points else np.zeros((0, 2), np.float32)


def _object_target(label: np.ndarray, lookalike: Optional[np.ndarray], mix: PromptMix,
                   foreground: Sequence[int], rng: np.random.Generator) -> Optional[np.ndarray]:
    """The label with one look-alike blob (apart from the rectum) as the target and the target as normal rectum."""
    if lookalike is None or not lookalike.any() or rng.random() >= mix.object_fraction:
        return None
    blobs, count = ndimage.label(lookalike & (label == 0))
    sizes = ndimage.sum_labels(np.ones_like(blobs), blobs, range(1, count + 1)) if count else np.zeros(0)
    choices = [index + 1 for index, size in enumerate(sizes) if size >= 4]
    if not choices:
        return None
    relabelled = label.copy()
    others = [c for c in foreground if c not in mix.target_classes]
    relabelled[np.isin(label, list(mix.target_classes))] = others[0] if others else 0
    relabelled[blobs == choices[int(rng.integers(len(choices)))]] = mix.target_classes[0]
    return relabelled


def sample_mixed_prompt(label: np.ndarray, lookalike: Optional[np.ndarray], mix: PromptMix,
                        foreground: Sequence[int], rng: np.random.Generator
                        ) -> Tuple[PointPrompts, Optional[np.ndarray], np.ndarray]:
    """One training sample's prompt (points, box or None) in ``label``'s pixels, and its target label (module doc)."""
    if rng.random() < mix.no_prompt_fraction:
        return PointPrompts(), None, label
    relabelled = _object_target(label, lookalike, mix, foreground, rng)
    if relabelled is not None:
        label, lookalike = relabelled, lookalike & (relabelled == 0)
    prompts, box = _prompt_for(label, lookalike, mix, foreground, rng)
    return prompts, box, label


def _nearest_blob(target: np.ndarray, lookalike: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The look-alike blob (4+ pixels) nearest the target, if within ``NEAR_FRACTION`` of the image side."""
    if lookalike is None or not lookalike.any() or not target.any():
        return None
    blobs, count = ndimage.label(lookalike)
    centre = np.argwhere(target).mean(axis=0)
    best, best_distance = None, NEAR_FRACTION * max(target.shape)
    for index in range(1, count + 1):
        pixels = np.argwhere(blobs == index)
        distance = float(np.min(np.linalg.norm(pixels - centre, axis=1)))
        if len(pixels) >= 4 and distance <= best_distance:
            best, best_distance = index, distance
    return None if best is None else blobs == best


def _correction(target: np.ndarray, blob: np.ndarray, mix: PromptMix,
                rng: np.random.Generator) -> Tuple[PointPrompts, Optional[np.ndarray]]:
    box = jittered_box(target | blob, rng) if rng.random() < 0.5 else None
    positives = _pixels(target, int(rng.integers(0 if box is not None else 1, 4)), rng)
    negatives = _pixels(blob, int(rng.integers(1, 3)), rng)
    labels = np.array([POSITIVE] * len(positives) + [NEGATIVE] * len(negatives), dtype=np.int64)
    return PointPrompts(np.concatenate([positives, negatives]), labels), box


def _prompt_for(label: np.ndarray, lookalike: Optional[np.ndarray], mix: PromptMix, foreground: Sequence[int],
                rng: np.random.Generator) -> Tuple[PointPrompts, Optional[np.ndarray]]:
    target = np.isin(label, list(mix.target_classes))
    if rng.random() < mix.correction_fraction:
        blob = _nearest_blob(target, lookalike)
        if blob is not None:
            return _correction(target, blob, mix, rng)
    box = None
    if target.any():
        positive_mask = target
        if rng.random() < mix.box_fraction:
            box = jittered_box(target, rng)
            if rng.random() >= mix.box_points_fraction:
                return PointPrompts(), box
    else:
        others = np.isin(label, [c for c in foreground if c not in mix.target_classes])
        positive_mask = others if others.any() and rng.random() < mix.fallback_fraction else None
    positives = np.zeros((0, 2), np.float32)
    if positive_mask is not None:
        positives = _pixels(positive_mask, int(rng.integers(mix.min_points, mix.max_points + 1)), rng)
    count = int(rng.integers(0, mix.negatives + 1))
    negatives = _negatives(label, lookalike, count, mix, foreground, rng)
    if positive_mask is None and box is None:
        negatives = negatives[:0]  # negatives alone prompt nothing (SAM needs a target); keep it a no-prompt sample
    labels = np.array([POSITIVE] * len(positives) + [NEGATIVE] * len(negatives), dtype=np.int64)
    return PointPrompts(np.concatenate([positives, negatives]), labels), box
