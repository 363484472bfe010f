"""Checks that an input is a plausible MR volume, and which of its axes is the thick one.

An MR model (RCSegNeXt: rectum and rectal tumor on sagittal T2, §3.1) given a CT would
return garbage without a word; a CT in Hounsfield units is easy to tell apart: air is
about -1000 HU, while MR magnitude images are non-negative (a normalised MR, z-scored,
stays within a few units of zero). ``check_mr`` is called by dataset preparation and by
inference; failures raise ``OrganGuidanceLib.validation.InputError`` naming the image.

``thick_axis`` says which array axis has the largest spacing and which patient axis it
runs along: on a sagittal scan that is left-right (the slices), array axis 0 as the
scanner stores it, array axis 2 after a tool reorients the volume to LPS/RAS.

``TrainingThickAxis`` is what an MR model records of its training images' thick axis
(``prepare_mr`` writes it into ``dataset.json``, ``crcseg export`` into the bundle's
``crcseg_model.json``), so that an input sliced in another plane can be told apart
(``model_fit``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import numpy as np

from OrganGuidanceLib.image import Image
from OrganGuidanceLib.validation import InputError, check_3d, check_real_finite

# Below this no MR intensity falls; a CT's air (-1000 HU) and padding (-3024, ...) do.
MR_MIN_PLAUSIBLE = -500.0
CT_AIR_HU = -1000.0
CT_AIR_TOLERANCE_HU = 200.0  # "near -1000": within this of it
_SAMPLE_SIZE = 2_000_000  # a strided sample keeps the share of air voxels cheap on large volumes
ANATOMICAL_AXES = ("L-R", "A-P", "S-I")  # the patient axis of LPS x, y, z
# What a user calls the slices that are thin along the other two axes (the plane perpendicular to the thick axis).
SLICE_PLANES = {"L-R": "sagittal", "A-P": "coronal", "S-I": "axial"}
AXIS_WORDS = {"L-R": "left-right", "A-P": "anterior-posterior", "S-I": "superior-inferior"}
ANISOTROPIC = 1.5  # largest / smallest spacing from which a volume has a thick axis (ThickAxis.is_sagittal)


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
        return self.anatomical == "L-R" and self.anisotropy >= ANISOTROPIC


def patient_axis(image: Image, array_axis: int) -> str:
    """The patient axis ("L-R", "A-P" or "S-I") that array axis ``array_axis`` (of z, y, x) runs along most."""
    itk_index = 2 - array_axis  # array (z, y, x) <-> ITK index (k, j, i)
    column = np.abs(np.asarray(image.direction, dtype=float)[:, itk_index])
    return ANATOMICAL_AXES[int(np.argmax(column))]


def thick_axis(image: Image) -> ThickAxis:
    """Which array axis is the thick one (ties: the first), and along which patient axis it runs."""
    spacing_zyx = np.asarray(image.spacing_zyx, dtype=float)
    array_axis = int(np.argmax(spacing_zyx))
    return ThickAxis(array_axis, float(spacing_zyx[array_axis]), patient_axis(image, array_axis),
                     float(spacing_zyx.max() / spacing_zyx.min()))


def describe_axis(anatomical: str) -> str:
    """``"left-right (sagittal slices)"``: the axis and the slices it makes, for messages."""
    return f"{AXIS_WORDS[anatomical]} ({SLICE_PLANES[anatomical]} slices)"


@dataclass(frozen=True)
class TrainingThickAxis:
    """The thick axis of an MR model's training images: the patient axis most of them had it along.

    ``runs`` is "" when the training images had no thick axis (median anisotropy below ``ANISOTROPIC``).
    ``cases`` counts the anisotropic training images per patient axis (a mixed dataset shows here).
    Stored as a JSON object (``to_dict``) in ``dataset.json``'s ``crcseg`` block and in the bundle metadata.
    """

    runs: str  # "L-R", "A-P", "S-I", or "" (isotropic training images)
    spacing_mm: float  # median thick spacing of the training images
    anisotropy: float  # median largest / smallest spacing
    cases: Dict[str, int] = field(default_factory=dict)  # patient axis -> anisotropic images with it thick

    def to_dict(self) -> dict:
        return {"runs": self.runs, "spacing_mm": round(self.spacing_mm, 4), "anisotropy": round(self.anisotropy, 3),
                "cases": dict(self.cases)}

    @classmethod
    def from_dict(cls, data: object) -> "TrainingThickAxis":
        """The record read back; ``ValueError`` saying which entry is wrong (the caller names the file)."""
        if not isinstance(data, dict):
            raise ValueError(f"thick_axis must be a JSON object, not {type(data).__name__}")
        runs = data.get("runs", "")
        if runs not in (*ANATOMICAL_AXES, ""):
            raise ValueError(f"thick_axis.runs {runs!r} is not one of {list(ANATOMICAL_AXES)} (or \"\")")
        numbers = {}
        for key in ("spacing_mm", "anisotropy"):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
                raise ValueError(f"thick_axis.{key} {value!r} is not a positive number")
            numbers[key] = float(value)
        cases = data.get("cases", {})
        if not isinstance(cases, dict) or any(k not in ANATOMICAL_AXES or isinstance(v, bool) or not isinstance(v, int)
                                              or v < 0 for k, v in cases.items()):
            raise ValueError(f"thick_axis.cases {cases!r} must map {list(ANATOMICAL_AXES)} to case counts")
        return cls(runs, numbers["spacing_mm"], numbers["anisotropy"], dict(cases))


def training_thick_axis(axes: Sequence[ThickAxis]) -> Optional[TrainingThickAxis]:
    """The record of a training set from its images' ``thick_axis``; None for no images."""
    if not axes:
        return None
    anisotropy = float(np.median([a.anisotropy for a in axes]))
    counts = Counter(a.anatomical for a in axes if a.anisotropy >= ANISOTROPIC)
    runs = counts.most_common(1)[0][0] if counts and anisotropy >= ANISOTROPIC else ""
    return TrainingThickAxis(runs, float(np.median([a.spacing_mm for a in axes])), anisotropy,
                             {axis: counts[axis] for axis in ANATOMICAL_AXES if counts[axis]})


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
