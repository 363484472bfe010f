"""Carrying a tumor mask from slice to slice: the next slice's prompt, the stop rules, the walk up and down.

U-SAM segments 2D slices; a 3D tumor comes from walking away from a segmented slice, prompting each
next slice with points taken from the previous slice's mask (as CARE's evaluation samples points
from a mask: deterministic here, ``prompts.sample_points(rng=None)``) plus a few background
negatives around it. The walk stops where the tumor ends: the network's mask is empty, or much
smaller than the previous slice's (``min_area_ratio``), or lies mostly off it (``min_overlap``:
it jumped to a neighbouring structure), or the distance limit in mm is reached.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
from scipy import ndimage

from CRCSegmentationLib.usam.existing_mask import ExistingMask, components_hit
from CRCSegmentationLib.usam.prompts import NEGATIVE_MARGIN_PX, sample_points
from OrganGuidanceLib.validation import InputError

# (slice index, N x 2 (col, row) points, N labels) -> the network's tumor mask of that slice (rows x cols bool)
SegmentSlice = Callable[[int, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class PropagationSettings:
    max_distance_mm: float = 40.0  # how far up and down from the seed slice (about a rectal tumor's length)
    positives: int = 3  # points per slice from the previous mask (U-SAM: 3 points per class)
    negatives: int = 3  # background points of the previous slice, to keep the mask from spreading
    keep_connected: bool = True  # keep only components that overlap the previous slice's mask
    min_pixels: int = 1  # fewer tumor pixels than this: the tumor has vanished, stop
    min_area_ratio: float = 0.05  # a mask below this fraction of the previous slice's: the tumor ends here
    min_overlap: float = 0.2  # with keep_connected: less of the mask than this on the previous mask: a jump

    def is_valid(self) -> Tuple[bool, str]:
        if not np.isfinite(self.max_distance_mm) or self.max_distance_mm < 0:
            return False, f"propagation distance must be >= 0 mm, got {self.max_distance_mm}"
        if self.positives < 1 or self.negatives < 0 or self.min_pixels < 1:
            return False, "propagation needs >= 1 positive point, >= 0 negatives and min_pixels >= 1"
        if not (0.0 <= self.min_area_ratio < 1.0 and 0.0 <= self.min_overlap <= 1.0):
            return False, (f"propagation min_area_ratio ({self.min_area_ratio}) must be in [0, 1) and "
                           f"min_overlap ({self.min_overlap}) in [0, 1]")
        return True, ""

    def checked(self) -> "PropagationSettings":
        valid, reason = self.is_valid()
        if not valid:
            raise InputError(reason)
        return self


def overlapping_components(mask: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """The connected components (8-connected) of ``mask`` that overlap ``previous``."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count == 0:
        return mask.astype(bool)
    keep = np.unique(labels[previous & (labels > 0)])
    return np.isin(labels, keep[keep > 0])


def next_slice_prompt(previous: np.ndarray, settings: PropagationSettings) -> Tuple[np.ndarray, np.ndarray]:
    """Points (col, row) and labels for the next slice, from the previous slice's mask.

    Sampled on the mask's bounding box grown by the negatives' reach: the same points as on the whole
    slice (distances inside the mask and to it within the margin do not change), without two distance
    transforms of a whole 512 x 512 slice per step (half of a step's time).
    """
    rows, cols = np.nonzero(previous)
    margin = int(np.ceil(NEGATIVE_MARGIN_PX)) + 2
    r0, c0 = max(0, rows.min() - margin), max(0, cols.min() - margin)
    r1, c1 = min(previous.shape[0], rows.max() + margin + 1), min(previous.shape[1], cols.max() + margin + 1)
    prompts = sample_points(previous[r0:r1, c0:c1].astype(np.uint8), classes=(1,), per_class=settings.positives,
                            negatives=settings.negatives, rng=None)
    return np.asarray(prompts.coords_xy, dtype=np.float32) + np.float32([c0, r0]), np.asarray(prompts.labels)


def stop_reason(k: int, mask: np.ndarray, previous: np.ndarray, settings: PropagationSettings) -> Optional[str]:
    """Why the walk ends at slice ``k`` (the mask is not kept), or None to go on."""
    area, before = int(mask.sum()), int(previous.sum())
    if area < settings.min_pixels:
        return f"tumor vanished on slice {k}"
    if area < settings.min_area_ratio * before:
        return f"tumor vanished on slice {k} ({area} px, {100.0 * area / before:.0f}% of the previous slice)"
    if settings.keep_connected and int((mask & previous).sum()) < settings.min_overlap * area:
        return f"tumor vanished on slice {k} (the mask left the previous slice's tumor)"
    return None


def carry(shape: Tuple[int, int, int], spacing_z: float, seed_slice: int, seed_mask: np.ndarray,
          segment: SegmentSlice, settings: PropagationSettings, existing: Optional[ExistingMask] = None,
          progress: Optional[Callable[[str, float], None]] = None,
          cancel: Optional[threading.Event] = None) -> Tuple[Dict[int, np.ndarray], Dict[str, str]]:
    """Walk down then up from ``seed_slice``: (slice -> new mask, direction -> why it stopped).

    Without ``existing`` every visited slice's mask is returned. With it, a visited slice becomes the
    existing mask plus the network's tumor there, the walk goes on from the part connected to that
    tumor, and only slices that changed are returned. ``cancel`` is checked before each slice
    (``RunCancelled``); ``progress(stage, fraction)`` is told after each.
    """
    from OrganGuidanceLib.progress import RunCancelled

    slices: Dict[int, np.ndarray] = {}
    reasons: Dict[str, str] = {}
    max_steps = int(np.floor(settings.max_distance_mm / spacing_z + 1e-6))
    done, total = 0, 2 * max(1, max_steps)
    for name, step in (("down", -1), ("up", 1)):  # array index k: "up" = increasing k
        previous = seed_mask
        reasons[name] = f"distance limit {settings.max_distance_mm:g} mm"
        for n in range(1, max_steps + 1):
            k = seed_slice + step * n
            if not 0 <= k < shape[0]:
                reasons[name] = "end of the volume"
                break
            if cancel is not None and cancel.is_set():
                raise RunCancelled(f"propagation cancelled before slice {k}")
            mask = segment(k, *next_slice_prompt(previous, settings))
            if settings.keep_connected:
                mask = overlapping_components(mask, previous)
            reason = stop_reason(k, mask, previous, settings)
            if reason is not None:
                reasons[name] = reason
                break
            if existing is None:
                slices[k] = mask
                previous = mask
            else:
                before = existing.slice(k)
                merged = before | mask
                if not np.array_equal(merged, before):
                    slices[k] = merged
                previous = components_hit(merged, np.zeros((0, 2), int), mask)
            done += 1
            if progress is not None:
                progress(f"propagation {name}: slice {k}", min(1.0, done / total))
    return slices, reasons
