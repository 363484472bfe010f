"""Phantom slices for prompt training: the rectal tumor plus look-alikes, blobs that are NOT tumor.

A look-alike is a lobulated blob with the tumor's own CT numbers (median and spread of the slice's tumor
core; the phantom's tumor HU where the slice has none). Two sorts:

- on the rectal wall next to the tumor (``wall_fraction`` of the tumor slices), painted over normal
  rectum only (its label stays normal rectum): the mass then looks larger than the tumor, and nothing
  in the image says where the tumor ends. One click on the tumor leaves that open; clicks spread over
  the tumor, a box, or a negative click on the look-alike settle it (SAM's ambiguity of a single point);
- ``min_lookalikes..max_lookalikes`` blobs in the tissue around the rectum, painted over background only (a click
  elsewhere must not pick them up). They are written as the slice's
``lookalike`` mask (``data.write_case_slices``), where training places negative clicks
(``prompt_mix``) and where the demonstration model's test checks that a negative click removes one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from scipy import ndimage

from CRCTraining.usam.data import NORMAL_RECTUM, TUMOR, extract_phantom_slices
from OrganGuidanceLib.phantom import NOISE_HU, TUMOR_HU
from OrganGuidanceLib.validation import InputError

SOFT_TISSUE_MIN_HU = -150.0  # a look-alike goes into the body (fat, muscle), never into air
EDGE_SIGMA_PX = 0.7  # the phantom's tumor edge is partial-volume blurred; so is a look-alike's


@dataclass(frozen=True)
class LookalikeSettings:
    min_lookalikes: int = 1  # blobs around the rectum per slice, drawn uniformly min..max
    max_lookalikes: int = 2
    wall_fraction: float = 0.6  # tumor slices with a look-alike on the rectal wall next to the tumor
    wall_radius_px: Tuple[float, float] = (3.0, 5.5)  # about the tumor's thickness
    radius_px: Tuple[float, float] = (2.0, 4.5)  # semi-axes, pixels (2.9 mm phantom pixels: 6..13 mm)
    distance_px: Tuple[float, float] = (8.0, 22.0)  # from the rectum's centre, when not touching


def _blob(shape: Tuple[int, int], centre: np.ndarray, rng: np.random.Generator,
          radius_px: Tuple[float, float]) -> np.ndarray:
    """A lobulated ellipse (soft mask in [0, 1]) around ``centre`` (row, col), semi-axes in ``radius_px``."""
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    a, b = rng.uniform(*radius_px, size=2)
    angle = rng.uniform(0, np.pi)
    du, dv = rows - centre[0], cols - centre[1]
    u = du * np.cos(angle) + dv * np.sin(angle)
    v = -du * np.sin(angle) + dv * np.cos(angle)
    theta = np.arctan2(v, u)
    lobes = 1.0 + 0.15 * np.sin(int(rng.integers(2, 5)) * theta + rng.uniform(0, 2 * np.pi))
    inside = (u / a) ** 2 + (v / b) ** 2 <= lobes ** 2
    return np.clip(ndimage.gaussian_filter(inside.astype(np.float64), EDGE_SIGMA_PX), 0.0, 1.0)


def _wall_centre(tumor: np.ndarray, rectum: np.ndarray, rng: np.random.Generator,
                 settings: LookalikeSettings) -> Optional[np.ndarray]:
    """A centre in the normal rectum just beyond the tumor's edge, where the mass would grow on."""
    edge = np.argwhere(tumor & ndimage.binary_dilation(rectum))
    if not len(edge):
        return None
    start = edge[int(rng.integers(len(edge)))].astype(np.float64)
    direction = start - np.argwhere(tumor).mean(axis=0)
    direction = direction / (np.linalg.norm(direction) + 1e-6)
    return start + direction * rng.uniform(*settings.wall_radius_px) * 0.9


def _distant_centre(body: np.ndarray, rectum: np.ndarray, rng: np.random.Generator,
                    settings: LookalikeSettings) -> Optional[np.ndarray]:
    centre = np.argwhere(rectum).mean(axis=0)
    rows, cols = np.mgrid[: body.shape[0], : body.shape[1]]
    distance = np.hypot(rows - centre[0], cols - centre[1])
    candidates = np.argwhere(body & (distance >= settings.distance_px[0]) & (distance <= settings.distance_px[1]))
    if not len(candidates):
        return None
    return candidates[int(rng.integers(len(candidates)))].astype(np.float64)


def add_lookalikes(image_hu: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                   settings: LookalikeSettings = LookalikeSettings()) -> Tuple[np.ndarray, np.ndarray]:
    """(image with look-alikes painted in, their mask) for one CARE slice (label 1 rectum, 2 tumor)."""
    image_hu = np.asarray(image_hu, dtype=np.float32)
    label = np.asarray(label)
    if image_hu.shape != label.shape or image_hu.ndim != 2:
        raise InputError(f"look-alikes: image {image_hu.shape} and label {label.shape} must be equal 2D shapes")
    tumor, rectum = label == TUMOR, label == NORMAL_RECTUM
    mask = np.zeros(label.shape, dtype=bool)
    if not (tumor | rectum).any():
        return image_hu, mask
    core = ndimage.binary_erosion(tumor)  # the tumor's edge is blurred into the lumen's air: leave it out
    if core.sum() >= 3:
        mean, spread = float(np.median(image_hu[core])), float(np.clip(image_hu[core].std(), 5.0, 25.0))
    else:
        mean, spread = TUMOR_HU, NOISE_HU
    out = image_hu.copy()
    body = (image_hu > SOFT_TISSUE_MIN_HU) & (label == 0)
    blobs: List[Tuple[np.ndarray, np.ndarray, Tuple[float, float]]] = []  # (centre, pixels it may cover, radii)
    if tumor.any() and rng.random() < settings.wall_fraction:
        centre = _wall_centre(tumor, rectum, rng, settings)
        if centre is not None:
            blobs.append((centre, rectum, settings.wall_radius_px))
    for _ in range(int(rng.integers(settings.min_lookalikes, settings.max_lookalikes + 1))):
        centre = _distant_centre(body, rectum | tumor, rng, settings)
        if centre is not None:
            blobs.append((centre, label == 0, settings.radius_px))
    for centre, allowed, radii in blobs:
        alpha = _blob(label.shape, centre, rng, radii) * allowed
        texture = mean + spread * rng.normal(0.0, 1.0, label.shape)
        out = out + alpha * (texture - out)
        mask |= alpha > 0.5
    return out.astype(np.float32), mask


def extract_lookalike_slices(folder: Path, num_cases: int, seed: int = 0,
                             shape_zyx: Tuple[int, int, int] = (40, 96, 96),
                             spacing_xyz: Tuple[float, float, float] = (2.9, 2.9, 4.0),
                             settings: LookalikeSettings = LookalikeSettings()) -> Path:
    """``data.extract_phantom_slices`` with look-alikes painted into every slice and stored as ``lookalike``."""

    def paint(index: int, ct_hu: np.ndarray, label: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        ct = ct_hu.astype(np.float32)
        lookalike = np.zeros(label.shape, dtype=bool)
        for k in np.flatnonzero(label.any(axis=(1, 2))):
            rng = np.random.default_rng([int(seed), int(index), int(k), 7])
            ct[k], lookalike[k] = add_lookalikes(ct[k], label[k], rng, settings)
        return np.clip(np.round(ct), -1024, 3071).astype(np.int16), lookalike

    return extract_phantom_slices(folder, num_cases, seed, shape_zyx, spacing_xyz, paint,
                                  {"lookalikes": settings.__dict__})
