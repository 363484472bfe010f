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

A prompt (``SlicePoints``) is points and an optional box on one slice. Boxes are SAM's
(x0, y0, x1, y1): the centres of the corner pixels, mapped to input pixels like points (the
slice is resized, SAM's ``ResizeLongestSide.apply_boxes`` scales corners as coordinates).

``refine`` replaces the slice's mask with the network's answer (the first, point-only API).
``segment_prompt`` refines an existing mask instead (``existing_mask``: positives add, a box
redraws its inside, negatives remove the region they hit; the network has no mask input), and
``prompt_to_3d`` carries the prompted slice up and down. ``propagate`` carries a slice's mask up
and down: each next slice is prompted with points sampled deterministically inside the previous
slice's mask (``prompts.sample_points(..., rng=None)``) plus a few background negatives, until the
tumor vanishes (empty, much smaller than the previous slice, or mostly off it) or the distance
limit in mm is reached. With an existing segment, a propagated slice is the existing mask plus the
network's tumor, and only slices that changed are returned.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from CRCSegmentationLib.usam.embedding_cache import CachedEncoding, EmbeddingCache, EncodingKey
from CRCSegmentationLib.usam.existing_mask import (
    ExistingMask,
    box_region,
    components_hit,
    context_points,
    pixel_indices,
    prompted_components,
    refine_existing,
)
from CRCSegmentationLib.usam.propagation import (  # noqa: F401 - PropagationSettings, overlapping_components re-exported
    PropagationSettings,
    SegmentSlice,
    carry,
    overlapping_components,
)
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.validation import InputError

TUMOR_CLASS_NAME = "tumor"
# Encodings kept for re-prompting: 32 slices (one prompt to 3D reaches ~26), at most 640 MiB (31 ViT-B slices).
CACHE_BYTES = 640 * 2**20


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


def _empty_xy() -> np.ndarray:
    return np.zeros((0, 2), dtype=np.float64)


def _empty_labels() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass
class SlicePoints:
    """One axial slice's prompt: points as slice pixels (col, row) = (i, j) with SAM labels (1 / 0), and a box.

    ``box``: (x0, y0, x1, y1) slice pixels (col, row) of the box's corner pixel centres (SAM's layout);
    stored with x0 <= x1, y0 <= y1. A prompt needs a positive point or a box to find a tumor; negatives
    alone only remove (``InteractiveSegmenter.segment_prompt``).
    """

    slice_index: int
    xy: np.ndarray = field(default_factory=_empty_xy)  # N x 2 float
    labels: np.ndarray = field(default_factory=_empty_labels)  # N int64
    box: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.slice_index = int(self.slice_index)
        self.xy = np.asarray(self.xy, dtype=np.float64).reshape(-1, 2)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.xy) != len(self.labels):
            raise InputError(f"slice {self.slice_index} prompt: {len(self.xy)} points but {len(self.labels)} labels")
        if not np.isin(self.labels, (0, 1)).all():
            raise InputError(f"slice {self.slice_index} prompt: labels must be 1 (positive) or 0 (negative), "
                             f"got {self.labels.tolist()}")
        if not np.all(np.isfinite(self.xy)):
            raise InputError(f"slice {self.slice_index} prompt: non-finite point coordinates {self.xy.tolist()}")
        if self.box is not None:
            box = np.asarray(self.box, dtype=np.float64).reshape(-1)
            if box.shape != (4,) or not np.all(np.isfinite(box)):
                raise InputError(f"slice {self.slice_index} box: need 4 finite numbers (x0, y0, x1, y1), "
                                 f"got {np.asarray(self.box).tolist()}")
            self.box = np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])])

    @property
    def positives_xy(self) -> np.ndarray:
        return self.xy[self.labels == 1]

    @property
    def negatives_xy(self) -> np.ndarray:
        return self.xy[self.labels == 0]

    @property
    def has_target(self) -> bool:
        """A positive point or a box: the prompt says where a tumor is."""
        return self.box is not None or bool(np.any(self.labels == 1))


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
    """Segments the tumor slice by slice from prompts (points, a box), to 3D on request; caches image encodings.

    ``model``: U-SAM (``encode_image``, ``decode``, ``config.hu_window``, ``config.class_names``).
    """

    def __init__(self, model: Any, device: str = "cpu", cache_size: int = 32,
                 cache_bytes: Optional[int] = CACHE_BYTES) -> None:
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
        self.cache = EmbeddingCache(cache_size, cache_bytes)
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
        """The network's tumor mask (rows x cols, bool) of ``points.slice_index`` for the prompt ``points``."""
        if not 0 <= points.slice_index < image.shape[0]:
            raise InputError(f"slice index {points.slice_index} is outside the volume's {image.shape[0]} axial slices")
        cached = self.encoding(image, points.slice_index, volume_key, modified)
        coords_t = labels_t = None
        if len(points.labels):
            coords = cached.transform.to_input_xy(points.xy)
            coords_t = torch.as_tensor(np.asarray(coords, dtype=np.float32))[None].to(self.device)
            labels_t = torch.as_tensor(points.labels, dtype=torch.int64)[None].to(self.device)
        boxes = {}  # only given when there is a box: point-only models (and stand-ins) take no ``boxes``
        if points.box is not None:
            box = input_box(points.box, cached.transform, points.slice_index)
            boxes["boxes"] = torch.as_tensor(box, dtype=torch.float32)[None].to(self.device)
        with torch.inference_mode():
            logits = self.model.decode(cached.encoding, coords_t, labels_t, **boxes)  # 1 x C x S x S
            logits = cached.transform.logits_to_slice(logits[0].float())  # C x rows x cols, on the model's device
            return is_argmax(logits, self.tumor_class).cpu().numpy()

    def segment_prompt(self, image: Image, prompt: SlicePoints, existing: Optional[np.ndarray] = None,
                       volume_key: Hashable = None, modified: Hashable = 0) -> np.ndarray:
        """The tumor (rows x cols, bool) of ``prompt.slice_index`` after the prompt.

        ``existing``: the segment's current mask on that slice (None or empty: none). Without one, the
        result is the network's components under a positive point or touching the box. With one, the
        prompt refines it (``existing_mask.refine_existing``): positives add, a box redraws its inside,
        negatives remove the region they hit, the rest is kept. The network takes no mask prompt (U-SAM
        was trained without one), so a negatives-only prompt is completed with context positives
        sampled inside the existing mask, for the network to draw the tumor's boundary.
        """
        k = prompt.slice_index
        if existing is None or not np.any(existing):
            if not prompt.has_target:
                raise InputError(f"slice {k}: no positive point or box (and no tumor to remove from); "
                                 "place a positive point or a box on the tumor")
            model = self.segment_slice(image, prompt, volume_key, modified)
            return prompted_components(model, prompt.positives_xy, prompt.box)
        existing = np.asarray(existing, dtype=bool)
        if existing.shape != tuple(image.shape[1:]):
            raise InputError(f"slice {k} existing mask: shape {existing.shape} does not match the slice shape "
                             f"{tuple(image.shape[1:])}")
        if len(prompt.labels) == 0 and prompt.box is None:
            raise InputError(f"slice {k}: the prompt is empty; place a point or a box")
        asked = prompt
        if not prompt.has_target:
            context = context_points(existing, prompt.negatives_xy)
            asked = SlicePoints(k, np.concatenate([context, prompt.xy]),
                                np.concatenate([np.ones(len(context), np.int64), prompt.labels]))
        model = self.segment_slice(image, asked, volume_key, modified)
        return refine_existing(existing, model, prompt.positives_xy, prompt.negatives_xy, prompt.box)

    def refine(self, image: Image, points_ras: np.ndarray, labels: Sequence[int], slice_index: Optional[int] = None,
               volume_key: Hashable = None, modified: Hashable = 0) -> RefinementResult:
        """One click: the tumor on the slice of the last point, from the points on that slice."""
        points, ignored = points_on_slice(image, points_ras, labels, slice_index)
        if not np.any(points.labels == 1):
            raise InputError(f"points: slice {points.slice_index} has no positive point; place one on the tumor")
        mask = self.segment_slice(image, points, volume_key, modified)
        return RefinementResult({points.slice_index: mask}, points.slice_index, ignored)

    # --- one prompt to 3D and propagation to neighbouring slices --------------------------
    def prompt_to_3d(self, image: Image, prompt: SlicePoints, existing_volume: Any = None,
                     settings: Optional[PropagationSettings] = None, volume_key: Hashable = None,
                     modified: Hashable = 0, progress: Optional[Callable[[str, float], None]] = None,
                     cancel: Optional[threading.Event] = None) -> RefinementResult:
        """The prompted slice (``segment_prompt``), then the walk up and down from it (``propagation.carry``).

        ``existing_volume``: the segment before the prompt on the CT's grid, a (z, y, x) mask, an
        ``Image`` or an ``ExistingMask`` (None: empty). Only slices whose mask differs from it are
        returned. The walk starts from the prompted slice's tumor connected to the prompt; a prompt
        without a positive point or box (only negatives) removes on its slice and is not carried
        (``stop_reasons`` say so).
        """
        settings = (settings or PropagationSettings()).checked()
        k = prompt.slice_index
        if not 0 <= k < image.shape[0]:
            raise InputError(f"slice index {k} is outside the volume's {image.shape[0]} axial slices")
        existing = existing_volume.array if isinstance(existing_volume, Image) else existing_volume
        if existing is not None and not isinstance(existing, ExistingMask):
            existing = ExistingMask.from_volume(existing, "existing segment")
        if existing is not None and tuple(existing.shape) != tuple(image.shape):
            raise InputError(f"existing segment: shape {tuple(existing.shape)} does not match the CT {image.shape}")
        before = existing.slice(k) if existing is not None else np.zeros(image.shape[1:], bool)
        seed = self.segment_prompt(image, prompt, before, volume_key, modified)
        result = RefinementResult(seed_slice=k)
        if not np.array_equal(seed, before):
            result.slices[k] = seed
        if not prompt.has_target:
            result.stop_reasons = {name: "a prompt without a positive point or box stays on its slice"
                                   for name in ("down", "up")}
            return result
        region = box_region(prompt.box, seed.shape) if prompt.box is not None else None
        start = components_hit(seed, pixel_indices(prompt.positives_xy, seed.shape), region)
        if not start.any():
            result.stop_reasons = {name: f"no tumor at the prompt on slice {k}" for name in ("down", "up")}
            return result
        slices, result.stop_reasons = carry(image.shape, image.spacing[2], k, start, self._segment_at(
            image, volume_key, modified), settings, existing, progress, cancel)
        result.slices.update(slices)
        return result

    def propagate(self, image: Image, seed_slice: int, seed_mask: np.ndarray,
                  settings: Optional[PropagationSettings] = None, volume_key: Hashable = None,
                  modified: Hashable = 0, progress: Optional[Callable[[str, float], None]] = None,
                  cancel: Optional[threading.Event] = None) -> RefinementResult:
        """Carry ``seed_mask`` (on ``seed_slice``) up and down; the result holds only the new slices.

        Each uncached slice costs an encoding (ViT-B: about 0.3 s on a CPU, up to ~26 slices at the
        40 mm default): ``progress(stage, fraction)`` is told after each slice and ``cancel`` is
        checked before each, raising ``RunCancelled`` (nothing has been written then).
        """
        settings = (settings or PropagationSettings()).checked()
        seed_mask = np.asarray(seed_mask, dtype=bool)
        if seed_mask.shape != image.shape[1:]:
            raise InputError(f"seed mask: shape {seed_mask.shape} does not match the slice shape {image.shape[1:]}")
        if not seed_mask.any():
            raise InputError(f"slice {seed_slice}: the tumor mask is empty; nothing to propagate")
        slices, reasons = carry(image.shape, image.spacing[2], int(seed_slice), seed_mask,
                                self._segment_at(image, volume_key, modified), settings, None, progress, cancel)
        return RefinementResult(slices, int(seed_slice), stop_reasons=reasons)

    def _segment_at(self, image: Image, volume_key: Hashable, modified: Hashable) -> SegmentSlice:
        def segment(k: int, xy: np.ndarray, labels: np.ndarray) -> np.ndarray:
            return self.segment_slice(image, SlicePoints(k, xy, labels), volume_key, modified)

        return segment


def input_box(box: np.ndarray, transform: Any, slice_index: int) -> np.ndarray:
    """A slice-pixel box (x0, y0, x1, y1) -> the model's input pixels, clipped to the slice; InputError off it."""
    cols, rows = transform.cols, transform.rows
    high = np.array([cols - 0.5, rows - 0.5, cols - 0.5, rows - 0.5])
    box = np.asarray(box, dtype=np.float64)
    if box[2] < -0.5 or box[3] < -0.5 or box[0] > high[0] or box[1] > high[1]:
        raise InputError(f"slice {slice_index} box ({', '.join(f'{v:.1f}' for v in box)}) px lies outside the "
                         f"slice's {cols} x {rows} pixels")
    return transform.to_input_xy(np.clip(box, -0.5, high).reshape(2, 2)).reshape(4)


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

