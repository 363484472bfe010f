"""Box, scribble and lasso prompts as slice pixels: what a drawn shape tells U-SAM (no Slicer, no Qt).

A shape arrives as continuous voxel indices (i, j, k) of the CT (``mrml_points`` maps markups
from RAS through the volume's full IJK-to-RAS matrix, so oblique volumes are handled there) and
leaves as a ``SlicePoints`` of one axial slice: points (col, row) with SAM labels and/or a box
(x0, y0, x1, y1), in the pixels of the slice array, as ``refinement.SlicePoints`` defines them
(a box: the first and last pixel centres inside the shape, as SAM boxes a mask).

- A box goes to SAM's prompt encoder as a box (SAM: two corner points with labels 2 and 3).
- A scribble becomes points along it, one every ``SCRIBBLE_STEP_MM`` (at most ``SCRIBBLE_MAX_POINTS``),
  all positive or all negative: nnInteractive and SAM-based tools take scribbles as a set of
  clicks, and SAM was trained on a handful of points, not on dense ones.
- A lasso (closed curve) becomes its bounding box plus up to ``LASSO_POINTS`` positive points well
  inside the polygon (the deterministic inner points of ``prompts.sample_points``): SAM's box
  says where, the inner points say what, which a box alone leaves open for a concave outline.

Which slice: the axial slices are the slices along ``Image.axial_axis``. A shape lies on the slice
of its centre (the middle of its extent across the slices, rounded); a curve that spans more than
``MAX_CURVE_SPAN_MM`` across the slices is refused (``InputError`` naming it): it was not drawn on
one slice. A box may be thick (a 3D ROI): it prompts any slice it crosses, its centre slice by default.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from CRCSegmentationLib.usam.prompts import sample_points
from CRCSegmentationLib.usam.refinement import SlicePoints
from OrganGuidanceLib.validation import InputError

SCRIBBLE_STEP_MM = 5.0  # one point every ~5 mm along a scribble: 4 to 8 across a 20-60 mm rectal tumor
SCRIBBLE_MAX_POINTS = 8  # more points than U-SAM's 3-5 training clicks add little and slow the decoder
LASSO_POINTS = 3  # U-SAM / CARE Table 4: 3 points per class
MAX_CURVE_SPAN_MM = 15.0  # a curve drawn in a view tilted ~20 degrees to an oblique CT still passes (40 mm x sin 20)


@dataclass(frozen=True)
class SliceGrid:
    """The voxel grid prompts land on: array shape (z, y, x), spacing (mm of the i, j, k index axes) and
    the array axis the axial slices are cut along (``Image.axial_axis``; 0 for the usual axial CT)."""

    shape: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    axis: int = 0

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise InputError(f"slice grid: need a 3D array shape, got {self.shape}")
        if len(self.spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in self.spacing):
            raise InputError(f"slice grid: spacing must be 3 positive mm values, got {self.spacing}")
        if self.axis not in (0, 1, 2):
            raise InputError(f"slice grid: the slice axis must be 0, 1 or 2, got {self.axis}")

    @classmethod
    def of(cls, image, axis: Optional[int] = None) -> "SliceGrid":
        """The grid of an ``Image``; its axial slices unless ``axis`` names another array axis."""
        return cls(tuple(int(n) for n in image.shape[:3]), tuple(float(s) for s in image.spacing),
                   image.axial_axis if axis is None else int(axis))

    @property
    def normal(self) -> int:
        """The (i, j, k) index axis across the slices (array axis a is index axis 2 - a)."""
        return 2 - self.axis

    @property
    def in_plane(self) -> Tuple[int, int]:
        """The (i, j, k) index axes of the slice's columns and rows: the slice array keeps the array's axis
        order, so its columns are the lower index axis (i for an axial slice) and its rows the higher (j)."""
        col, row = sorted({0, 1, 2} - {self.normal})
        return col, row

    @property
    def slice_count(self) -> int:
        return int(self.shape[self.axis])

    @property
    def slice_shape(self) -> Tuple[int, int]:
        """(rows, cols) of one slice array."""
        col, row = self.in_plane
        return int(self.shape[2 - row]), int(self.shape[2 - col])

    @property
    def pixel_mm(self) -> np.ndarray:
        """Spacing (mm) of a slice's columns and rows."""
        col, row = self.in_plane
        return np.array([self.spacing[col], self.spacing[row]], dtype=float)

    def split(self, points_ijk: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """N x 3 (i, j, k) -> (N x 2 slice pixels (col, row), N positions across the slices)."""
        col, row = self.in_plane
        return points_ijk[:, [col, row]], points_ijk[:, self.normal]


# --- helpers ------------------------------------------------------------------------
def _points(points_ijk, name: str, minimum: int) -> np.ndarray:
    points = np.asarray(points_ijk, dtype=float)
    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError(f"{name}: need N x 3 voxel indices (i, j, k), got shape {points.shape}")
    if len(points) < minimum:
        raise InputError(f"{name}: needs at least {minimum} point(s), got {len(points)}")
    if not np.all(np.isfinite(points)):
        raise InputError(f"{name}: non-finite voxel indices {points.tolist()}")
    return points


def _slice_of(across: np.ndarray, grid: SliceGrid, name: str, slice_index: Optional[int]) -> int:
    """The slice a shape prompts: ``slice_index`` (which the shape must cross) or the slice of its centre."""
    low, high = float(across.min()), float(across.max())
    k = int(np.floor((low + high) / 2.0 + 0.5)) if slice_index is None else int(slice_index)
    if not 0 <= k < grid.slice_count:
        raise InputError(f"{name}: lies on slice {k}, outside the volume's {grid.slice_count} axial slices")
    if slice_index is not None and not low - 0.5 <= k <= high + 0.5:
        raise InputError(f"{name}: spans slices {low:.1f}..{high:.1f}, it does not cross slice {k}")
    return k


def _check_flat(across: np.ndarray, grid: SliceGrid, name: str, max_span_mm: float) -> None:
    span_mm = float(across.max() - across.min()) * grid.spacing[grid.normal]
    if span_mm > max_span_mm:
        raise InputError(f"{name}: spans {span_mm:.1f} mm across the axial slices (more than {max_span_mm:g} mm); "
                         "draw it on one axial slice")


def _pixel_box(low: np.ndarray, high: np.ndarray, grid: SliceGrid, name: str) -> np.ndarray:
    """SAM's box (x0, y0, x1, y1) = the first and last pixel centres inside the extent ``low``..``high``
    (col, row), on the slice; InputError when the extent holds no pixel centre of the slice."""
    rows, cols = grid.slice_shape
    last = np.array([cols - 1, rows - 1], dtype=float)
    # 1e-6 px: a RAS round trip puts a voxel centre at 9.9999999, which is pixel 10
    start = np.maximum(np.ceil(low - 1e-6), 0.0)
    stop = np.minimum(np.floor(high + 1e-6), last)
    if np.any(stop < start):
        if np.any(high < -0.5) or np.any(low > last + 0.5):
            raise InputError(f"{name}: lies outside the slice ({cols} x {rows} pixels)")
        width, height = (high - low) * grid.pixel_mm
        raise InputError(f"{name}: is {width:.1f} x {height:.1f} mm and holds no pixel of the slice; "
                         "draw it around the tumor")
    return np.concatenate([start, stop])


def _prompt(k: int, xy: np.ndarray, labels: np.ndarray, box: Optional[np.ndarray]) -> SlicePoints:
    return SlicePoints(k, np.asarray(xy, dtype=float).reshape(-1, 2), np.asarray(labels, dtype=np.int64).reshape(-1),
                       box=None if box is None else np.asarray(box, dtype=float))


# --- the shapes ---------------------------------------------------------------------
def box_prompt(corners_ijk, grid: SliceGrid, slice_index: Optional[int] = None, name: str = "box") -> SlicePoints:
    """A box from its corners (N >= 2 points: two clicks of a rectangle, or a ROI's 8 corners).

    The corners' extent on the slice (their projection along the slice normal; for a ROI rotated
    against an oblique CT the extent of its outline), as SAM's box: the first and last pixel centres
    inside it, clipped to the slice. On ``slice_index`` (which the box must cross) or its centre slice.
    """
    corners = _points(corners_ijk, name, 2)
    xy, across = grid.split(corners)
    k = _slice_of(across, grid, name, slice_index)
    box = _pixel_box(xy.min(axis=0), xy.max(axis=0), grid, name)
    return _prompt(k, np.zeros((0, 2)), np.zeros(0), box)


def resample_polyline(xy: np.ndarray, pixel_mm: np.ndarray, step_mm: float, max_points: int) -> np.ndarray:
    """Points along a polyline (M x 2 pixels) from its first to its last point, ``step_mm`` apart
    (lengths in mm: pixels need not be square), at most ``max_points`` (then evenly spread);
    one point, the middle, for a polyline shorter than half a step."""
    segments = np.diff(xy, axis=0)
    lengths = np.linalg.norm(segments * pixel_mm, axis=1)
    along = np.concatenate([[0.0], np.cumsum(lengths)])
    total = float(along[-1])
    count = int(min(max_points, max(1, np.round(total / step_mm) + 1)))
    targets = np.array([total / 2.0]) if count == 1 else np.linspace(0.0, total, count)
    # Interpolate each coordinate over the arc length (repeated points have zero length: np.interp keeps order).
    keep = np.concatenate([[True], lengths > 0])
    return np.stack([np.interp(targets, along[keep], xy[keep, axis]) for axis in range(2)], axis=1)


def scribble_prompt(points_ijk, positive: bool, grid: SliceGrid, slice_index: Optional[int] = None,
                    name: str = "scribble", step_mm: float = SCRIBBLE_STEP_MM, max_points: int = SCRIBBLE_MAX_POINTS,
                    max_span_mm: float = MAX_CURVE_SPAN_MM) -> SlicePoints:
    """Points along a scribble (an open curve's points, in order), label 1 (``positive``) or 0.

    Points off the slice's pixels are dropped (the scribble left the image); InputError when none is left.
    """
    if not np.isfinite(step_mm) or step_mm <= 0 or max_points < 1:
        raise InputError(f"{name}: the point step ({step_mm} mm) must be > 0 and at most-points ({max_points}) >= 1")
    points = _points(points_ijk, name, 1)
    xy, across = grid.split(points)
    _check_flat(across, grid, name, max_span_mm)
    k = _slice_of(across, grid, name, slice_index)
    along = resample_polyline(xy, grid.pixel_mm, step_mm, max_points)
    rows, cols = grid.slice_shape
    inside = np.all((along >= -0.5) & (along <= np.array([cols - 0.5, rows - 0.5])), axis=1)
    if not inside.any():
        raise InputError(f"{name}: lies outside the slice ({cols} x {rows} pixels)")
    return _prompt(k, along[inside], np.full(int(inside.sum()), 1 if positive else 0), None)


def polygon_mask(vertices_xy, shape: Tuple[int, int]) -> np.ndarray:
    """Pixels (rows x cols, bool) whose centre lies inside or on a closed polygon (M x 2 (col, row) vertices).

    Even-odd scanlines through the pixel centres: an edge counts on a row when its ends lie on
    either side, half-open (y0 <= row < y1), so a vertex on the row is counted once; then the
    centres on the outline itself (which the half-open rule leaves out on the top rows) are added.
    """
    vertices = np.asarray(vertices_xy, dtype=float)
    if vertices.ndim != 2 or vertices.shape[1] != 2 or len(vertices) < 3:
        raise InputError(f"polygon: need at least 3 (col, row) vertices, got shape {vertices.shape}")
    rows, cols = int(shape[0]), int(shape[1])
    mask = np.zeros((rows, cols), dtype=bool)
    x0, y0 = vertices[:, 0], vertices[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    first, last = max(0, int(np.ceil(y0.min()))), min(rows - 1, int(np.floor(y0.max())))
    for row in range(first, last + 1):
        crossing = (y0 <= row) != (y1 <= row)
        xs = np.sort(x0[crossing] + (row - y0[crossing]) * (x1[crossing] - x0[crossing]) / (y1[crossing] - y0[crossing]))
        spans = list(zip(xs[0::2], xs[1::2]))
        touching = (np.minimum(y0, y1) <= row) & (row <= np.maximum(y0, y1))
        for a, b, c, d in zip(x0[touching], y0[touching], x1[touching], y1[touching]):
            if b == d:  # a horizontal edge on the row
                spans.append((min(a, c), max(a, c)))
            else:
                x = a + (row - b) * (c - a) / (d - b)
                spans.append((x, x))
        for start, stop in spans:
            c0, c1 = max(0, int(np.ceil(start - 1e-9))), min(cols - 1, int(np.floor(stop + 1e-9)))
            if c0 <= c1:
                mask[row, c0:c1 + 1] = True
    return mask


def inner_points(mask: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` distinct (col, row) pixels well inside ``mask`` (the deepest first, then far apart)."""
    if count < 1 or not mask.any():
        return np.zeros((0, 2), dtype=np.float32)
    sampled = sample_points(mask.astype(np.uint8), classes=(1,), per_class=count, rng=None).coords_xy
    _, first = np.unique(sampled, axis=0, return_index=True)  # a small mask repeats pixels: keep each once
    return sampled[np.sort(first)]


def lasso_prompt(curve_ijk, grid: SliceGrid, slice_index: Optional[int] = None, name: str = "lasso",
                 points: int = LASSO_POINTS, max_span_mm: float = MAX_CURVE_SPAN_MM) -> SlicePoints:
    """A closed curve: its bounding box on the slice plus up to ``points`` positive points inside it.

    The box is that of the pixels inside the curve (SAM's box of a mask: first and last pixel centres).
    """
    curve = _points(curve_ijk, name, 3)
    xy, across = grid.split(curve)
    _check_flat(across, grid, name, max_span_mm)
    k = _slice_of(across, grid, name, slice_index)
    mask = polygon_mask(xy, grid.slice_shape)
    if not mask.any():
        _pixel_box(xy.min(axis=0), xy.max(axis=0), grid, name)  # off the slice, or too small: says which
        raise InputError(f"{name}: encloses no pixel centre of slice {k}; draw it around the tumor")
    rows_cols = np.argwhere(mask)
    box = np.concatenate([rows_cols.min(axis=0)[::-1], rows_cols.max(axis=0)[::-1]]).astype(float)
    inside = inner_points(mask, points)
    return _prompt(k, inside, np.ones(len(inside)), box)


def point_prompts(points_ijk, labels: Sequence[int], grid: SliceGrid, name: str = "points") -> List[SlicePoints]:
    """Clicked points, each on its own slice (rounded), in the order given; InputError off the volume."""
    points = _points(points_ijk, name, 0)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(points) or not np.isin(labels, (0, 1)).all():
        raise InputError(f"{name}: need one label (1 positive, 0 negative) per point, got {labels.tolist()}")
    xy, across = grid.split(points)
    rows, cols = grid.slice_shape
    prompts = []
    for n, (pixel, position, label) in enumerate(zip(xy, across, labels)):
        k = int(np.floor(position + 0.5))
        if not 0 <= k < grid.slice_count or np.any(pixel < -0.5) or np.any(pixel > np.array([cols - 0.5, rows - 0.5])):
            raise InputError(f"{name}: point {n + 1} at voxel ({', '.join(f'{v:.1f}' for v in points[n])}) "
                             "is outside the volume")
        prompts.append(_prompt(k, pixel[None], np.array([label]), None))
    return prompts


def merge_prompts(prompts: Sequence[SlicePoints], names: Optional[Sequence[str]] = None) -> SlicePoints:
    """One prompt of several on the same slice: their points in order, and the one box among them.

    SAM's prompt encoder takes one box per prompt: two boxes are refused, naming both shapes.
    """
    prompts = list(prompts)
    names = list(names) if names is not None else [f"prompt {n + 1}" for n in range(len(prompts))]
    if not prompts:
        raise InputError("prompt: nothing placed; place a point, a box, a scribble or a lasso on the tumor")
    slices = sorted({int(p.slice_index) for p in prompts})
    if len(slices) > 1:
        raise InputError(f"prompt: the shapes lie on different slices {slices}; merge those of one slice")
    boxed = [name for name, prompt in zip(names, prompts) if prompt.box is not None]
    if len(boxed) > 1:
        raise InputError(f"prompt: {' and '.join(boxed)} both give a box on slice {slices[0]}; "
                         "U-SAM takes one box per prompt: remove one")
    box = next((p.box for p in prompts if p.box is not None), None)
    xy = np.concatenate([np.asarray(p.xy, dtype=np.float32).reshape(-1, 2) for p in prompts])
    labels = np.concatenate([np.asarray(p.labels, dtype=np.int64).reshape(-1) for p in prompts])
    return _prompt(slices[0], xy, labels, box)
