"""Tumor statistics a radiologist reads: volume, largest axial diameter, cranio-caudal extent, components.

The mask is taken as the union of its voxel boxes (each voxel a cuboid of its spacing,
centred on its voxel centre), so every measure is the physical size of the voxelised
region; a single voxel has a diameter of its in-plane diagonal, not 0.

* volume: voxel count x voxel volume (ml);
* largest axial diameter: the largest Feret diameter (longest distance between two
  points) of the mask's cross-section, over all axial slices. The Feret diameter of a
  union of boxes is the largest distance between two box corners, and those lie on the
  convex hull of the corners, so it is computed over the hull's vertices (scipy);
* cranio-caudal extent: the extent of the mask along the patient's superior-inferior
  axis (LPS z) in physical space, from the direction matrix: an index axis that is not
  aligned with z (oblique or sagittal acquisitions) is handled;
* components: 26-connected components (cc3d), as in the post-processing.

"Axial slices" are slices along the index axis most aligned with the S-I axis: the
acquisition plane, which is the axial plane of an axial CT.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Tuple

import cc3d
import numpy as np
from scipy.ndimage import binary_erosion

from OrganGuidanceLib.image import Image


@dataclass
class TumorStatistics:
    volume_ml: float
    largest_axial_diameter_mm: float
    craniocaudal_extent_mm: float
    components: int

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)


def _voxel_axes_mm(image: Image) -> np.ndarray:
    """3 x 3: row a is the physical step (LPS mm) of one voxel along array axis a (z, y, x)."""
    steps_xyz = (image.direction @ np.diag(image.spacing)).T  # row k: step along index axis k (x, y, z)
    return steps_xyz[::-1]


def _slice_diameter(points_2d: np.ndarray) -> float:
    """Largest distance between any two of ``points_2d`` (N x 2 mm), via their convex hull."""
    from scipy.spatial import ConvexHull, QhullError

    unique = np.unique(points_2d.round(6), axis=0)
    if len(unique) > 3:
        try:
            unique = unique[ConvexHull(unique).vertices]
        except QhullError:  # collinear points: every point may matter, and they are few
            pass
    differences = unique[:, None, :] - unique[None, :, :]
    return float(np.sqrt((differences**2).sum(-1)).max())


def largest_axial_diameter_mm(mask: np.ndarray, image: Image) -> float:
    """Largest in-plane Feret diameter of the voxel boxes over the axial slices (0 for an empty mask)."""
    axis = image.axial_axis
    steps = _voxel_axes_mm(image)
    in_plane = [a for a in range(3) if a != axis]
    # An orthonormal basis of the slice plane keeps distances exact for sheared grids too.
    basis, _ = np.linalg.qr(steps[in_plane].T)  # 3 x 2
    plane_steps = steps[in_plane] @ basis  # 2 x 2: voxel steps in plane coordinates
    corners = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
    best = 0.0
    for index in np.flatnonzero(np.moveaxis(mask, axis, 0).reshape(mask.shape[axis], -1).any(axis=1)):
        section = np.take(mask, index, axis=axis)
        # Only boundary voxels can hold hull corners; interior ones are dropped to keep the hull small.
        boundary = section & ~binary_erosion(section)
        centres = np.argwhere(boundary).astype(float)
        points = (centres[:, None, :] + corners[None, :, :]).reshape(-1, 2) @ plane_steps
        best = max(best, _slice_diameter(points))
    return best


def craniocaudal_extent_mm(mask: np.ndarray, image: Image) -> float:
    """Extent of the voxel boxes along the S-I (LPS z) axis (0 for an empty mask)."""
    indices = np.argwhere(mask)
    if indices.size == 0:
        return 0.0
    steps = _voxel_axes_mm(image)  # rows: physical step per array axis
    z_per_axis = steps[:, 2]  # S-I component of one voxel step along z, y, x
    # The S-I coordinate is linear in the indices: extremes over the voxel centres, then each end
    # voxel's box reaches half of its S-I thickness (the projection of its three edges) further.
    centres_z = indices @ z_per_axis
    half_box = 0.5 * np.abs(z_per_axis).sum()
    return float(centres_z.max() - centres_z.min() + 2 * half_box)


def tumor_statistics(mask: Image) -> TumorStatistics:
    """Statistics of a binary mask (non-zero = tumor) on its own grid."""
    array = np.asarray(mask.array) > 0
    volume_ml = float(array.sum()) * float(np.prod(mask.spacing)) / 1000.0
    components = int(cc3d.connected_components(array.astype(np.uint8), connectivity=26, return_N=True)[1]) \
        if array.any() else 0
    return TumorStatistics(
        volume_ml=volume_ml,
        largest_axial_diameter_mm=largest_axial_diameter_mm(array, mask) if array.any() else 0.0,
        craniocaudal_extent_mm=craniocaudal_extent_mm(array, mask),
        components=components,
    )


def statistics_rows(statistics: TumorStatistics) -> Tuple[Tuple[str, str, str], ...]:
    """(name, value, unit) rows for a table (the Slicer module's statistics table, the CLI)."""
    return (
        ("Volume", f"{statistics.volume_ml:.2f}", "ml"),
        ("Largest axial diameter", f"{statistics.largest_axial_diameter_mm:.1f}", "mm"),
        ("Cranio-caudal extent", f"{statistics.craniocaudal_extent_mm:.1f}", "mm"),
        ("Components", str(statistics.components), ""),
    )
