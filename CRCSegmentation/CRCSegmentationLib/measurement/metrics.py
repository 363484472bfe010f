"""Segmentation metrics of AG-CRC §IV-D: Dice, NSD, precision, recall, HD95.

Definitions
-----------
Overlap metrics count voxels: with TP = |P ∩ R|,
Dice = 2 TP / (|P| + |R|), precision = TP / |P|, recall = TP / |R|.

Surface metrics follow DeepMind's ``surface_distance`` package (the NSD
implementation the MSD challenge used, whose 4 mm practice AG-CRC adopts):

* the surface of a mask is the set of 2x2x2 voxel neighbourhoods that are neither
  empty nor full (neighbour-code method); each such "surfel" sits between voxel
  centres and is weighted by the area of its marching-cubes surface
  (``surface_area.py``), so results barely depend on the sampling of the surface;
* a surfel's distance is the Euclidean distance (mm, spacing-aware) from its
  position to the nearest surfel of the other mask;
* NSD at tolerance t = (area of P's surfels within t of R + area of R's surfels
  within t of P) / (area of P + area of R);
* HD95 = max over both directions of the area-weighted 95th percentile of the
  directed distances, taken as DeepMind does: the first sorted distance whose
  cumulative area fraction reaches 0.95 (no interpolation).

Voxels outside the array count as background, so a mask touching the edge of the
image has a surface there (as in DeepMind's code). Distances come from ``edt``
(float32); a distance within ``DISTANCE_EPSILON_MM`` of the NSD tolerance counts
as within it, so that float rounding cannot flip a surfel at exactly t.

Empty masks (conventions; ``CONVENTIONS`` holds the same text for reports)
--------------------------------------------------------------------------
* both empty: Dice = NSD = precision = recall = 1, HD95 = 0 (a correct "no tumor");
* one empty: Dice = NSD = 0; HD95 = 1000 mm (AG-CRC §IV-D, a finite penalty that
  keeps means meaningful);
* precision with an empty prediction and a non-empty reference = 0 (a missed
  tumor is not "precise"); recall with an empty reference and a non-empty
  prediction = 0 (every predicted voxel is a false positive).

Work is done on the bounding box of both masks plus one voxel, so a small tumor
in a clinical volume costs little.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Dict, Sequence, Tuple

import edt
import numpy as np

from CRCSegmentationLib.measurement.surface_area import neighbour_code_weights, surface_area_table

HD95_EMPTY_MM = 1000.0  # AG-CRC §IV-D: HD95 when the prediction or the reference is empty
NSD_TOLERANCE_MM = 4.0  # AG-CRC §IV-D, following the MSD challenge
HD_PERCENTILE = 95.0
DISTANCE_EPSILON_MM = 1e-4  # float32 EDT rounding guard for the NSD tolerance test

CONVENTIONS: Dict[str, str] = {
    "overlap": "Dice = 2|P&R|/(|P|+|R|), precision = |P&R|/|P|, recall = |P&R|/|R| (voxel counts)",
    "surface": "DeepMind surface_distance definitions: neighbour-code surfels weighted by marching-cubes area, "
               "spacing-aware Euclidean distances; voxels outside the image are background",
    "nsd": "normalized surface Dice at the tolerance: area of both surfaces within tolerance / total area",
    "hd95": "max of the two directed area-weighted 95th percentiles (first distance whose cumulative area "
            "fraction reaches 0.95, no interpolation)",
    "both_empty": "Dice = NSD = precision = recall = 1, HD95 = 0 mm",
    "one_empty": f"Dice = NSD = 0, HD95 = {HD95_EMPTY_MM:g} mm (AG-CRC IV-D)",
    "precision_empty_prediction": "0 when the reference is not empty",
    "recall_empty_reference": "0 when the prediction is not empty",
}


@dataclass
class SegmentationMetrics:
    """Metrics of one binary prediction against its reference (distances in mm, volumes in mL)."""

    dice: float
    nsd: float
    precision: float
    recall: float
    hd95: float
    volume_reference_ml: float
    volume_prediction_ml: float

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)


@dataclass
class SurfaceDistances:
    """Directed surfel distances (mm) and surfel areas (mm^2) of both masks, unsorted."""

    prediction_to_reference: np.ndarray
    reference_to_prediction: np.ndarray
    prediction_areas: np.ndarray
    reference_areas: np.ndarray


def _check_pair(prediction: np.ndarray, reference: np.ndarray, spacing_zyx: Sequence[float]) -> Tuple[float, ...]:
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    if prediction.ndim != 3:
        raise ValueError(f"masks must be 3D (z, y, x), got {prediction.ndim}D arrays of shape {prediction.shape}")
    spacing = tuple(float(s) for s in spacing_zyx)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_zyx must be 3 positive millimetre values in array order, got {spacing_zyx}")
    return spacing


def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if mask.size and (mask.min() < 0 or mask.max() > 1):
        # A label map passed by mistake would silently merge its labels.
        raise ValueError(f"{name}: expected a binary mask (bool or 0/1), got values {mask.min()}..{mask.max()}; "
                         "pass `label_map == label`")
    return mask.astype(bool)


def _union_box(prediction: np.ndarray, reference: np.ndarray) -> Tuple[slice, ...]:
    union = prediction | reference
    box = []
    for axis in range(3):
        present = np.flatnonzero(np.any(union, axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def _neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """Code of every 2x2x2 neighbourhood of ``mask`` padded by one background voxel on each side.

    Output shape is ``mask.shape + 1``; entry p covers voxels p-1 and p on each axis
    (DeepMind's ``correlate`` with the 2x2x2 kernel, written as 8 shifted sums).
    """
    padded = np.pad(mask.astype(np.uint8), 1)
    shape = tuple(n + 1 for n in mask.shape)
    weights = neighbour_code_weights()
    codes = np.zeros(shape, dtype=np.uint8)
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                codes += weights[a, b, c] * padded[a:a + shape[0], b:b + shape[1], c:c + shape[2]]
    return codes


def _distance_to(surface: np.ndarray, spacing: Tuple[float, ...]) -> np.ndarray:
    """Distance (mm) from every grid point to the nearest point of ``surface``."""
    return edt.edt(
        np.ascontiguousarray(~surface, dtype=np.uint8),
        anisotropy=spacing,
        black_border=False,  # the crop edge is not a surface
        parallel=max(1, min(8, os.cpu_count() or 1)),
    )


def surface_distances(prediction: np.ndarray, reference: np.ndarray, spacing_zyx: Sequence[float]) -> SurfaceDistances:
    """Surfel distances between two non-empty masks (DeepMind's ``compute_surface_distances``)."""
    spacing = _check_pair(prediction, reference, spacing_zyx)
    prediction, reference = _as_bool(prediction, "prediction"), _as_bool(reference, "reference")
    if not prediction.any() or not reference.any():
        raise ValueError("surface distances need two non-empty masks; compute_metrics handles empty ones")
    box = _union_box(prediction, reference)
    codes_prediction = _neighbour_codes(prediction[box])
    codes_reference = _neighbour_codes(reference[box])
    surface_prediction = (codes_prediction != 0) & (codes_prediction != 255)
    surface_reference = (codes_reference != 0) & (codes_reference != 255)
    areas = surface_area_table(spacing)
    return SurfaceDistances(
        prediction_to_reference=_distance_to(surface_reference, spacing)[surface_prediction].astype(np.float64),
        reference_to_prediction=_distance_to(surface_prediction, spacing)[surface_reference].astype(np.float64),
        prediction_areas=areas[codes_prediction[surface_prediction]],
        reference_areas=areas[codes_reference[surface_reference]],
    )


def _directed_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    order = np.argsort(distances, kind="stable")
    cumulative = np.cumsum(areas[order]) / np.sum(areas)
    index = min(int(np.searchsorted(cumulative, percent / 100.0)), len(distances) - 1)
    return float(distances[order][index])


def robust_hausdorff(surfaces: SurfaceDistances, percent: float = HD_PERCENTILE) -> float:
    """Symmetric area-weighted percentile Hausdorff distance (mm); 95 gives HD95."""
    return max(
        _directed_percentile(surfaces.prediction_to_reference, surfaces.prediction_areas, percent),
        _directed_percentile(surfaces.reference_to_prediction, surfaces.reference_areas, percent),
    )


def surface_dice(surfaces: SurfaceDistances, tolerance_mm: float = NSD_TOLERANCE_MM) -> float:
    """Normalized surface Dice at ``tolerance_mm``."""
    limit = tolerance_mm + DISTANCE_EPSILON_MM
    within = (surfaces.prediction_areas[surfaces.prediction_to_reference <= limit].sum()
              + surfaces.reference_areas[surfaces.reference_to_prediction <= limit].sum())
    return float(within / (surfaces.prediction_areas.sum() + surfaces.reference_areas.sum()))


def _ratio(numerator: int, denominator: int, if_both_empty: bool) -> float:
    if denominator == 0:
        return 1.0 if if_both_empty else 0.0
    return numerator / denominator


def compute_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing_zyx: Sequence[float],
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM,
) -> SegmentationMetrics:
    """All AG-CRC metrics of a binary ``prediction`` against ``reference`` on the same grid.

    ``spacing_zyx`` is in the arrays' axis order (``Image.spacing_zyx``).
    """
    spacing = _check_pair(np.asarray(prediction), np.asarray(reference), spacing_zyx)
    prediction, reference = _as_bool(prediction, "prediction"), _as_bool(reference, "reference")
    if nsd_tolerance_mm < 0:
        raise ValueError(f"nsd_tolerance_mm must be >= 0, got {nsd_tolerance_mm}")
    n_prediction, n_reference = int(np.count_nonzero(prediction)), int(np.count_nonzero(reference))
    both_empty = n_prediction == 0 and n_reference == 0
    true_positive = int(np.count_nonzero(prediction & reference)) if n_prediction and n_reference else 0
    voxel_ml = float(np.prod(spacing)) / 1000.0

    if n_prediction and n_reference:
        surfaces = surface_distances(prediction, reference, spacing)
        nsd, hd95 = surface_dice(surfaces, nsd_tolerance_mm), robust_hausdorff(surfaces, HD_PERCENTILE)
    else:
        nsd, hd95 = (1.0, 0.0) if both_empty else (0.0, HD95_EMPTY_MM)

    return SegmentationMetrics(
        dice=_ratio(2 * true_positive, n_prediction + n_reference, both_empty),
        nsd=nsd,
        precision=_ratio(true_positive, n_prediction, both_empty),
        recall=_ratio(true_positive, n_reference, both_empty),
        hd95=hd95,
        volume_reference_ml=n_reference * voxel_ml,
        volume_prediction_ml=n_prediction * voxel_ml,
    )
