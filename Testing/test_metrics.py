"""Metrics against an independent implementation: DeepMind's ``surface_distance`` (test-only dependency).

Our surface metrics are defined as DeepMind's (see CRCSegmentationLib/metrics.py);
they must agree on real organ masks, isotropic and anisotropic, up to the float32
precision of the ``edt`` distance transform (DeepMind uses scipy's float64 EDT).
"""
from __future__ import annotations

import numpy as np
import pytest
import surface_distance as deepmind
from surface_distance import lookup_tables as deepmind_tables

from CRCSegmentationLib.measurement.metrics import (
    HD95_EMPTY_MM,
    SurfaceDistances,
    compute_metrics,
    robust_hausdorff,
    surface_dice,
    surface_distances,
)
from CRCSegmentationLib.measurement.surface_area import neighbour_code_weights, surface_area_table
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.morphology import bounding_box, dilate_mm, erode_mm

# surface_distance 0.1 calls scipy's deprecated ndimage.filters / ndimage.morphology namespaces.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DISTANCE_TOLERANCE_MM = 1e-4  # float32 EDT vs float64: observed differences are below 1e-6 mm
FRACTION_TOLERANCE = 1e-9


def shift(mask: np.ndarray, offset) -> np.ndarray:
    """Shift with background fill (np.roll would wrap the organ around)."""
    out = np.zeros_like(mask)
    source = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, mask.shape))
    target = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, mask.shape))
    out[target] = mask[source]
    return out


def deepmind_reference(prediction, reference, spacing, tolerance_mm=4.0):
    distances = deepmind.compute_surface_distances(reference, prediction, spacing)
    return (deepmind.compute_robust_hausdorff(distances, 95),
            deepmind.compute_surface_dice_at_tolerance(distances, tolerance_mm),
            distances)


def assert_matches_deepmind(prediction, reference, spacing, tolerance_mm=4.0):
    ours = compute_metrics(prediction, reference, spacing, nsd_tolerance_mm=tolerance_mm)
    hd95, nsd, distances = deepmind_reference(prediction, reference, spacing, tolerance_mm)
    assert ours.hd95 == pytest.approx(hd95, abs=DISTANCE_TOLERANCE_MM)
    assert ours.nsd == pytest.approx(nsd, abs=FRACTION_TOLERANCE)
    # The surfels themselves: same distances (as multisets) and same areas.
    surfaces = surface_distances(prediction, reference, spacing)
    for ours_d, ours_a, theirs_d, theirs_a in (
        (surfaces.reference_to_prediction, surfaces.reference_areas,
         distances["distances_gt_to_pred"], distances["surfel_areas_gt"]),
        (surfaces.prediction_to_reference, surfaces.prediction_areas,
         distances["distances_pred_to_gt"], distances["surfel_areas_pred"]),
    ):
        assert len(ours_d) == len(theirs_d)
        np.testing.assert_allclose(np.sort(ours_d), theirs_d, atol=DISTANCE_TOLERANCE_MM)
        assert ours_a.sum() == pytest.approx(theirs_a.sum(), rel=1e-12)
    return ours, hd95, nsd


# --- the surfel area table -------------------------------------------------------
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.9375, 0.9375), (0.5, 2.0, 3.3)])
def test_area_table_equals_deepmind(spacing):
    # Ours is meshed by skimage and measured from vertices, DeepMind's summed from stored
    # triangle normals: same triangles, different float operations (observed <= 4e-16 relative).
    np.testing.assert_allclose(surface_area_table(spacing),
                               deepmind_tables.create_table_neighbour_code_to_surface_area(spacing),
                               rtol=1e-14, atol=0)
    np.testing.assert_array_equal(neighbour_code_weights(), deepmind_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL)


# --- real masks -----------------------------------------------------------------
@pytest.fixture(scope="module")
def ts_colon(organs, ts):
    colon_id = next(value for value, name in ts.labels.items() if name == "colon")  # 20 in TotalSegmentator v2
    return organs.array == colon_id, organs.spacing_zyx


@pytest.fixture(scope="module")
def word_colon(shared_file):
    """WORD colon (label 10), anisotropic 3 x 0.9375 x 0.9375 mm, cut to 40 slices so it touches the crop edge."""
    labels = read_image(shared_file("word_label_map.nii.gz"), name="word")
    colon = labels.array == 10
    box = bounding_box(colon)
    z0 = (box[0].start + box[0].stop) // 2 - 20
    crop = (slice(z0, z0 + 40), slice(box[1].start - 12, box[1].stop + 12), slice(box[2].start - 12, box[2].stop + 12))
    return np.ascontiguousarray(colon[crop]), labels.spacing_zyx


@pytest.mark.parametrize("radius_mm", [3.0, 4.5, 6.0])
def test_ts_colon_dilated(ts_colon, radius_mm):
    colon, spacing = ts_colon
    ours, _, _ = assert_matches_deepmind(dilate_mm(colon, radius_mm, spacing), colon, spacing)
    assert ours.recall == 1.0 and ours.hd95 >= radius_mm - 3.0


def test_ts_colon_shifted_and_eroded(ts_colon):
    colon, spacing = ts_colon
    assert_matches_deepmind(shift(colon, (1, -2, 1)), colon, spacing)
    assert_matches_deepmind(erode_mm(colon, 3.0, spacing), colon, spacing, tolerance_mm=2.0)


@pytest.mark.parametrize("case", ["dilated", "eroded", "shifted", "mixed"])
def test_word_colon_anisotropic(word_colon, case):
    colon, spacing = word_colon
    prediction = {
        "dilated": lambda: dilate_mm(colon, 4.0, spacing),
        "eroded": lambda: erode_mm(colon, 2.0, spacing),
        "shifted": lambda: shift(colon, (1, 3, -2)),
        "mixed": lambda: erode_mm(colon, 3.0, spacing) | shift(colon, (0, 0, 6)),
    }[case]()
    assert_matches_deepmind(prediction, colon, spacing)


def test_spacing_is_in_array_order(word_colon):
    """A one-slice shift along z is 3 mm on WORD's grid, not 0.9375 mm."""
    colon, spacing = word_colon
    prediction = shift(colon, (1, 0, 0))
    assert compute_metrics(prediction, colon, spacing).hd95 == pytest.approx(3.0, abs=1e-5)
    assert compute_metrics(prediction, colon, tuple(reversed(spacing))).hd95 == pytest.approx(0.9375, abs=1e-5)


def test_distance_exactly_at_tolerance_counts_as_within(ts_colon):
    """A 1-voxel shift at 3 mm puts many surfels exactly 3 mm away; float32 rounding must not drop them."""
    colon, spacing = ts_colon
    ours, _, nsd = assert_matches_deepmind(shift(colon, (1, 0, 0)), colon, spacing, tolerance_mm=3.0)
    assert ours.nsd == pytest.approx(nsd, abs=FRACTION_TOLERANCE)
    assert ours.nsd == 1.0


def test_mask_touching_the_image_edge():
    """Voxels outside the array are background, as in DeepMind's crop-and-pad."""
    reference = np.zeros((12, 14, 16), bool)
    reference[0:6, 3:14, 5:16] = True  # touches three faces
    prediction = shift(reference, (2, -1, 0))
    assert_matches_deepmind(prediction, reference, (2.0, 1.0, 0.7), tolerance_mm=1.5)


# --- analytic values and overlap counts --------------------------------------
def test_concentric_balls_hd95_is_radius_difference():
    grid = np.stack(np.meshgrid(*[np.arange(64.0)] * 3, indexing="ij")) - 31.5
    radius = np.sqrt((grid**2).sum(axis=0))
    metrics = compute_metrics(radius <= 26.0, radius <= 20.0, (1.0, 1.0, 1.0), nsd_tolerance_mm=4.0)
    assert metrics.hd95 == pytest.approx(6.0, abs=1.0)
    assert metrics.nsd < 0.6  # the outer sphere is 6 mm away everywhere; only the ~1 voxel slack counts


def test_overlap_metrics_equal_numpy_counts(ts_colon):
    colon, spacing = ts_colon
    prediction = shift(dilate_mm(colon, 3.0, spacing), (2, 1, 0))
    metrics = compute_metrics(prediction, colon, spacing)
    tp = np.count_nonzero(prediction & colon)
    assert metrics.dice == pytest.approx(2 * tp / (prediction.sum() + colon.sum()), rel=1e-12)
    assert metrics.precision == pytest.approx(tp / prediction.sum(), rel=1e-12)
    assert metrics.recall == pytest.approx(tp / colon.sum(), rel=1e-12)
    voxel_ml = np.prod(spacing) / 1000.0
    assert metrics.volume_reference_ml == pytest.approx(colon.sum() * voxel_ml)
    assert metrics.volume_prediction_ml == pytest.approx(prediction.sum() * voxel_ml)


def test_percentile_100_is_the_hausdorff_distance(ts_colon):
    colon, spacing = ts_colon
    prediction = shift(colon, (0, 3, 0))
    surfaces = surface_distances(prediction, colon, spacing)
    distances = deepmind.compute_surface_distances(colon, prediction, spacing)
    assert robust_hausdorff(surfaces, 100) == pytest.approx(deepmind.compute_robust_hausdorff(distances, 100), abs=1e-4)
    assert isinstance(surfaces, SurfaceDistances)
    assert surface_dice(surfaces, 1e6) == 1.0


# --- empty masks (our stated conventions; DeepMind returns inf / nan there) ------------
def test_both_empty():
    empty = np.zeros((5, 6, 7), bool)
    metrics = compute_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert (metrics.dice, metrics.nsd, metrics.precision, metrics.recall, metrics.hd95) == (1.0, 1.0, 1.0, 1.0, 0.0)
    assert metrics.volume_reference_ml == metrics.volume_prediction_ml == 0.0


def test_empty_prediction():
    reference = np.zeros((5, 6, 7), bool)
    reference[1:3, 2:4, 2:5] = True
    metrics = compute_metrics(np.zeros_like(reference), reference, (3.0, 1.0, 1.0))
    assert (metrics.dice, metrics.nsd, metrics.precision, metrics.recall) == (0.0, 0.0, 0.0, 0.0)
    assert metrics.hd95 == HD95_EMPTY_MM == 1000.0
    assert metrics.volume_reference_ml == pytest.approx(12 * 3.0 / 1000)


def test_empty_reference():
    prediction = np.zeros((5, 6, 7), bool)
    prediction[0, 0, 0] = True
    metrics = compute_metrics(prediction, np.zeros_like(prediction), (1.0, 1.0, 1.0))
    assert (metrics.dice, metrics.nsd, metrics.precision, metrics.recall, metrics.hd95) == (0.0, 0.0, 0.0, 0.0, 1000.0)


def test_identical_masks(ts_colon):
    colon, spacing = ts_colon
    metrics = compute_metrics(colon, colon.copy(), spacing)
    assert (metrics.dice, metrics.nsd, metrics.precision, metrics.recall, metrics.hd95) == (1.0, 1.0, 1.0, 1.0, 0.0)


# --- bad input -------------------------------------------------------------------
def test_bad_inputs_are_named():
    mask = np.zeros((4, 4, 4), bool)
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(mask, np.zeros((4, 4, 5), bool), (1, 1, 1))
    with pytest.raises(ValueError, match="3D"):
        compute_metrics(mask[0], mask[0], (1, 1))
    with pytest.raises(ValueError, match="spacing"):
        compute_metrics(mask, mask, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="label_map == label"):
        compute_metrics(np.full((4, 4, 4), 2, np.uint8), mask, (1, 1, 1))
    with pytest.raises(ValueError, match="tolerance"):
        compute_metrics(mask, mask, (1, 1, 1), nsd_tolerance_mm=-1)
    # 0/1 integer masks are fine
    assert compute_metrics(mask.astype(np.uint8), mask.astype(np.int64), (1, 1, 1)).dice == 1.0
