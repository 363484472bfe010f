"""Simulated clicks on one slice, for the ``--points`` demo and the one-prompt-to-3D start of the ablation.

CARE / U-SAM (Table 4) prompts with k points per class sampled from the ground truth. The slice
ablation (``CRCTraining.usam.evaluate``, ``prompt_check``) samples them at random, seeded, and averages
several draws, as CARE does; here they are taken deterministically (``prompts.sample_points`` without
``rng``: the deepest pixel first, then farthest-apart inner pixels), so a demo run and its QA picture
always show the same clicks.
Beyond the paper (issue 20), as a user corrects a result:

- a negative click goes where the current prediction is wrong: the deepest pixel of its
  largest false-positive component (the place a person would click "not here");
- a box is the ground truth's bounding box (SAM's box prompt; SAM evaluates with the tight box).

Coordinates are slice pixels: points (x, y) = (column, row), a box (x0, y0, x1, y1) = (first
column, first row, last column, last row) of the mask, pixel centres at integers (SAM's layout).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
from scipy import ndimage

from CRCSegmentationLib.usam.prompts import NEGATIVE, POSITIVE, sample_points
from OrganGuidanceLib.validation import InputError

CARE_POINT_COUNTS = (1, 3, 5)  # CARE Table 4: 1, 3 (U-SAM's default) and 5 points


def _empty_xy() -> np.ndarray:
    return np.zeros((0, 2), dtype=np.float32)


def _empty_labels() -> np.ndarray:
    return np.zeros((0,), dtype=np.int64)


@dataclass
class SimulatedPrompt:
    """One prompt of a slice: points ``xy`` N x 2 (column, row), ``labels`` N (1 / 0), optional ``box``."""

    name: str
    xy: np.ndarray = field(default_factory=_empty_xy)
    labels: np.ndarray = field(default_factory=_empty_labels)
    box: Optional[np.ndarray] = None  # (x0, y0, x1, y1) slice pixels

    def __post_init__(self) -> None:
        self.xy = np.asarray(self.xy, dtype=np.float32).reshape(-1, 2)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.xy) != len(self.labels):
            raise InputError(f"prompt {self.name!r}: {len(self.xy)} points but {len(self.labels)} labels")
        if self.box is not None:
            self.box = np.asarray(self.box, dtype=np.float32).reshape(4)

    @property
    def is_empty(self) -> bool:
        return len(self.labels) == 0 and self.box is None

    @property
    def positives(self) -> int:
        return int(np.sum(self.labels == POSITIVE))

    @property
    def negatives(self) -> int:
        return int(np.sum(self.labels == NEGATIVE))

    def plus(self, other: "SimulatedPrompt", name: str) -> "SimulatedPrompt":
        """This prompt's points followed by ``other``'s; ``other``'s box wins when it has one."""
        box = other.box if other.box is not None else self.box
        return SimulatedPrompt(name, np.concatenate([self.xy, other.xy]),
                               np.concatenate([self.labels, other.labels]), box)


def _check_mask(mask: np.ndarray, what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise InputError(f"{what}: must be a non-empty 2D slice mask (rows x cols), got shape {mask.shape}")
    return mask.astype(bool)


def positive_clicks(reference: np.ndarray, count: int) -> SimulatedPrompt:
    """``count`` positive clicks inside ``reference`` (CARE: points sampled from the ground truth)."""
    reference = _check_mask(reference, "ground truth")
    if count < 1:
        raise InputError(f"positive clicks: count must be >= 1, got {count}")
    if not reference.any():
        raise InputError("positive clicks: the ground truth is empty on this slice; nothing to click on")
    prompts = sample_points(reference.astype(np.uint8), classes=(1,), per_class=count, rng=None)
    return SimulatedPrompt(f"{count} point" + ("s" if count > 1 else ""), prompts.coords_xy, prompts.labels)


def deepest_pixel(mask: np.ndarray) -> np.ndarray:
    """(row, col) of the pixel of ``mask`` farthest from its border (the image edge counts as border)."""
    padded = np.pad(_check_mask(mask, "mask"), 1, constant_values=False)
    distance = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
    return np.array(np.unravel_index(int(np.argmax(distance)), distance.shape))


def false_positive_region(prediction: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of ``prediction & ~reference`` (empty when there is none)."""
    prediction = _check_mask(prediction, "prediction")
    reference = _check_mask(reference, "ground truth")
    if prediction.shape != reference.shape:
        raise InputError(f"prediction shape {prediction.shape} differs from the ground truth's {reference.shape}")
    components, count = ndimage.label(prediction & ~reference, structure=np.ones((3, 3), bool))
    if count == 0:
        return np.zeros(prediction.shape, dtype=bool)
    sizes = np.bincount(components.ravel())[1:]
    return components == int(np.argmax(sizes)) + 1


def negative_click(prediction: np.ndarray, reference: np.ndarray) -> Optional[SimulatedPrompt]:
    """A negative click at the deepest pixel of the largest false-positive region; None when there is none."""
    region = false_positive_region(prediction, reference)
    if not region.any():
        return None
    row, col = deepest_pixel(region)
    return SimulatedPrompt("1 negative", [[float(col), float(row)]], [NEGATIVE])


def ground_truth_box(reference: np.ndarray) -> SimulatedPrompt:
    """The tight bounding box of ``reference``: (first col, first row, last col, last row)."""
    reference = _check_mask(reference, "ground truth")
    if not reference.any():
        raise InputError("box: the ground truth is empty on this slice; there is nothing to box")
    rows, cols = np.nonzero(reference)
    return SimulatedPrompt("box", box=np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=np.float32))


def central_slice(tumor: np.ndarray) -> int:
    """The axial slice (array axis 0) in the middle of the tumor's extent, where one prompt goes to reach 3D;
    the largest slice when the middle one is empty (a tumor in two pieces)."""
    tumor = np.asarray(tumor)
    if tumor.ndim != 3 or not tumor.any():
        raise InputError(f"tumor volume: must be a 3D mask with a tumor, got shape {tumor.shape}"
                         + ("" if tumor.ndim != 3 else " and no tumor voxel"))
    areas = tumor.reshape(tumor.shape[0], -1).sum(axis=1)
    occupied = np.flatnonzero(areas)
    middle = int(occupied[len(occupied) // 2])
    return middle if areas[middle] else int(np.argmax(areas))


def care_prompts(reference: np.ndarray, counts: Sequence[int] = CARE_POINT_COUNTS) -> List[SimulatedPrompt]:
    """The ablation's fixed prompts of one slice: ``counts`` positive points, the box, the box + 1 point.

    The negative click depends on a prediction, so it is made afterwards (``negative_click``).
    """
    prompts = [positive_clicks(reference, k) for k in counts]
    box = ground_truth_box(reference)
    return prompts + [box, box.plus(positive_clicks(reference, 1), "box + 1 point")]
