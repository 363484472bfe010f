"""Checks of user inputs; each failure names the input and what is wrong with it."""
from __future__ import annotations

import numpy as np

from .image import Image

# A CT in Hounsfield units has air (about -1000 HU) around or inside the body.
# Below this, the darkest 0.5 % of voxels must fall; MR or PET intensities do not.
CT_AIR_THRESHOLD_HU = -500.0
CT_MAX_PLAUSIBLE_HU = 40000.0  # metal implants can reach tens of thousands
CT_MIN_PLAUSIBLE_HU = -3100.0  # padding values go down to -3024/-3072, not lower


class InputError(ValueError):
    """A user input is unusable; the message names it and says why."""


def check_3d(image: Image) -> None:
    if image.array.ndim != 3:
        raise InputError(f"{image.name}: is {image.array.ndim}D with shape {image.shape}; a 3D volume is needed")
    if min(image.shape) < 2:
        raise InputError(
            f"{image.name}: has shape {image.shape} (z, y, x), a single slice; a 3D volume with several slices is needed"
        )


def check_ct(image: Image) -> None:
    """Raise ``InputError`` unless ``image`` looks like a 3D CT in Hounsfield units."""
    check_3d(image)
    array = image.array
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"{image.name}: voxel type {array.dtype} is not a real number type")
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(f"{image.name}: has {bad} NaN or infinite voxels; fix or mask them before segmentation")
    # A strided sample keeps this check cheap on clinical volumes.
    sample = array.ravel()[:: max(1, array.size // 2_000_000)]
    low, high = np.percentile(sample, [0.5, 99.5])
    minimum, maximum = float(array.min()), float(array.max())
    if minimum == maximum:
        raise InputError(f"{image.name}: every voxel has the value {minimum}; this is not a CT scan")
    if low > CT_AIR_THRESHOLD_HU or minimum < CT_MIN_PLAUSIBLE_HU or maximum > CT_MAX_PLAUSIBLE_HU:
        raise InputError(
            f"{image.name}: intensities {minimum:.0f}..{maximum:.0f} (0.5th percentile {low:.0f}) are not a CT "
            f"in Hounsfield units (expected air near -1000 HU and values within "
            f"{CT_MIN_PLAUSIBLE_HU:.0f}..{CT_MAX_PLAUSIBLE_HU:.0f}); is this an MR/PET image or a rescaled CT?"
        )


def check_label_map(image: Image) -> None:
    check_3d(image)
    array = image.array
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise InputError(f"{image.name}: label map has NaN or infinite voxels")
        if not np.array_equal(array, np.round(array)):
            raise InputError(f"{image.name}: label map has non-integer values; is this an intensity image?")
    elif not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
        raise InputError(f"{image.name}: voxel type {array.dtype} is not a label map type")
    if array.min() < 0:
        raise InputError(f"{image.name}: label map has negative labels (min {array.min()})")


def physical_overlap_fraction(moving: Image, fixed: Image) -> float:
    """Fraction of ``fixed``'s bounding box volume that ``moving``'s bounding box covers."""
    # Half a voxel around voxel centres gives the true extent of each image.
    def extent(image: Image) -> np.ndarray:
        bounds = image.physical_bounds()
        half_voxel = np.abs(image.direction @ np.diag(image.spacing)).sum(axis=1) / 2
        return np.stack([bounds[0] - half_voxel, bounds[1] + half_voxel])

    a, b = extent(moving), extent(fixed)
    lower, upper = np.maximum(a[0], b[0]), np.minimum(a[1], b[1])
    inter = np.prod(np.clip(upper - lower, 0, None))
    return float(inter / np.prod(b[1] - b[0]))
