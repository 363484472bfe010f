"""Spacing-aware binary morphology with a ball of a radius given in millimetres.

A dilation by a ball of radius r is exactly ``distance_to_mask <= r``, and an
erosion is ``distance_to_background > r``; a Euclidean distance transform
(``edt``, multi-threaded, anisotropic) computes both in one linear pass, which
is much faster than iterating a small structuring element. Work is restricted
to the mask's bounding box grown by the radius, since nothing outside it can
change.
"""
from __future__ import annotations

import os
from typing import Sequence, Tuple

import edt
import numpy as np

Spacing = Sequence[float]  # in array axis order (z, y, x)


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def bounding_box(mask: np.ndarray) -> Tuple[slice, ...] | None:
    """Tight bounding box of the non-zero voxels, or None for an empty mask.

    The first axis is found on the whole array, the others only on the slab it spans (cheaper for
    a small mask in a large volume, e.g. a tumor or OOI in a clinical CT).
    """
    first = np.flatnonzero(np.any(mask, axis=tuple(range(1, mask.ndim))))
    if first.size == 0:
        return None
    boxes = [slice(int(first[0]), int(first[-1]) + 1)]
    slab = mask[boxes[0]]
    for axis in range(1, mask.ndim):
        present = np.flatnonzero(np.any(slab, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        boxes.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(boxes)


def grow_box(box: Tuple[slice, ...], margin: Sequence[int], shape: Sequence[int]) -> Tuple[slice, ...]:
    return tuple(
        slice(max(0, s.start - m), min(n, s.stop + m)) for s, m, n in zip(box, margin, shape)
    )


def radius_in_voxels(radius_mm: float, spacing: Spacing) -> Tuple[int, ...]:
    return tuple(int(np.floor(radius_mm / s)) for s in spacing)


def ball(radius_mm: float, spacing: Spacing) -> np.ndarray:
    """Boolean ball of ``radius_mm`` on a grid of ``spacing``: the reference structuring element."""
    half = radius_in_voxels(radius_mm, spacing)
    axes = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing)], indexing="ij")
    return sum(a**2 for a in axes) <= radius_mm**2 + 1e-9


def _distance(mask: np.ndarray, spacing: Spacing) -> np.ndarray:
    # black_border=False: the image edge is not a boundary of the organ.
    return edt.edt(
        np.ascontiguousarray(mask, dtype=np.uint8),
        anisotropy=tuple(float(s) for s in spacing),
        black_border=False,
        parallel=_threads(),
    )


def _threshold_distance(mask: np.ndarray, radius_mm: float, spacing: Spacing, dilate: bool) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if radius_mm <= 0:
        return mask.copy()
    box = bounding_box(mask)
    out = np.zeros(mask.shape, dtype=bool)
    if box is None:
        return out
    # Dilation can reach radius voxels beyond the box; erosion needs one voxel of
    # background around it to keep the mask's own boundary in view.
    margin = tuple(h + 1 for h in radius_in_voxels(radius_mm, spacing)) if dilate else (1,) * mask.ndim
    box = grow_box(box, margin, mask.shape)
    if dilate:
        out[box] = _distance(~mask[box], spacing) <= radius_mm + 1e-6  # distance to the mask
    else:
        out[box] = _distance(mask[box], spacing) > radius_mm + 1e-6  # distance to the background
    return out


def dilate_mm(mask: np.ndarray, radius_mm: float, spacing: Spacing) -> np.ndarray:
    """Binary dilation by a ball of ``radius_mm`` (spacing-aware)."""
    return _threshold_distance(mask, radius_mm, spacing, dilate=True)


def erode_mm(mask: np.ndarray, radius_mm: float, spacing: Spacing) -> np.ndarray:
    """Binary erosion by a ball of ``radius_mm``; voxels outside the image count as inside."""
    return _threshold_distance(mask, radius_mm, spacing, dilate=False)
