"""Deterministic stand-ins for U-SAM with its ``encode_image`` / ``decode`` contract (tests of the engine's logic).

A real U-SAM cannot be trained to segment the phantom tumor within CI time on a CPU
(ViT-B encoder), so the propagation logic is checked with ``GroundTruthSliceModel``:
an ideal point-prompted segmenter that returns the ground-truth tumor component under
each positive point. The wiring is checked with the real (random-init) U-SAM as well
(Testing/test_usam_mrml.py). Both stand-ins go through the real ``slice_to_input`` /
``SliceTransform`` of ``CRCSegmentationLib.usam``, so point conventions are not faked.
"""
from __future__ import annotations

from typing import Any, List, Optional

import numpy as np
import torch
from scipy import ndimage

from CRCSegmentationLib.networks.usam import USAMConfig
from CRCSegmentationLib.usam import slice_to_input


def _logits_from_slice_mask(mask: np.ndarray, transform: Any, config: USAMConfig) -> torch.Tensor:
    """1 x C x S x S logits whose argmax is "tumor" on ``mask`` (rows x cols), through the real slice -> input map."""
    probability = torch.from_numpy(transform.label_to_input(mask.astype(np.uint8)).astype(np.float32))
    tumor = config.class_names.index("tumor")
    logits = torch.full((config.num_classes, config.image_size, config.image_size), -1.0)
    logits[0] = 1.0 - probability
    logits[tumor] = probability
    return logits[None]


class GroundTruthSliceModel:
    """Ideal segmenter of one volume: the ground-truth tumor components hit by a positive point.

    ``encode_image`` recognises which slice it was given (exact match of the real
    preprocessing of each slice) and returns that slice index as the "encoding".
    """

    def __init__(self, ct_array: np.ndarray, tumor_array: np.ndarray, config: Optional[USAMConfig] = None) -> None:
        self.config = config or USAMConfig()
        self.tumor = np.asarray(tumor_array) > 0
        self.inputs = []
        self.transforms = []
        for k in range(ct_array.shape[0]):
            pixels, transform = slice_to_input(np.asarray(ct_array[k], np.float32), self.config.hu_window, self.config.image_size)
            self.inputs.append(torch.from_numpy(np.asarray(pixels, np.float32)))
            self.transforms.append(transform)
        self.encodes = 0
        self.decodes = 0

    def encode_image(self, images: torch.Tensor) -> int:
        self.encodes += 1
        matches = [k for k, pixels in enumerate(self.inputs) if torch.equal(pixels, images[0].cpu().float())]
        assert len(matches) == 1, f"stand-in: the image matches slices {matches}, expected exactly one"
        return matches[0]

    def decode(self, encoding: int, point_coords: Optional[torch.Tensor] = None,
               point_labels: Optional[torch.Tensor] = None, boxes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The components under a positive point or inside/overlapping the box, less those under a negative."""
        self.decodes += 1
        k = encoding
        components, _ = ndimage.label(self.tumor[k], structure=np.ones((3, 3), bool))
        rows, cols = self.tumor[k].shape
        hit, refused = set(), set()
        if point_coords is not None:
            xy = self.transforms[k].to_slice_xy(point_coords[0].cpu().numpy())
            for (x, y), label in zip(xy, point_labels[0].tolist()):
                row, col = int(round(float(y))), int(round(float(x)))
                if label in (0, 1) and 0 <= row < rows and 0 <= col < cols and components[row, col]:
                    (hit if label == 1 else refused).add(int(components[row, col]))
        if boxes is not None and bool(torch.isfinite(boxes[0]).all()):
            (x0, y0), (x1, y1) = self.transforms[k].to_slice_xy(boxes[0].cpu().numpy().reshape(2, 2))
            inside = components[max(0, int(np.ceil(y0))):int(np.floor(y1)) + 1, max(0, int(np.ceil(x0))):int(np.floor(x1)) + 1]
            hit |= {int(v) for v in np.unique(inside) if v}
        keep = sorted(hit - refused)
        return _logits_from_slice_mask(np.isin(components, keep) & (components > 0), self.transforms[k], self.config)


class DiscModel:
    """Tumor = a disc of ``radius`` model-input pixels around each positive point; records what it was given."""

    def __init__(self, radius: float = 6.0, config: Optional[USAMConfig] = None) -> None:
        self.config = config or USAMConfig()
        self.radius = radius
        self.images: List[torch.Tensor] = []
        self.points: List[Any] = []  # (coords 1 x N x 2, labels 1 x N) per decode (None, None: no points)
        self.boxes: List[Any] = []  # 1 x 4 input-pixel box per decode, or None

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        self.images.append(images.detach().cpu().clone())
        return images

    def decode(self, encoding: torch.Tensor, point_coords: Optional[torch.Tensor] = None,
               point_labels: Optional[torch.Tensor] = None, boxes: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.points.append((None if point_coords is None else point_coords.detach().cpu().clone(),
                            None if point_labels is None else point_labels.detach().cpu().clone()))
        self.boxes.append(None if boxes is None else boxes.detach().cpu().clone())
        size = self.config.image_size
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres in input (x, y)
        mask = np.zeros((size, size), bool)
        if point_coords is not None:
            for (x, y), label in zip(point_coords[0].cpu().numpy(), point_labels[0].tolist()):
                if label == 1:
                    mask |= (xs - x) ** 2 + (ys - y) ** 2 <= self.radius ** 2
        if boxes is not None and bool(torch.isfinite(boxes[0]).all()):
            x0, y0, x1, y1 = boxes[0].tolist()
            mask |= (xs - 0.5 >= x0) & (xs - 0.5 <= x1) & (ys - 0.5 >= y0) & (ys - 0.5 <= y1)  # box: pixel indices
        tumor = self.config.class_names.index("tumor")
        logits = torch.full((1, self.config.num_classes, size, size), -1.0)
        logits[0, 0] = torch.from_numpy((~mask).astype(np.float32))
        logits[0, tumor] = torch.from_numpy(mask.astype(np.float32))
        return logits


class CountingModel:
    """A real model with its encoder and decoder calls counted."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.config = model.config
        self.encodes = 0
        self.decodes = 0

    def encode_image(self, images: torch.Tensor) -> Any:
        self.encodes += 1
        return self.model.encode_image(images)

    def decode(self, encoding: Any, point_coords: Optional[torch.Tensor] = None,
               point_labels: Optional[torch.Tensor] = None, **boxes: Any) -> torch.Tensor:
        self.decodes += 1
        return self.model.decode(encoding, point_coords, point_labels, **boxes)


class TumorBiasedModel(CountingModel):
    """A real model whose tumor logit is raised by ``bias``: random weights then draw a tumor on every slice,
    so a propagation walks as far as allowed while every encoder and decoder call runs for real (timing)."""

    def __init__(self, model: Any, bias: float = 100.0) -> None:
        super().__init__(model)
        self.bias = bias

    def decode(self, encoding: Any, point_coords: Optional[torch.Tensor] = None,
               point_labels: Optional[torch.Tensor] = None, **boxes: Any) -> torch.Tensor:
        logits = super().decode(encoding, point_coords, point_labels, **boxes).clone()
        logits[:, self.config.class_names.index("tumor")] += self.bias
        return logits
