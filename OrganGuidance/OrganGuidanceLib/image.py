"""An image that always travels with its geometry.

Arrays are stored in numpy order ``(z, y, x)`` (what SimpleITK's
``GetArrayFromImage`` returns). Spacing, origin and direction follow ITK's
conventions: ``(x, y, z)`` order, LPS physical space, direction columns are the
physical directions of the x, y and z index axes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence, Tuple, cast

import numpy as np

if TYPE_CHECKING:
    from OrganGuidanceLib.dicom_source import DicomSource

Vector3 = Tuple[float, float, float]
Index3 = Tuple[int, int, int]  # an array shape or voxel index in (z, y, x) order
SUPERIOR_INFERIOR = 2  # the LPS physical axis (x L, y P, z S) along which axial slices follow each other


def _identity() -> np.ndarray:
    return np.eye(3)


@dataclass
class Image:
    """A 3D array with spacing (mm), origin (mm, LPS) and direction (3x3)."""

    array: np.ndarray
    spacing: Vector3 = (1.0, 1.0, 1.0)
    origin: Vector3 = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=_identity)
    name: str = "image"
    # The DICOM series it was read from (io.read_image); images computed from it (masks) carry none
    source: Optional["DicomSource"] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if len(self.spacing) != 3 or len(self.origin) != 3:
            raise ValueError(f"{self.name}: spacing and origin need 3 values, got {self.spacing} and {self.origin}")
        self.spacing = as_tuple3(self.spacing)
        self.origin = as_tuple3(self.origin)
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if any(s <= 0 or not np.isfinite(s) for s in self.spacing):
            raise ValueError(f"{self.name}: spacing must be positive and finite, got {self.spacing}")

    # --- geometry helpers -------------------------------------------------
    @property
    def shape(self) -> Index3:
        # a 3-tuple for every image a computation sees: ``validation.check_image`` refuses the others first
        return cast(Index3, tuple(self.array.shape))

    @property
    def axial_axis(self) -> int:
        """The array axis (of ``array``, ``(z, y, x)``) closest to the patient's superior-inferior axis.

        ``direction`` holds the LPS directions of the x, y, z index axes as columns; the index axis whose
        direction has the largest S component wins (the first of equals), and index axis i is array axis 2 - i.
        For the usual axial LPS/RAS volumes this is array axis 0.
        """
        return 2 - int(np.argmax(np.abs(self.direction[SUPERIOR_INFERIOR])))

    @property
    def spacing_zyx(self) -> Vector3:
        """Spacing in the array's axis order, for scipy/edt calls."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def index_to_physical(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous (x, y, z, 1) indices to LPS mm."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction @ np.diag(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    @property
    def index_to_ras(self) -> np.ndarray:
        """4x4 IJK-to-RAS matrix as MRML volume nodes use (LPS -> RAS flips x and y)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.index_to_physical

    def with_array(self, array: np.ndarray, name: str | None = None) -> "Image":
        """Same grid, new voxels (the array must have this image's shape)."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"{name or self.name}: array shape {array.shape} does not match grid {self.shape}")
        return Image(array, self.spacing, self.origin, self.direction.copy(), name or self.name)

    def same_grid(self, other: "Image", tolerance_mm: float = 1e-3) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=1e-5)
            and np.allclose(self.origin, other.origin, atol=tolerance_mm)
            and np.allclose(self.direction, other.direction, atol=1e-5)
        )

    def physical_corners(self) -> np.ndarray:
        """8 x 3 LPS coordinates of the outer voxel-centre corners."""
        nz, ny, nx = self.shape[:3]
        corners = np.array(
            [[i, j, k, 1.0] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)]
        )
        return (self.index_to_physical @ corners.T).T[:, :3]

    def physical_bounds(self) -> np.ndarray:
        """2 x 3 array: min and max LPS coordinates of voxel centres."""
        corners = self.physical_corners()
        return np.stack([corners.min(axis=0), corners.max(axis=0)])

    def mask_physical_bounds(self, mask: np.ndarray | None = None) -> np.ndarray:
        """2 x 3 LPS bounds of the voxel centres where ``mask`` (default: array) is non-zero."""
        mask = self.array if mask is None else mask
        indices = np.argwhere(mask)
        if indices.size == 0:
            raise ValueError(f"{self.name}: mask is empty, it has no bounds")
        xyz = np.concatenate([indices[:, ::-1], np.ones((len(indices), 1))], axis=1)
        points = (self.index_to_physical @ xyz.T).T[:, :3]
        return np.stack([points.min(axis=0), points.max(axis=0)])


def grid_like(reference: Image, array: np.ndarray, name: str) -> Image:
    """Shortcut for ``reference.with_array(array, name)``."""
    return reference.with_array(array, name)


def as_tuple3(values: Sequence[float]) -> Vector3:
    if len(values) != 3:
        raise ValueError(f"expected 3 values, got {tuple(values)}")
    return float(values[0]), float(values[1]), float(values[2])


def as_index3(values: Sequence[int]) -> Index3:
    """Three integers (a shape, a voxel index, a box corner) as a typed 3-tuple."""
    if len(values) != 3:
        raise ValueError(f"expected 3 integers, got {tuple(values)}")
    return int(values[0]), int(values[1]), int(values[2])
