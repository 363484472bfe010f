"""Spacing-aware morphology equals scipy's with the same ball, voxel for voxel."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from OrganGuidanceLib.morphology import ball, bounding_box, dilate_mm, erode_mm


def random_blobs(shape, seed):
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    return noise > 0.08


@pytest.mark.parametrize("spacing,radius", [((3.0, 0.9, 0.9), 5.0), ((1.0, 1.0, 1.0), 2.5), ((2.0, 1.5, 0.7), 4.0)])
def test_dilation_matches_scipy_ball(spacing, radius):
    mask = random_blobs((24, 40, 44), seed=1)
    expected = ndimage.binary_dilation(mask, structure=ball(radius, spacing))
    np.testing.assert_array_equal(dilate_mm(mask, radius, spacing), expected)


@pytest.mark.parametrize("spacing,radius", [((3.0, 0.9, 0.9), 5.0), ((1.0, 1.0, 1.0), 2.5)])
def test_erosion_matches_scipy_ball_with_inside_border(spacing, radius):
    mask = random_blobs((24, 40, 44), seed=2)
    # Outside the image counts as inside the mask: the image edge is no organ boundary.
    expected = ndimage.binary_erosion(mask, structure=ball(radius, spacing), border_value=1)
    np.testing.assert_array_equal(erode_mm(mask, radius, spacing), expected)


def test_ball_is_anisotropic_in_voxels():
    kernel = ball(5.0, (3.0, 0.9375, 0.9375))
    assert kernel.shape == (3, 11, 11)
    assert kernel[1, 5, :].sum() == 11 and kernel[:, 5, 5].sum() == 3


def test_edge_cases():
    empty = np.zeros((5, 6, 7), bool)
    assert not dilate_mm(empty, 3, (1, 1, 1)).any()
    assert not erode_mm(empty, 3, (1, 1, 1)).any()
    assert bounding_box(empty) is None
    mask = random_blobs((10, 12, 14), seed=3)
    np.testing.assert_array_equal(dilate_mm(mask, 0, (1, 1, 1)), mask)
    assert bounding_box(np.pad(np.ones((2, 3, 4), bool), 1)) == (slice(1, 3), slice(1, 4), slice(1, 5))
