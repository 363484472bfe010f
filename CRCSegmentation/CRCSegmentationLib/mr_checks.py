"""Checks that an input is a plausible MR volume, and which of its axes is the thick one.

An MR model (RCSegNeXt: rectum and rectal tumor on sagittal T2, §3.1) given a CT would
return garbage without a word; a CT in Hounsfield units is easy to tell apart: air is
about -1000 HU, while MR magnitude images are non-negative (a normalised MR, z-scored,
stays within a few units of zero). ``check_mr`` is called by dataset preparation and by
inference; failures raise ``OrganGuidanceLib.validation.InputError`` naming the image.

``thick_axis`` says which array axis has the largest spacing and which patient axis it
runs along: on a sagittal scan that is left-right (the slices), array axis 0 as the
scanner stores it, array axis 2 after a tool reorients the volume to LPS/RAS.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from OrganGuidanceLib.image import Image
from OrganGuidanceLib.validation import InputError, check_3d, check_real_finite

# Below this no MR intensity falls; a CT's air (-1000 HU) and padding (-3024, ...) do.
MR_MIN_PLAUSIBLE = -500.0
CT_AIR_HU = -1000.0
CT_AIR_TOLERANCE_HU = 200.0  # "near -1000": within this of it
_SAMPLE_SIZE = 2_000_000  # a strided sample keeps the share of air voxels cheap on large volumes
ANATOMICAL_AXES = ("L-R", "A-P", "S-I")  # the patient axis of LPS x, y, z


@dataclass(frozen=True)
class ThickAxis:
    """The array axis with the largest spacing, and the patient axis it runs along."""

    array_axis: int  # 0, 1 or 2 in the (z, y, x) array
    spacing_mm: float
    anatomical: str  # "L-R", "A-P" or "S-I"
    anisotropy: float  # largest spacing / smallest spacing

    @property
    def is_sagittal(self) -> bool:
        """Thick slices running left-right, as a sagittal acquisition has them."""
        return self.anatomical == "L-R" and self.anisotropy >= 1.5


def thick_axis(image: Image) -> ThickAxis:
    """Which array axis is the thick one (ties: the first), and along which patient axis it runs."""
    spacing_zyx = np.asarray(image.spacing_zyx, dtype=float)
    array_axis = int(np.argmax(spacing_zyx))
    itk_index = 2 - array_axis  # array (z, y, x) <-> ITK index (k, j, i)
    column = np.abs(np.asarray(image.direction, dtype=float)[:, itk_index])
    return ThickAxis(array_axis, float(spacing_zyx[array_axis]), ANATOMICAL_AXES[int(np.argmax(column))],
                     float(spacing_zyx.max() / spacing_zyx.min()))


def check_mr(image: Image) -> None:
    """Raise ``InputError`` unless ``image`` could be an MR volume: 3D, finite real numbers, not
    constant, and not a CT in Hounsfield units (no value below -500, where CT air lies)."""
    check_3d(image)
    array = image.array
    minimum, maximum = check_real_finite(image, "is not a real intensity type; an MR volume is needed")
    if minimum < MR_MIN_PLAUSIBLE:
        sample = array.ravel()[:: max(1, array.size // _SAMPLE_SIZE)]
        air = float(np.mean(np.abs(sample.astype(np.float64) - CT_AIR_HU) <= CT_AIR_TOLERANCE_HU))
        raise InputError(
            f"{image.name}: intensities {minimum:.0f}..{maximum:.0f} with {100 * air:.0f} % of the voxels near "
            f"{CT_AIR_HU:.0f} (values below {MR_MIN_PLAUSIBLE:.0f} occur in no MR image): looks like a CT in "
            "Hounsfield units, not an MR volume"
        )
