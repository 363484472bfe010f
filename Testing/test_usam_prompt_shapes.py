"""Box, scribble and lasso prompts on synthetic grids (``usam.shapes``): which slice, which pixels, which labels.

Voxel indices in, ``SlicePoints`` out; no Slicer. The MRML side (markups in RAS on a real and an
oblique CT) is Testing/test_usam_prompt_markups.py.
"""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.path import Path as PolygonPath
from scipy import ndimage

from CRCSegmentationLib.usam.shapes import (
    SCRIBBLE_MAX_POINTS,
    SliceGrid,
    box_prompt,
    lasso_prompt,
    merge_prompts,
    point_prompts,
    polygon_mask,
    resample_polyline,
    scribble_prompt,
)
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.validation import InputError

GRID = SliceGrid((12, 60, 80), (0.8, 0.8, 3.0))  # 12 slices of 60 rows x 80 columns, 0.8 mm pixels, 3 mm slices


def ijk(xy, k) -> np.ndarray:
    """(col, row) pixels of slice k -> (i, j, k) voxel indices of an axial grid."""
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    return np.c_[xy, np.full(len(xy), float(k))]


# --- grid ------------------------------------------------------------------------
@pytest.mark.parametrize("direction, axis, slice_shape", [
    (np.eye(3), 0, (5, 6)),  # axial: slices array[k], rows j, columns i
    ([[1, 0, 0], [0, 0, 1], [0, -1, 0]], 1, (4, 6)),  # coronal acquisition: the j index runs head-foot
    ([[0, 0, 1], [0, 1, 0], [1, 0, 0]], 2, (4, 5)),  # sagittal acquisition: the i index runs head-foot
])
def test_the_grid_cuts_slices_as_numpy_does(direction, axis, slice_shape):
    image = Image(np.zeros((4, 5, 6)), (0.5, 0.7, 2.0), direction=direction)
    grid = SliceGrid.of(image)
    assert grid.axis == image.axial_axis == axis
    assert grid.slice_shape == np.take(image.array, 0, axis=axis).shape == slice_shape
    assert grid.slice_count == image.shape[axis]


def test_a_box_on_a_sagittal_grid_is_the_box_of_the_numpy_slice():
    """On a grid sliced along array axis 2 the slice pixel (col, row) is (j, k): the box of a blob in
    ``np.take(array, k, axis=2)`` comes back from its voxel corners."""
    image = Image(np.zeros((30, 40, 20)), (1.0, 1.0, 1.0), direction=[[0, 0, 1], [0, 1, 0], [1, 0, 0]])
    grid = SliceGrid.of(image)
    blob = np.zeros(image.shape, bool)
    blob[5:12, 20:31, 7] = True  # k 5..11, j 20..30 on the slice i = 7
    rows, cols = np.nonzero(np.take(blob, 7, axis=2))
    corners = np.array([[7, 20, 5], [7, 30, 11]], float)  # (i, j, k)
    prompt = box_prompt(corners, grid)
    assert prompt.slice_index == 7
    np.testing.assert_array_equal(prompt.box, [cols.min(), rows.min(), cols.max(), rows.max()])


# --- box -------------------------------------------------------------------------
def test_a_box_from_two_clicks_is_the_pixel_centres_inside_it():
    prompt = box_prompt(ijk([[20.3, 10.0], [9.6, 31.5]], 4), GRID)
    assert prompt.slice_index == 4 and len(prompt.xy) == 0
    np.testing.assert_array_equal(prompt.box, [10, 10, 20, 31])  # first and last pixel centres inside, SAM's layout


def test_a_thick_box_prompts_its_centre_slice_or_any_slice_it_crosses():
    corners = np.array([[i, j, k] for i in (20.5, 40.5) for j in (10.5, 30.5) for k in (2.5, 7.5)])  # slices 3..7
    assert box_prompt(corners, GRID).slice_index == 5
    np.testing.assert_array_equal(box_prompt(corners, GRID, slice_index=3).box, [21, 11, 40, 30])
    with pytest.raises(InputError, match="box 'ROI'.*does not cross slice 9"):
        box_prompt(corners, GRID, slice_index=9, name="box 'ROI'")


def test_a_box_is_clipped_to_the_slice_and_refused_off_it():
    np.testing.assert_array_equal(box_prompt(ijk([[-15, -3], [10, 70]], 1), GRID).box, [0, 0, 10, 59])
    with pytest.raises(InputError, match="box 'far'.*outside the slice"):
        box_prompt(ijk([[90, 10], [120, 20]], 1), GRID, name="box 'far'")
    with pytest.raises(InputError, match="box: lies on slice 14, outside the volume's 12 axial slices"):
        box_prompt(ijk([[10, 10], [20, 20]], 14), GRID)
    with pytest.raises(InputError, match="holds no pixel"):
        box_prompt(ijk([[10.2, 10.2], [10.7, 20]], 1), GRID)  # narrower than a pixel, between two centres
    with pytest.raises(InputError, match="at least 2"):
        box_prompt(ijk([[10, 10]], 1), GRID)


# --- scribble --------------------------------------------------------------------
def test_a_scribble_gives_a_point_every_5_mm_with_its_label():
    line = ijk([[10, 10], [10, 35]], 6)  # 25 px x 0.8 mm = 20 mm: points at 0, 5, 10, 15, 20 mm
    positive = scribble_prompt(line, True, GRID)
    assert positive.slice_index == 6 and positive.box is None and positive.labels.tolist() == [1] * 5
    np.testing.assert_allclose(positive.xy, [[10, 10 + n * 6.25] for n in range(5)])
    negative = scribble_prompt(line, False, GRID)
    assert negative.labels.tolist() == [0] * 5


def test_a_long_scribble_gives_at_most_8_points_spread_along_it_in_mm():
    bent = ijk([[5, 5], [75, 5], [75, 55]], 2)  # an L: 70 + 50 px = 96 mm
    prompt = scribble_prompt(bent, True, GRID)
    assert len(prompt.xy) == SCRIBBLE_MAX_POINTS
    steps = np.linalg.norm(np.diff(prompt.xy, axis=0), axis=1) * 0.8
    assert prompt.xy[0].tolist() == [5, 5] and prompt.xy[-1].tolist() == [75, 55]
    # on the polyline: each point on one of its two legs
    assert all(x == 75 or y == 5 for x, y in prompt.xy)
    # evenly spread along the curve (96 mm / 7): straight steps, except the one across the corner
    assert np.sum(np.isclose(steps, 96 / 7)) >= 6


def test_scribble_points_are_spaced_in_mm_on_anisotropic_pixels():
    xy = resample_polyline(np.array([[0.0, 0.0], [20.0, 0.0], [20.0, 10.0]]), np.array([0.5, 2.0]), 5.0, 20)
    # 10 mm along columns (20 px x 0.5), then 20 mm along rows (10 px x 2): 7 points, 5 mm apart
    np.testing.assert_allclose(xy, [[0, 0], [10, 0], [20, 0], [20, 2.5], [20, 5], [20, 7.5], [20, 10]])


def test_a_short_scribble_is_one_point_and_points_off_the_slice_are_dropped():
    prompt = scribble_prompt(ijk([[30, 30], [31, 30]], 3), True, GRID)  # 0.8 mm: its middle
    np.testing.assert_allclose(prompt.xy, [[30.5, 30]])
    leaving = scribble_prompt(ijk([[70, 30], [95, 30]], 3), True, GRID)  # 20 mm, the last 12 mm off the slice
    np.testing.assert_allclose(leaving.xy, [[70, 30], [76.25, 30]])
    with pytest.raises(InputError, match="scribble 'S'.*outside the slice"):
        scribble_prompt(ijk([[90, 30], [120, 30]], 3), True, GRID, name="scribble 'S'")


def test_a_curve_across_many_slices_is_refused_naming_it():
    steep = np.array([[10, 10, 1], [10, 40, 8]], float)  # 21 mm across the slices
    with pytest.raises(InputError, match=r"scribble 'up': spans 21.0 mm across the axial slices"):
        scribble_prompt(steep, True, GRID, name="scribble 'up'")
    tilted = np.array([[10, 10, 4.6], [10, 40, 6.4]], float)  # 5.4 mm: drawn on a tilted plane, centre slice 6
    assert scribble_prompt(tilted, True, GRID).slice_index == 6


# --- polygon and lasso -----------------------------------------------------------
def test_polygon_mask_matches_matplotlib_and_keeps_the_outline():
    star = np.array([[40 + r * np.cos(a), 30 + r * np.sin(a)]
                     for a, r in zip(np.linspace(0, 2 * np.pi, 14, endpoint=False), [25.37, 9.21] * 7)])
    mask = polygon_mask(star, (60, 80))
    rows, cols = np.mgrid[:60, :80]
    expected = PolygonPath(star).contains_points(np.c_[cols.ravel(), rows.ravel()]).reshape(60, 80)
    np.testing.assert_array_equal(mask, expected)  # no pixel centre on this outline: plain inside test
    square = polygon_mask([[10, 10], [30, 10], [30, 30], [10, 30]], (60, 80))
    assert square.sum() == 21 * 21 and square[10, 10] and square[30, 30]  # centres on the outline count
    assert polygon_mask([[-10, -10], [200, -10], [200, 200]], (60, 80)).sum() > 0  # clipped, no index error
    with pytest.raises(InputError, match="at least 3"):
        polygon_mask([[0, 0], [5, 5]], (60, 80))


def test_a_lasso_gives_the_box_of_its_inside_and_points_deep_inside():
    # A C shape (concave): its box covers the gap, the points must not fall into it.
    c_shape = ijk([[10, 10], [60, 10], [60, 22], [25, 22], [25, 38], [60, 38], [60, 50], [10, 50]], 8)
    prompt = lasso_prompt(c_shape, GRID)
    assert prompt.slice_index == 8
    np.testing.assert_array_equal(prompt.box, [10, 10, 60, 50])
    inside = polygon_mask(c_shape[:, :2], GRID.slice_shape)
    assert 1 <= len(prompt.xy) <= 3 and prompt.labels.tolist() == [1] * len(prompt.xy)
    assert len(np.unique(prompt.xy, axis=0)) == len(prompt.xy)
    depth = ndimage.distance_transform_edt(inside)
    for x, y in prompt.xy.astype(int):
        assert inside[y, x] and depth[y, x] >= 3  # well inside, not on the outline
    assert not any(25 < x < 60 and 22 < y < 38 for x, y in prompt.xy)  # not in the gap


def test_a_small_lasso_gives_fewer_distinct_points_and_an_empty_one_is_refused():
    small = lasso_prompt(ijk([[20, 20], [21, 20], [21, 21], [20, 21]], 0), GRID)
    np.testing.assert_array_equal(small.box, [20, 20, 21, 21])
    assert 1 <= len(small.xy) <= 3 and len(np.unique(small.xy, axis=0)) == len(small.xy)
    with pytest.raises(InputError, match="lasso 'L'.*holds no pixel"):
        lasso_prompt(ijk([[20.2, 20.2], [20.6, 20.2], [20.4, 20.7]], 0), GRID, name="lasso 'L'")


# --- points and merging --------------------------------------------------------------
def test_clicked_points_land_on_their_own_slices():
    prompts = point_prompts(np.array([[10, 20, 3.4], [11, 21, 3.6]]), [1, 0], GRID)
    assert [p.slice_index for p in prompts] == [3, 4] and [p.labels.tolist() for p in prompts] == [[1], [0]]
    with pytest.raises(InputError, match="point 2 .* outside the volume"):
        point_prompts(np.array([[10, 20, 3], [10, 20, 12]]), [1, 1], GRID)
    with pytest.raises(InputError, match="one label"):
        point_prompts(np.array([[10, 20, 3]]), [2], GRID)


def test_merging_keeps_points_in_order_and_one_box():
    box = box_prompt(ijk([[10, 10], [30, 30]], 5), GRID)
    scribble = scribble_prompt(ijk([[12, 12], [12, 24]], 5), False, GRID)
    click = point_prompts(ijk([[20, 20]], 5), [1], GRID)[0]
    merged = merge_prompts([box, scribble, click], ["box", "scribble", "click"])
    assert merged.slice_index == 5 and merged.labels.tolist() == [0, 0, 0, 1]
    np.testing.assert_array_equal(merged.box, box.box)
    np.testing.assert_allclose(merged.xy[-1], [20, 20])
    with pytest.raises(InputError, match="box 'A' and lasso 'B' both give a box on slice 5"):
        merge_prompts([box, lasso_prompt(ijk([[10, 10], [30, 10], [30, 30]], 5), GRID)], ["box 'A'", "lasso 'B'"])
    with pytest.raises(InputError, match="different slices"):
        merge_prompts([box, point_prompts(ijk([[20, 20]], 6), [1], GRID)[0]])
    with pytest.raises(InputError, match="nothing placed"):
        merge_prompts([])
