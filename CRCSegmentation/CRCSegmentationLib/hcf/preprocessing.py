"""HCF / SANet slice preprocessing, shared by training (``CRCTraining.hcf.slices``) and inference.

Paper: Shi et al., "Automatic GTV segmentation with a heterogeneous cascade framework (HCF) and SANet"
(/work/shared/papers/HCF_SANet_GTV_decoupling.txt), Sec. 4.2: foreground mask by thresholding, keep the
largest connected region, crop to its bounding box (the public code adds a margin), resize to 512 x 512.

``to_network_input`` / ``label_to_input`` take a slice to the network's ``size x size`` grid;
``input_to_slice`` takes a prediction on that grid back onto the slice, inside the box it was cut from
(nearest neighbour for masks, bilinear for probabilities; zero outside the box). ``Image.axial_axis`` names the
array axis along which an ``Image`` is cut into axial slices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
from scipy import ndimage

Box = Tuple[int, int, int, int]  # (r0, r1, c0, c1), half-open: slice_hu[r0:r1, c0:c1]


@dataclass
class SliceDatasetConfig:
    """Slice preprocessing (paper Sec. 4.2).

    ``hu_window``: the paper windows CT per site (lung, nasopharynx) without giving the values; for
    colorectal (abdomen/pelvis) soft tissue we use the usual abdominal window, level 40 / width 400
    HU = (-160, 240), the same window as the project's U-SAM slices. ``body_threshold_hu``: voxels above
    it count as body (air and most of the table/blanket noise lie below -300 HU). ``body_margin_px``:
    pixels added on each side of the body box (the public code's crop margin). ``size``: the network
    input, 512 x 512 in the paper.
    """

    hu_window: Tuple[float, float] = (-160, 240)
    size: int = 512
    body_threshold_hu: float = -300
    body_margin_px: int = 10


def body_box(slice_hu: np.ndarray, threshold: float, margin: int) -> Box:
    """Bounding box of the largest connected region above ``threshold`` plus ``margin``, clipped.

    Returns half-open ``(r0, r1, c0, c1)``; the whole slice when nothing is foreground (Sec. 4.2:
    "obtain the bounding box of the foreground by preserving the largest connectivity region").
    """
    slice_hu = np.asarray(slice_hu)
    if slice_hu.ndim != 2:
        raise ValueError(f"body_box: a 2D slice is needed, got shape {slice_hu.shape}")
    rows, cols = slice_hu.shape
    labels, count = ndimage.label(slice_hu > threshold)
    if count == 0:
        return 0, rows, 0, cols
    sizes = np.bincount(labels.ravel())[1:]
    largest = int(np.argmax(sizes)) + 1
    r_slice, c_slice = ndimage.find_objects((labels == largest).astype(np.int32))[0]
    margin = max(int(margin), 0)
    return (max(r_slice.start - margin, 0), min(r_slice.stop + margin, rows),
            max(c_slice.start - margin, 0), min(c_slice.stop + margin, cols))


def _resize_to(array: np.ndarray, shape: Tuple[int, int], order: int) -> np.ndarray:
    """Resize a 2D array to ``shape`` with pixel-area (grid mode) geometry; order 1 bilinear, 0 nearest."""
    factors = (shape[0] / array.shape[0], shape[1] / array.shape[1])
    out = ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True)
    if out.shape != tuple(shape):  # zoom rounds the output shape; never off for these factors, but be exact
        raise AssertionError(f"resize produced {out.shape}, expected {tuple(shape)}")
    return out


def _resize(array: np.ndarray, size: int, order: int) -> np.ndarray:
    """Resize a 2D array to ``size x size`` with pixel-area (grid mode) geometry; order 1 bilinear, 0 nearest."""
    return _resize_to(array, (int(size), int(size)), order)


def to_network_input(slice_hu: np.ndarray, config: SliceDatasetConfig) -> Tuple[np.ndarray, Box]:
    """HU slice -> network input: window to [0, 1], crop to the body box, bilinear resize (Sec. 4.2).

    Returns the ``(size, size)`` float32 image in [0, 1] and the box used (for ``label_to_input``).
    """
    slice_hu = np.asarray(slice_hu, dtype=np.float32)
    box = body_box(slice_hu, config.body_threshold_hu, config.body_margin_px)
    low, high = float(config.hu_window[0]), float(config.hu_window[1])
    if not high > low:
        raise ValueError(f"hu_window {config.hu_window}: the upper bound must exceed the lower one")
    r0, r1, c0, c1 = box
    unit = np.clip((slice_hu[r0:r1, c0:c1] - low) / (high - low), 0.0, 1.0)
    image = np.clip(_resize(unit, int(config.size), order=1), 0.0, 1.0).astype(np.float32)
    return image, box


def label_to_input(label: np.ndarray, box: Box, size: int) -> np.ndarray:
    """The label slice on the input grid of ``to_network_input``: same crop, nearest-neighbour resize."""
    r0, r1, c0, c1 = box
    return _resize(np.asarray(label)[r0:r1, c0:c1], int(size), order=0)


def input_to_slice(prediction: np.ndarray, box: Box, slice_shape: Tuple[int, int], order: int = 0) -> np.ndarray:
    """The inverse of ``label_to_input``: a ``(size, size)`` prediction back on the ``slice_shape`` grid.

    Resized onto the box it was cut from (``order`` 0 nearest for masks, 1 bilinear for probabilities)
    and pasted there; zero outside the box. Same dtype as ``prediction``.
    """
    prediction = np.asarray(prediction)
    if prediction.ndim != 2 or prediction.shape[0] != prediction.shape[1]:
        raise ValueError(f"input_to_slice: a square 2D prediction is needed, got shape {prediction.shape}")
    r0, r1, c0, c1 = box
    rows, cols = int(slice_shape[0]), int(slice_shape[1])
    if not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols):
        raise ValueError(f"input_to_slice: box {box} does not lie in a {rows} x {cols} slice")
    work = prediction.astype(np.float32) if order > 0 else prediction
    resized = _resize_to(work, (r1 - r0, c1 - c0), order)
    out = np.zeros((rows, cols), dtype=prediction.dtype)
    out[r0:r1, c0:c1] = resized.astype(prediction.dtype, copy=False)
    return out
