"""Point prompts for U-SAM, sampled from a 2D label map.

CARE / U-SAM (Tables 2 and 4): k points per foreground class (3 by default) are
taken from the ground truth and all given to SAM's prompt encoder as positive
points (label 1), as the public U-SAM code does. We add optional negative points
(label 0) from the background next to the foreground, where a user would click
to say "not here"; ``negatives=0`` is the public code's setting.

Points are SAM's ``(x, y) = (column, row)`` in pixels of the array they were
sampled on (SAM's prompt encoder adds the half-pixel shift itself). The public
code passes ``(row, column)``; we do not.

Two modes:
- ``rng`` given (training): uniformly random pixels of each class, as the public
  code samples them;
- ``rng=None`` (evaluation, slice-to-slice propagation): deterministic points
  well inside each class, the maximum of the distance transform first, then the
  farthest-apart points of the inner part (distance to the border >= 1 pixel
  where the class is thick enough), so the same slice always gets the same prompt.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from OrganGuidanceLib.validation import InputError

POSITIVE, NEGATIVE, PADDING = 1, 0, -1  # SAM's point labels
NEGATIVE_MARGIN_PX = 10.0  # negatives lie in the background within this distance of the foreground


def _empty_coords() -> np.ndarray:
    return np.zeros((0, 2), dtype=np.float32)


def _empty_labels() -> np.ndarray:
    return np.zeros((0,), dtype=np.int64)


@dataclass
class PointPrompts:
    """Points of one slice: ``coords_xy`` N x 2 float32 (column, row), ``labels`` N int64 (1 positive, 0 negative)."""

    coords_xy: np.ndarray = field(default_factory=_empty_coords)
    labels: np.ndarray = field(default_factory=_empty_labels)

    def __post_init__(self) -> None:
        self.coords_xy = np.asarray(self.coords_xy, dtype=np.float32).reshape(-1, 2)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.coords_xy) != len(self.labels):
            raise InputError(f"point prompts: {len(self.coords_xy)} coordinates but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)


def _check_label(label2d: np.ndarray) -> np.ndarray:
    label2d = np.asarray(label2d)
    if label2d.ndim != 2:
        raise InputError(f"prompt label map: must be a 2D slice (rows x cols), got shape {label2d.shape}")
    if label2d.size == 0:
        raise InputError("prompt label map: is empty (0 pixels)")
    if not (np.issubdtype(label2d.dtype, np.integer) or label2d.dtype == bool):
        if not np.all(np.equal(np.mod(label2d, 1), 0)):
            raise InputError(f"prompt label map: must hold integer labels, got {label2d.dtype} with fractions")
    return label2d


def _inside_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (px) of each mask pixel to the nearest non-mask pixel; the image border counts as outside."""
    padded = np.pad(mask, 1, constant_values=False)
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1]


def _farthest_points(candidates: np.ndarray, count: int, first: int, chosen: np.ndarray) -> List[int]:
    """Greedy farthest-point choice among ``candidates`` (M x 2 row, col): indices into ``candidates``.

    Starts at ``first`` unless ``chosen`` (K x 2) already holds points, then always takes the
    candidate farthest from everything chosen so far; ties go to the lower index (deterministic).
    """
    picked: List[int] = []
    if len(chosen):
        nearest = np.min(np.linalg.norm(candidates[:, None, :] - chosen[None, :, :], axis=2), axis=1)
    else:
        picked.append(first)
        nearest = np.linalg.norm(candidates - candidates[first], axis=1)
    while len(picked) < count:
        best = int(np.argmax(nearest))
        picked.append(best)
        nearest = np.minimum(nearest, np.linalg.norm(candidates - candidates[best], axis=1))
    return picked


def _deterministic_class_points(mask: np.ndarray, count: int) -> np.ndarray:
    """``count`` (row, col) points well inside ``mask``: the deepest pixel, then farthest-apart inner pixels."""
    distance = _inside_distance(mask)
    deepest = float(distance.max())
    # Inner part: at least 2 px deep (1 px from the border) and at least half as deep as the deepest pixel.
    threshold = max(min(2.0, deepest), deepest / 2.0)
    candidates = np.argwhere(distance >= threshold)
    first = int(np.argmax(distance[candidates[:, 0], candidates[:, 1]]))
    picked = _farthest_points(candidates, count, first, np.zeros((0, 2)))
    return candidates[picked]


def _negative_candidates(label2d: np.ndarray, foreground: np.ndarray, margin_px: float) -> np.ndarray:
    """(row, col) of background pixels near the foreground (within ``margin_px``), else all background."""
    background = label2d == 0
    if foreground.any():
        distance = ndimage.distance_transform_edt(~foreground)
        near = background & (distance <= margin_px) & (distance >= min(2.0, margin_px))
        if near.any():
            return np.argwhere(near)
    return np.argwhere(background)


def sample_points(
    label2d: np.ndarray,
    classes: Sequence[int],
    per_class: int = 3,
    negatives: int = 0,
    rng: Optional[np.random.Generator] = None,
    negative_margin_px: float = NEGATIVE_MARGIN_PX,
) -> PointPrompts:
    """Point prompts for one slice (CARE Table 4: ``per_class`` points per class, 3 in U-SAM-B/P).

    ``label2d``: rows x cols label map (0 background). For each value of ``classes`` present in
    ``label2d``, ``per_class`` positive points (label 1) inside it, in the order of ``classes``
    (repeated pixels when the class has fewer pixels); a class absent from the slice gets none.
    Then ``negatives`` points (label 0) in the background within ``negative_margin_px`` of the
    foreground (anywhere in the background when there is no foreground or no such pixel).
    ``rng``: random points (training); ``None``: deterministic points (evaluation, propagation).
    """
    label2d = _check_label(label2d)
    if per_class < 0 or negatives < 0:
        raise InputError(f"point prompts: per_class ({per_class}) and negatives ({negatives}) must be >= 0")
    if any(int(c) == 0 for c in classes):
        raise InputError("point prompts: classes must be foreground labels; 0 is the background")
    points: List[np.ndarray] = []
    labels: List[int] = []
    for value in classes:
        mask = label2d == int(value)
        if per_class == 0 or not mask.any():
            continue
        if rng is None:
            rows_cols = _deterministic_class_points(mask, per_class)
        else:
            pixels = np.argwhere(mask)
            rows_cols = pixels[rng.choice(len(pixels), per_class, replace=len(pixels) < per_class)]
        points.append(rows_cols)
        labels += [POSITIVE] * per_class
    if negatives:
        foreground = np.isin(label2d, [int(c) for c in classes])
        candidates = _negative_candidates(label2d, foreground, negative_margin_px)
        if len(candidates):
            if rng is None:
                chosen = np.concatenate(points) if points else np.zeros((0, 2))
                centre = np.array(label2d.shape) / 2.0
                first = int(np.argmin(np.linalg.norm(candidates - centre, axis=1)))
                picked = _farthest_points(candidates.astype(float), negatives, first, chosen.astype(float))
                points.append(candidates[picked])
            else:
                points.append(candidates[rng.choice(len(candidates), negatives, replace=len(candidates) < negatives)])
            labels += [NEGATIVE] * negatives
    if not points:
        return PointPrompts()
    rows_cols = np.concatenate(points).astype(np.float32)
    return PointPrompts(coords_xy=rows_cols[:, ::-1], labels=np.array(labels, dtype=np.int64))


def pad_prompts(prompts: Sequence[PointPrompts]) -> Tuple[np.ndarray, np.ndarray]:
    """Batch prompts of different lengths: coords B x N x 2 float32, labels B x N int64 padded with -1 (SAM)."""
    if len(prompts) == 0:
        raise InputError("point prompts: cannot batch an empty list of prompts")
    longest = max(len(p) for p in prompts)
    coords = np.zeros((len(prompts), longest, 2), dtype=np.float32)
    labels = np.full((len(prompts), longest), PADDING, dtype=np.int64)
    for row, prompt in enumerate(prompts):
        coords[row, : len(prompt)] = prompt.coords_xy
        labels[row, : len(prompt)] = prompt.labels
    return coords, labels
