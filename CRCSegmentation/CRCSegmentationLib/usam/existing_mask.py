"""How a prompt refines a segment that already exists (e.g. the automatic result) on one axial slice.

U-SAM's network takes points and boxes; it was never trained with SAM's mask prompt (CARE paper:
points only; our demonstration model: points and boxes), so an existing mask does not go into the
network. It is refined by rules around the network's answer ``model`` to the user's prompt:

- positives add: the components (8-connected) of ``model`` under a positive point are added;
- a box redraws: inside the box the result is ``model``'s components that touch the box, outside the
  box the existing mask is kept (plus those components where they reach beyond the box);
- negatives remove: a negative point on the existing mask removes the connected region of
  ``existing AND NOT model`` it lies in (the network's boundary cuts a leak off the tumor); when the
  network still calls that pixel tumor, the user's word wins and the whole connected region of the
  existing mask under the point goes;
- everything the prompt says nothing about (other components, other slices) is kept.

With negatives only, the network needs to know what the tumor is to draw that boundary:
``context_points`` gives it positives sampled inside the existing mask away from the negatives.
``ExistingMask`` holds the segment's voxels on the CT grid (a slab; slices outside it are empty).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np
from scipy import ndimage

from CRCSegmentationLib.usam.prompts import sample_points
from OrganGuidanceLib.validation import InputError

EIGHT_CONNECTED = np.ones((3, 3), bool)
CONTEXT_MARGIN_PX = 10.0  # context positives lie this far from any negative (prompts.NEGATIVE_MARGIN_PX)


@dataclass
class ExistingMask:
    """A segment's voxels on the CT grid ``shape`` (z, y, x): ``slab`` holds slices ``start`` .. ``start + len - 1``."""

    shape: Tuple[int, int, int]
    slab: np.ndarray  # bool, n x rows x cols
    start: int = 0

    def __post_init__(self) -> None:
        self.shape = tuple(int(n) for n in self.shape)
        self.slab = np.asarray(self.slab, dtype=bool)
        if len(self.shape) != 3 or self.slab.ndim != 3 or self.slab.shape[1:] != self.shape[1:]:
            raise InputError(f"existing mask: slab of shape {self.slab.shape} does not fit the volume {self.shape}")
        if self.start < 0 or self.start + self.slab.shape[0] > self.shape[0]:
            raise InputError(f"existing mask: slices {self.start}..{self.start + self.slab.shape[0] - 1} "
                             f"are outside the volume's {self.shape[0]} slices")

    @classmethod
    def from_volume(cls, volume: np.ndarray, name: str = "existing mask") -> "ExistingMask":
        volume = np.asarray(volume)
        if volume.ndim != 3:
            raise InputError(f"{name}: need a 3D (z, y, x) mask, got shape {volume.shape}")
        return cls(volume.shape, volume > 0, 0)

    def slice(self, k: int) -> np.ndarray:
        """The mask of axial slice ``k`` (rows x cols bool; empty outside the slab, a copy inside)."""
        if not 0 <= k < self.shape[0]:
            raise InputError(f"existing mask: slice {k} is outside the volume's {self.shape[0]} slices")
        inside = self.start <= k < self.start + self.slab.shape[0]
        return self.slab[k - self.start].copy() if inside else np.zeros(self.shape[1:], bool)

    def nonempty_slices(self) -> Iterator[int]:
        for n in np.flatnonzero(self.slab.any(axis=(1, 2))):
            yield int(n) + self.start


def pixel_indices(xy: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """N x 2 slice pixels (col, row) -> N x 2 (row, col) integer indices, clipped into the slice."""
    rows_cols = np.round(np.asarray(xy, dtype=float).reshape(-1, 2)[:, ::-1]).astype(int)
    return np.clip(rows_cols, 0, np.array(shape) - 1)


def box_region(box: Optional[np.ndarray], shape: Tuple[int, int]) -> np.ndarray:
    """The pixels (rows x cols bool) whose centres lie inside ``box`` (x0, y0, x1, y1), its edges included."""
    region = np.zeros(shape, bool)
    if box is None:
        return region
    x0, y0, x1, y1 = (float(v) for v in box)
    c0, r0 = max(0, int(np.ceil(x0 - 1e-6))), max(0, int(np.ceil(y0 - 1e-6)))
    c1, r1 = min(shape[1] - 1, int(np.floor(x1 + 1e-6))), min(shape[0] - 1, int(np.floor(y1 + 1e-6)))
    if c0 <= c1 and r0 <= r1:
        region[r0:r1 + 1, c0:c1 + 1] = True
    return region


def components_hit(mask: np.ndarray, pixels: np.ndarray, region: Optional[np.ndarray] = None) -> np.ndarray:
    """The components (8-connected) of ``mask`` that contain one of ``pixels`` (N x 2 row, col) or touch ``region``."""
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if count == 0:
        return np.zeros(mask.shape, bool)
    hit = labels[pixels[:, 0], pixels[:, 1]] if len(pixels) else np.zeros(0, int)
    if region is not None:
        hit = np.concatenate([hit, labels[region]])
    keep = np.unique(hit)
    return np.isin(labels, keep[keep > 0])


def prompted_components(model: np.ndarray, positives_xy: np.ndarray, box: Optional[np.ndarray]) -> np.ndarray:
    """What the prompt asked for: the components of the network's mask under a positive point or touching the box.

    A mask the network draws elsewhere (a look-alike the user did not point at) is not the tumor asked for.
    """
    model = np.asarray(model, bool)
    region = box_region(box, model.shape) if box is not None else None
    return components_hit(model, pixel_indices(positives_xy, model.shape), region)


def context_points(existing: np.ndarray, negatives_xy: np.ndarray, count: int = 3) -> np.ndarray:
    """Up to ``count`` (col, row) points inside ``existing``, at least ``CONTEXT_MARGIN_PX`` from every negative.

    Taken from the components of ``existing`` that no negative lies in when there are such, so the
    network is told what the kept tumor is; none when every candidate is too close to a negative.
    """
    existing = np.asarray(existing, bool)
    negatives = pixel_indices(negatives_xy, existing.shape)
    candidates = existing & ~components_hit(existing, negatives)
    if not candidates.any():
        far = np.ones(existing.shape, bool)
        far[negatives[:, 0], negatives[:, 1]] = False
        candidates = existing & (ndimage.distance_transform_edt(far) > CONTEXT_MARGIN_PX)
    if not candidates.any():
        return np.zeros((0, 2), np.float32)
    return sample_points(candidates.astype(np.uint8), classes=(1,), per_class=count, rng=None).coords_xy


def refine_existing(existing: np.ndarray, model: np.ndarray, positives_xy: np.ndarray,
                    negatives_xy: np.ndarray, box: Optional[np.ndarray] = None) -> np.ndarray:
    """The existing mask refined by one prompt (rules in the module docstring); rows x cols bool."""
    existing = np.asarray(existing, bool)
    model = np.asarray(model, bool)
    if existing.shape != model.shape:
        raise InputError(f"existing mask: shape {existing.shape} does not match the slice shape {model.shape}")
    asked = prompted_components(model, positives_xy, box)
    result = existing.copy()
    if box is not None:
        inside = box_region(box, model.shape)
        result[inside] = asked[inside]
    for row, col in pixel_indices(negatives_xy, model.shape):
        if not result[row, col]:
            continue
        outside = result & ~model
        region = outside if outside[row, col] else result
        result &= ~components_hit(region, np.array([[row, col]]))
    return result | asked

