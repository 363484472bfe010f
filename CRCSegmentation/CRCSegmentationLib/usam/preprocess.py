"""One CT slice <-> U-SAM input: HU window, resize to S x S, and the exact coordinate mapping.

Coordinates are pixel indices with pixel centres at integers (SAM's convention: its prompt
encoder adds 0.5 to reach the centre). A slice of ``cols`` pixels covers [-0.5, cols - 0.5] and is
resized onto S pixels covering the same extent, exactly as torch's bilinear resize with
``align_corners=False`` does, so

    x_in = (x + 0.5) * S / cols - 0.5,    x = (x_in + 0.5) * cols / S - 0.5   (rows likewise for y).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from OrganGuidanceLib.validation import InputError


def _resize(array: Tensor, size: Tuple[int, int], mode: str) -> Tensor:
    """C x H x W -> C x size; antialiased when shrinking so thin walls do not vanish between samples."""
    antialias = mode == "bilinear" and (size[0] < array.shape[-2] or size[1] < array.shape[-1])
    kwargs = {"align_corners": False, "antialias": antialias} if mode == "bilinear" else {}
    return F.interpolate(array.unsqueeze(0), size=size, mode=mode, **kwargs)[0]


@dataclass(frozen=True)
class SliceTransform:
    """Maps one 2D slice (rows x cols) to the S x S model input and back."""

    rows: int
    cols: int
    size: int

    def __post_init__(self) -> None:
        if min(self.rows, self.cols, self.size) < 1:
            raise InputError(f"SliceTransform: rows={self.rows}, cols={self.cols}, size={self.size} must be >= 1")

    def _scale(self) -> np.ndarray:
        return np.array([self.size / self.cols, self.size / self.rows])

    @staticmethod
    def _points(xy: np.ndarray, name: str) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise InputError(f"SliceTransform {name}: shape {xy.shape}; expected N x 2 (x = column, y = row)")
        return xy

    def to_input_xy(self, xy_pixels: np.ndarray) -> np.ndarray:
        """N x 2 slice pixel (col, row) -> N x 2 input (x, y), float32."""
        xy = self._points(xy_pixels, "slice points")
        return ((xy + 0.5) * self._scale() - 0.5).astype(np.float32)

    def to_slice_xy(self, xy_input: np.ndarray) -> np.ndarray:
        """N x 2 input (x, y) -> N x 2 slice pixel (col, row), float (round for an index)."""
        xy = self._points(xy_input, "input points")
        return (xy + 0.5) / self._scale() - 0.5

    def logits_to_slice(self, logits: Tensor) -> Tensor:
        """C x S x S -> C x rows x cols, bilinear (align_corners=False): same geometry as the input resize."""
        if logits.ndim != 3 or tuple(logits.shape[1:]) != (self.size, self.size):
            raise InputError(
                f"SliceTransform logits: shape {tuple(logits.shape)}; expected C x {self.size} x {self.size}"
            )
        return _resize(logits.float(), (self.rows, self.cols), "bilinear")

    def label_to_input(self, label2d: np.ndarray) -> np.ndarray:
        """rows x cols label map -> S x S (int64), nearest pixel centre ('nearest-exact', same geometry)."""
        label2d = np.asarray(label2d)
        if label2d.shape != (self.rows, self.cols):
            raise InputError(f"SliceTransform label map: shape {label2d.shape}; expected {(self.rows, self.cols)}")
        labels = torch.from_numpy(label2d.astype(np.float32))[None]
        return _resize(labels, (self.size, self.size), "nearest-exact")[0].round().long().numpy()


def slice_to_input(
    slice_hu: np.ndarray, hu_window: Sequence[float], size: int
) -> Tuple[np.ndarray, SliceTransform]:
    """rows x cols slice in HU -> (3 x S x S float32 in [0, 1], its SliceTransform).

    HU window [low, high] -> [0, 1], clipped; resize bilinear; the 3 channels are identical (SAM's RGB input).
    """
    array = np.asarray(slice_hu)
    if array.ndim != 2 or min(array.shape) < 1:
        raise InputError(f"U-SAM slice: shape {array.shape}; expected one 2D slice (rows x cols)")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"U-SAM slice: voxel type {array.dtype} is not a real number type")
    if not np.all(np.isfinite(array)):
        raise InputError("U-SAM slice: has NaN or infinite values")
    low, high = (float(v) for v in hu_window)
    if not low < high:
        raise InputError(f"U-SAM hu_window: {tuple(hu_window)} must be (low, high) with low < high")
    if int(size) < 1:
        raise InputError(f"U-SAM input size: {size} must be >= 1")
    windowed = np.clip((array.astype(np.float32) - low) / (high - low), 0.0, 1.0)
    resized = _resize(torch.from_numpy(windowed)[None], (int(size), int(size)), "bilinear").clamp_(0.0, 1.0)
    transform = SliceTransform(rows=array.shape[0], cols=array.shape[1], size=int(size))
    return resized.expand(3, -1, -1).numpy().astype(np.float32, copy=True), transform
