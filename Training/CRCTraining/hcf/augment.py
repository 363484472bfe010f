"""Online augmentation of HCF training slices (paper Sec. 4.2), a pure function of a sample seed.

The paper lists "random erasure, zooming, distortion, rotation, vertical flip, and noise" without
parameters. We implement all six on the network's input grid (``size x size``, image in [0, 1]):

- vertical flip (rows reversed), probability 0.5;
- one affine map about the slice centre, probability 0.5: rotation within +-15 degrees, zoom in
  [0.9, 1.1], and a shear within +-0.05 as the "distortion" (a mild, global one: elastic
  deformation would cost more than the network step at 512 x 512 on a CPU worker);
  bilinear for the image (air outside = 0), nearest neighbour for the label, so both move together;
- random erasing (torchvision's ``RandomErasing`` idea), probability 0.5: one rectangle of 2-10 % of
  the slice filled with one random grey value; the label is left as it is, as torchvision does;
- Gaussian noise, probability 0.5, sigma drawn in [0, 0.03], the image clipped back to [0, 1].

``augment_slice(image, label, rng)``: the engine gives every sample a seed (``engine2d.batches``);
the same seed gives the same augmentation, so a resumed run sees the samples an uninterrupted one saw.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class AugmentationSettings:
    """Probabilities and ranges of the six augmentations (ours: the paper gives none)."""

    flip_probability: float = 0.5  # vertical flip
    affine_probability: float = 0.5
    rotation_degrees: float = 15.0  # +- (as the project's U-SAM training)
    zoom_range: Tuple[float, float] = (0.9, 1.1)
    shear: float = 0.05  # +- : the "distortion"
    erase_probability: float = 0.5
    erase_area: Tuple[float, float] = (0.02, 0.10)  # fraction of the slice
    noise_probability: float = 0.5
    noise_sigma: float = 0.03  # largest standard deviation, image in [0, 1]


def affine_matrix(angle_degrees: float, zoom: float, shear: float) -> np.ndarray:
    """2 x 2 map from output (row, col) offsets to input offsets: rotation . shear . 1/zoom."""
    angle = math.radians(angle_degrees)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    shearing = np.array([[1.0, shear], [0.0, 1.0]])
    return rotation @ shearing / float(zoom)


def _affine(array: np.ndarray, matrix: np.ndarray, order: int) -> np.ndarray:
    """``array`` (rows x cols) resampled so that output pixel o reads input ``M (o - c) + c``, c the centre."""
    centre = (np.asarray(array.shape, dtype=float) - 1.0) / 2.0
    offset = centre - matrix @ centre
    work = array.astype(np.float32) if order > 0 else array
    return ndimage.affine_transform(work, matrix, offset=offset, order=order, mode="constant", cval=0)


def augment_slice(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                  settings: AugmentationSettings = AugmentationSettings()) -> Tuple[np.ndarray, np.ndarray]:
    """Augment one slice: ``image`` (1, S, S) float32 in [0, 1], ``label`` (S, S) integer; new arrays returned."""
    image = np.asarray(image, dtype=np.float32)
    label = np.asarray(label)
    if image.ndim != 3 or image.shape[0] != 1 or image.shape[1:] != label.shape:
        raise ValueError(f"augment_slice: image (1, S, S) and label (S, S) needed, got {image.shape} and {label.shape}")
    plane, mask = image[0], label
    if rng.random() < settings.flip_probability:
        plane, mask = plane[::-1], mask[::-1]
    if rng.random() < settings.affine_probability:
        matrix = affine_matrix(rng.uniform(-settings.rotation_degrees, settings.rotation_degrees),
                               rng.uniform(*settings.zoom_range), rng.uniform(-settings.shear, settings.shear))
        plane = np.clip(_affine(np.ascontiguousarray(plane), matrix, 1), 0.0, 1.0)
        mask = _affine(np.ascontiguousarray(mask), matrix, 0)
    plane = np.array(plane, dtype=np.float32)  # a writable copy for the two intensity steps
    if rng.random() < settings.erase_probability:
        rows, cols = plane.shape
        area = rng.uniform(*settings.erase_area) * rows * cols
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))  # torchvision's ratio range
        height = int(min(rows, max(1, round(math.sqrt(area * aspect)))))
        width = int(min(cols, max(1, round(math.sqrt(area / aspect)))))
        r0, c0 = int(rng.integers(0, rows - height + 1)), int(rng.integers(0, cols - width + 1))
        plane[r0:r0 + height, c0:c0 + width] = rng.random()
    if rng.random() < settings.noise_probability:
        sigma = rng.uniform(0.0, settings.noise_sigma)
        plane = np.clip(plane + rng.normal(0.0, sigma, plane.shape).astype(np.float32), 0.0, 1.0)
    return np.ascontiguousarray(plane[None], dtype=np.float32), np.ascontiguousarray(mask, dtype=label.dtype)
