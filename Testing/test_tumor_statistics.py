"""Tumor statistics against direct numpy computations on known shapes (a cylinder)."""
from __future__ import annotations

import numpy as np
import pytest

from CRCSegmentationLib.measurement.statistics import tumor_statistics
from OrganGuidanceLib.image import Image

SPACING_XYZ = (0.8, 0.7, 2.5)


def cylinder(shape=(30, 64, 64), radius_mm=12.0, slices=(8, 20), spacing=SPACING_XYZ) -> np.ndarray:
    """A cylinder along the array's z axis: voxel centres within ``radius_mm`` of the slice centre."""
    nz, ny, nx = shape
    y = (np.arange(ny) - ny / 2) * spacing[1]
    x = (np.arange(nx) - nx / 2) * spacing[0]
    disc = (y[:, None] ** 2 + x[None, :] ** 2) <= radius_mm**2
    mask = np.zeros(shape, bool)
    mask[slices[0]:slices[1]] = disc
    return mask


def feret_of_voxel_boxes(section: np.ndarray, step_rows_mm: float, step_cols_mm: float) -> float:
    """Brute force: the largest distance between any two corners of the section's voxel boxes."""
    centres = np.argwhere(section).astype(float)
    corners = np.concatenate([centres + [dr, dc] for dr in (-0.5, 0.5) for dc in (-0.5, 0.5)])
    points = corners * [step_rows_mm, step_cols_mm]
    differences = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((differences**2).sum(-1)).max())


def test_cylinder_statistics_match_numpy():
    mask = cylinder()
    image = Image(mask.astype(np.uint8), SPACING_XYZ, (10.0, -5.0, 30.0), np.diag([-1.0, -1.0, 1.0]))
    statistics = tumor_statistics(image)
    voxel_ml = np.prod(SPACING_XYZ) / 1000
    assert statistics.volume_ml == pytest.approx(mask.sum() * voxel_ml)
    expected_diameter = feret_of_voxel_boxes(mask[10], SPACING_XYZ[1], SPACING_XYZ[0])
    assert statistics.largest_axial_diameter_mm == pytest.approx(expected_diameter, rel=1e-9)
    # The voxelised disc of radius 12 mm: its box union reaches 24 mm plus at most one voxel diagonal.
    assert 24.0 <= statistics.largest_axial_diameter_mm <= 24.0 + np.hypot(*SPACING_XYZ[:2])
    assert statistics.craniocaudal_extent_mm == pytest.approx(12 * SPACING_XYZ[2])  # slices 8..19: 12 slices
    assert statistics.components == 1


def test_two_components_and_empty_mask():
    mask = cylinder()
    mask[2:4, 5:8, 5:8] = True  # a separate small blob, far from the cylinder
    statistics = tumor_statistics(Image(mask.astype(np.uint8), SPACING_XYZ))
    assert statistics.components == 2
    assert statistics.craniocaudal_extent_mm == pytest.approx((19 - 2 + 1) * SPACING_XYZ[2])
    empty = tumor_statistics(Image(np.zeros((4, 5, 6), np.uint8)))
    assert (empty.volume_ml, empty.largest_axial_diameter_mm, empty.craniocaudal_extent_mm, empty.components) == (0, 0, 0, 0)


def test_sagittal_grid_uses_the_direction_matrix():
    """Array axis x runs superior-inferior: the cranio-caudal extent is measured along it, not along z."""
    mask = cylinder()  # a cylinder along array axis 0 ...
    # ... on a grid whose index axis z points left-right and index axis x points superior-inferior.
    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # columns: x->S, y->P, z->L
    image = Image(mask.astype(np.uint8), SPACING_XYZ, (0, 0, 0), direction)
    assert image.axial_axis == 2  # axial slices are slices along array axis x
    statistics = tumor_statistics(image)
    columns = np.flatnonzero(mask.any(axis=(0, 1)))
    assert statistics.craniocaudal_extent_mm == pytest.approx((columns[-1] - columns[0] + 1) * SPACING_XYZ[0])
    # Axial sections are rectangles: z (cylinder axis, 2.5 mm) x y (the disc chord, 0.7 mm).
    expected = max(feret_of_voxel_boxes(mask[:, :, c], SPACING_XYZ[2], SPACING_XYZ[1]) for c in columns)
    assert statistics.largest_axial_diameter_mm == pytest.approx(expected, rel=1e-9)


def test_oblique_grid_matches_physical_points():
    """A grid rotated about the S-I axis: the in-plane Feret diameter does not change with the rotation."""
    mask = cylinder()
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    straight = tumor_statistics(Image(mask.astype(np.uint8), SPACING_XYZ))
    rotated = tumor_statistics(Image(mask.astype(np.uint8), SPACING_XYZ, (0, 0, 0), rotation))
    assert rotated.largest_axial_diameter_mm == pytest.approx(straight.largest_axial_diameter_mm)
    assert rotated.craniocaudal_extent_mm == pytest.approx(straight.craniocaudal_extent_mm)
