"""Point-prompted tumor refinement with U-SAM on axial slices, and propagation to neighbours.

Engine only: numpy + torch, no MRML. The model is any object with U-SAM's
``encode_image`` / ``decode`` / ``config`` (``usam.USAM``, or a stand-in in tests).

Geometry: an ``Image`` is a (z, y, x) array with ITK/LPS geometry; a point in RAS goes
to continuous (i, j, k) through ``inv(image.index_to_ras)``. The axial slice ``k`` is
``array[k]``: rows are the j index, columns the i index, so the slice pixel of a point is
(col, row) = (i, j), which ``SliceTransform.to_input_xy`` maps to the model's (x, y) input
pixels (SAM's convention). Points are on the slice whose centre is nearest (k rounded).

Which slice a click refines: the slice of the last point given (the one just placed);
the other points on that slice prompt with it, points on other slices are ignored
(listed in ``RefinementResult.ignored_points``). A point outside the volume raises
``InputError`` naming the point and the volume's RAS bounds.

The refined slice's mask replaces the tumor on that slice (U-SAM has no mask prompt:
the existing, e.g. automatic, result is the starting state that a refinement replaces
slice by slice, and what undo goes back to). ``propagate`` carries a slice's mask up and
down: each next slice is prompted with points sampled deterministically inside the
previous slice's mask (``prompts.sample_points(..., rng=None)``) plus a few background
negatives, until the tumor vanishes or the distance limit in mm is reached.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage

from CRCSegmentationLib.usam.embedding_cache import CachedEncoding, EmbeddingCache, EncodingKey
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.validation import InputError

TUMOR_CLASS_NAME = "tumor"


@dataclass
class PropagationSettings:
    max_distance_mm: float = 40.0  # how far up and down from the seed slice (about a rectal tumor's length)
    positives: int = 3  # points per slice from the previous mask (U-SAM: 3 points per class)
    negatives: int = 3  # background points of the previous slice, to keep the mask from spreading
    keep_connected: bool = True  # keep only components that overlap the previous slice's mask
    min_pixels: int = 1  # fewer tumor pixels than this: the tumor has vanished, stop

    def is_valid(self) -> Tuple[bool, str]:
        if not np.isfinite(self.max_distance_mm) or self.max_distance_mm < 0:
            return False, f"propagation distance must be >= 0 mm, got {self.max_distance_mm}"
        if self.positives < 1 or self.negatives < 0 or self.min_pixels < 1:
            return False, "propagation needs >= 1 positive point, >= 0 negatives and min_pixels >= 1"
        return True, ""


@dataclass
class RefinementResult:
    """Tumor mask (rows x cols, bool) of each refined axial slice; only those slices."""

    slices: Dict[int, np.ndarray] = field(default_factory=dict)
    seed_slice: Optional[int] = None
    ignored_points: List[int] = field(default_factory=list)  # indices of points on other slices
    stop_reasons: Dict[str, str] = field(default_factory=dict)  # "up"/"down" -> why propagation stopped

    @property
    def slice_indices(self) -> List[int]:
        return sorted(self.slices)


@dataclass
class SlicePoints:
    """Points of one axial slice as slice pixels (col, row) = (i, j), with SAM labels (1 / 0)."""

    slice_index: int
    xy: np.ndarray  # N x 2 float
    labels: np.ndarray  # N int64


def volume_ras_bounds(image: Image) -> np.ndarray:
    """2 x 3 RAS min/max of the volume's outer voxel edges (index -0.5 .. n-0.5)."""
    nz, ny, nx = image.shape[:3]
    corners = np.array([[i, j, k, 1.0] for i in (-0.5, nx - 0.5) for j in (-0.5, ny - 0.5) for k in (-0.5, nz - 0.5)])
    ras = (image.index_to_ras @ corners.T).T[:, :3]
    return np.stack([ras.min(axis=0), ras.max(axis=0)])


def ras_to_ijk(image: Image, points_ras: np.ndarray) -> np.ndarray:
    """N x 3 RAS (mm) -> N x 3 continuous (i, j, k); InputError for a point outside the volume."""
    points = np.asarray(points_ras, dtype=float).reshape(-1, 3)
    if not np.all(np.isfinite(points)):
        raise InputError(f"points: non-finite RAS coordinates {points.tolist()}")
    ijk = (np.linalg.inv(image.index_to_ras) @ np.c_[points, np.ones(len(points))].T).T[:, :3]
    size_ijk = np.array(image.shape[:3][::-1], dtype=float)
    for n, (point, index) in enumerate(zip(points, ijk)):
        if np.any(index < -0.5) or np.any(index > size_ijk - 0.5):
            low, high = volume_ras_bounds(image)
            raise InputError(
                f"point {n + 1} at RAS ({point[0]:.1f}, {point[1]:.1f}, {point[2]:.1f}) mm is outside the volume "
                f"{image.name} (RAS bounds R {low[0]:.1f}..{high[0]:.1f}, A {low[1]:.1f}..{high[1]:.1f}, "
                f"S {low[2]:.1f}..{high[2]:.1f} mm)")
    return ijk


def points_on_slice(image: Image, points_ras: np.ndarray, labels: Sequence[int],
                    slice_index: Optional[int] = None) -> Tuple[SlicePoints, List[int]]:
    """The points on ``slice_index`` (default: the last point's slice) and the indices of the others."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    ijk = ras_to_ijk(image, points_ras)
    if len(ijk) == 0:
        raise InputError("points: no point given; place a positive point on the tumor")
    if len(labels) != len(ijk) or not np.isin(labels, (0, 1)).all():
        raise InputError(f"point labels: need one label (1 positive, 0 negative) per point, got {labels.tolist()}")
    slices = np.clip(np.round(ijk[:, 2]).astype(int), 0, image.shape[0] - 1)
    k = int(slices[-1]) if slice_index is None else int(slice_index)
    if not 0 <= k < image.shape[0]:
        raise InputError(f"slice index {k} is outside the volume's {image.shape[0]} axial slices")
    on = slices == k
    xy = ijk[on][:, :2]  # (i, j) = (col, row) of array[k]
    return SlicePoints(k, xy, labels[on]), [int(n) for n in np.flatnonzero(~on)]


class InteractiveSegmenter:
    """Refines a tumor mask slice by slice from point prompts; caches image encodings.

    ``model``: U-SAM (``encode_image``, ``decode``, ``config.hu_window``, ``config.class_names``).
    """

    def __init__(self, model: Any, device: str = "cpu", cache_size: int = 8) -> None:
        from CRCSegmentationLib.usam import (  # imported here: the engine's only use of the model package
            slice_to_input,
        )

        self._slice_to_input = slice_to_input
        self.model = model
        self.device = torch.device(device)
        if isinstance(model, torch.nn.Module):
            # Inference only (batch norm on running statistics); channels-last convolutions make the
            # decoder's full-resolution up path (U-SAM Eq. 6, re-run at every click) ~1.5x faster on CPU.
            model.eval().to(device=self.device, memory_format=torch.channels_last)
        self.cache = EmbeddingCache(cache_size)
        names = [n.lower() for n in getattr(model.config, "class_names", ())]
        self.tumor_class = names.index(TUMOR_CLASS_NAME) if TUMOR_CLASS_NAME in names else model.config.num_classes - 1
        self.window = tuple(float(v) for v in model.config.hu_window)

    # --- encoder, once per slice --------------------------------------------------
    def encoding(self, image: Image, slice_index: int, volume_key: Hashable = None,
                 modified: Hashable = 0) -> CachedEncoding:
        """Encoding of axial slice ``slice_index`` (cached; ``volume_key`` None: ``id(image.array)``)."""
        if image.array.ndim != 3:
            raise InputError(f"{image.name}: need a 3D volume, got shape {image.shape}")
        key = EncodingKey(id(image.array) if volume_key is None else volume_key, modified, int(slice_index), self.window)

        def compute() -> CachedEncoding:
            slice_hu = np.asarray(image.array[slice_index], dtype=np.float32)
            pixels, transform = self._slice_to_input(slice_hu, self.window, self.model.config.image_size)
            with torch.inference_mode():
                images = torch.from_numpy(pixels)[None].to(self.device).contiguous(memory_format=torch.channels_last)
                encoding = self.model.encode_image(images)
            return CachedEncoding(encoding, transform)

        return self.cache.get_or_compute(key, compute)

    # --- decoder, every click -----------------------------------------------------
    def segment_slice(self, image: Image, points: SlicePoints, volume_key: Hashable = None,
                      modified: Hashable = 0) -> np.ndarray:
        """Tumor mask (rows x cols, bool) of ``points.slice_index`` prompted by ``points``."""
        cached = self.encoding(image, points.slice_index, volume_key, modified)
        coords = cached.transform.to_input_xy(np.asarray(points.xy, dtype=np.float32).reshape(-1, 2))
        coords_t = torch.as_tensor(np.asarray(coords, dtype=np.float32))[None].to(self.device)
        labels_t = torch.as_tensor(points.labels, dtype=torch.int64)[None].to(self.device)
        with torch.inference_mode():
            logits = self.model.decode(cached.encoding, coords_t, labels_t)  # 1 x C x S x S
            logits = cached.transform.logits_to_slice(logits[0].float())  # C x rows x cols, on the model's device
            return is_argmax(logits, self.tumor_class).cpu().numpy()

    def refine(self, image: Image, points_ras: np.ndarray, labels: Sequence[int], slice_index: Optional[int] = None,
               volume_key: Hashable = None, modified: Hashable = 0) -> RefinementResult:
        """One click: the tumor on the slice of the last point, from the points on that slice."""
        points, ignored = points_on_slice(image, points_ras, labels, slice_index)
        if not np.any(points.labels == 1):
            raise InputError(f"points: slice {points.slice_index} has no positive point; place one on the tumor")
        mask = self.segment_slice(image, points, volume_key, modified)
        return RefinementResult({points.slice_index: mask}, points.slice_index, ignored)

    # --- propagation to neighbouring slices -----------------------------------------
    def propagate(self, image: Image, seed_slice: int, seed_mask: np.ndarray,
                  settings: Optional[PropagationSettings] = None, volume_key: Hashable = None,
                  modified: Hashable = 0, progress: Optional[Callable[[str, float], None]] = None,
                  cancel: Optional[threading.Event] = None) -> RefinementResult:
        """Carry ``seed_mask`` (on ``seed_slice``) up and down; the result holds only the new slices.

        Each uncached slice costs a ViT-B encoding (about 0.3 s on a CPU, up to ~26 slices at the
        40 mm default): ``progress(stage, fraction)`` is told after each slice and ``cancel`` is
        checked before each, raising ``RunCancelled`` (nothing has been written then).
        """
        from CRCSegmentationLib.usam.prompts import sample_points
        from OrganGuidanceLib.progress import RunCancelled

        settings = settings or PropagationSettings()
        valid, reason = settings.is_valid()
        if not valid:
            raise InputError(reason)
        seed_mask = np.asarray(seed_mask, dtype=bool)
        if seed_mask.shape != image.shape[1:]:
            raise InputError(f"seed mask: shape {seed_mask.shape} does not match the slice shape {image.shape[1:]}")
        if not seed_mask.any():
            raise InputError(f"slice {seed_slice}: the tumor mask is empty; nothing to propagate")
        result = RefinementResult(seed_slice=int(seed_slice))
        max_steps = int(np.floor(settings.max_distance_mm / image.spacing[2] + 1e-6))
        done, total = 0, 2 * max(1, max_steps)
        for name, step in (("down", -1), ("up", 1)):  # array index k: "up" = increasing k
            previous = seed_mask
            result.stop_reasons[name] = f"distance limit {settings.max_distance_mm:g} mm"
            for n in range(1, max_steps + 1):
                k = seed_slice + step * n
                if not 0 <= k < image.shape[0]:
                    result.stop_reasons[name] = "end of the volume"
                    break
                if cancel is not None and cancel.is_set():
                    raise RunCancelled(f"propagation cancelled before slice {k}")
                prompts = sample_points(previous.astype(np.uint8), classes=(1,), per_class=settings.positives,
                                        negatives=settings.negatives, rng=None)
                points = SlicePoints(k, np.asarray(prompts.coords_xy, dtype=np.float32), np.asarray(prompts.labels))
                mask = self.segment_slice(image, points, volume_key, modified)
                if settings.keep_connected:
                    mask = overlapping_components(mask, previous)
                if mask.sum() < settings.min_pixels:
                    result.stop_reasons[name] = f"tumor vanished on slice {k}"
                    break
                result.slices[k] = mask
                previous = mask
                done += 1
                if progress is not None:
                    progress(f"propagation {name}: slice {k}", min(1.0, done / total))
        return result


def is_argmax(logits: torch.Tensor, index: int) -> torch.Tensor:
    """``logits.argmax(0) == index`` (C x rows x cols; ties go to the first class, as argmax).

    Element-wise comparisons: on the CPU, argmax over the leading axis of a 3 x 512 x 512 tensor
    took 52 ms, half of a click; these take about 1 ms.
    """
    target = logits[index]
    mask = torch.ones_like(target, dtype=torch.bool)
    for other in range(logits.shape[0]):
        if other < index:
            mask &= target > logits[other]
        elif other > index:
            mask &= target >= logits[other]
    return mask


def overlapping_components(mask: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """The connected components (8-connected) of ``mask`` that overlap ``previous``."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count == 0:
        return mask.astype(bool)
    keep = np.unique(labels[previous & (labels > 0)])
    return np.isin(labels, keep[keep > 0])
