"""Checks of user inputs; each failure names the input and what is wrong with it."""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from OrganGuidanceLib.image import Image

# A CT in Hounsfield units has air (about -1000 HU) around or inside the body.
# Below this, the darkest 0.5 % of voxels must fall; MR or PET intensities do not.
CT_AIR_THRESHOLD_HU = -500.0
CT_MAX_PLAUSIBLE_HU = 40000.0  # metal implants can reach tens of thousands
CT_MIN_PLAUSIBLE_HU = -3100.0  # the darkest real voxel (air, noise, reconstruction undershoot) lies above this

# Padding outside the reconstructed field of view (FOV). Scanners reconstruct a circle per axial slice and
# write one fixed value into the rest (DICOM Pixel Padding Value, 0028,0120; readers and converters that do
# not apply it leave it in the image). The values we follow, in HU after the rescale (which vendor writes
# which varies with scanner model and software version):
#   -3024   GE (stored -2000 with rescale intercept -1024), also seen on Canon/Toshiba: the most common one
#   -3072, -2048   seen on some Siemens and Philips series
#   -8192, -32768  converters and archives that fill with a sentinel or the int16 minimum
#   -1024   scanners that write the outside as air: it equals air, so it stays in and disturbs no check.
# Besides these, any single value below air (< -1024) that fills the region outside a circle in every
# axial slice (array axis 0) is padding too, whatever its value.
CT_PADDING_VALUES_HU = (-2048.0, -3024.0, -3072.0, -8192.0, -32768.0)
CT_PADDING_MIN_FRACTION = 0.01  # a typical padding value counts as padding when it fills this much of the volume
CT_MIN_IMAGE_FRACTION = 0.01  # with padding excluded, at least this much of the volume must be left
_SAMPLE_SIZE = 2_000_000  # a strided sample keeps the intensity checks cheap on clinical volumes
_FOV_SLICES = 8  # axial slices on which a candidate padding value is checked against a circular FOV


class InputError(ValueError):
    """A user input is unusable; the message names it and says why."""


def failure_message(error: Exception) -> str:
    """A failed case's line: an ``InputError``'s own message (it names the input); any other error with its type,
    as it is unexpected."""
    return str(error) if isinstance(error, InputError) else f"{type(error).__name__}: {error}"


def check_3d(image: Image) -> None:
    if image.array.ndim != 3:
        raise InputError(f"{image.name}: is {image.array.ndim}D with shape {image.shape}; a 3D volume is needed")
    if min(image.shape) < 2:
        raise InputError(
            f"{image.name}: has shape {image.shape} (z, y, x), a single slice; a 3D volume with several slices is needed"
        )


def check_real_finite(image: Image, wrong_type: str = "is not a real number type",
                      no_image: str = "there is no image to segment",
                      padding_values: Sequence[float] = ()) -> Tuple[float, float]:
    """Raise ``InputError`` unless the voxels are finite real numbers, not all one value; return (min, max).

    The common ground of the intensity checks (``check_ct``, ``CRCSegmentationLib.core.mr_checks.check_mr``):
    ``wrong_type`` and ``no_image`` end their messages; a constant value among ``padding_values`` is named
    as scanner padding.
    """
    array = image.array
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"{image.name}: voxel type {array.dtype} {wrong_type}")
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(f"{image.name}: has {bad} NaN or infinite voxels; fix or mask them before segmentation")
    minimum, maximum = float(array.min()), float(array.max())
    if minimum == maximum:
        note = " (a padding value scanners write outside the field of view)" if minimum in padding_values else ""
        raise InputError(f"{image.name}: every voxel has the value {minimum:g}{note}; {no_image}")
    return minimum, maximum


def _as_dtype(array: np.ndarray, value: float):
    """``value`` in ``array``'s type, or None when that type cannot hold it (no padding of that value then)."""
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        if not info.min <= value <= info.max:
            return None
    return array.dtype.type(value)


def _fills_outside_circle(array: np.ndarray, value, corners: np.ndarray) -> bool:
    """True when ``value`` fills the outside of a circle (and little inside it) on most axial slices.

    The circle is fitted to the border between ``value`` and the rest of the slice; it may be off-centre
    and reach beyond the slice (then only the corners are padding).
    """
    padded_slices = np.flatnonzero((corners == value).any(axis=(1, 2)))  # slices without it may have a wider FOV
    if padded_slices.size == 0:
        return False
    picks = np.linspace(0, padded_slices.size - 1, min(_FOV_SLICES, padded_slices.size)).astype(int)
    chosen = padded_slices[picks]
    ny, nx = array.shape[1:]
    yy, xx = np.ogrid[:ny, :nx]
    tested = passed = 0
    for index in chosen:
        pad = array[index] == value
        if pad.all():
            continue  # a slice wholly outside the FOV (e.g. after resampling): consistent with padding
        tested += 1
        inner = pad[1:-1, 1:-1]
        border = inner & ~(pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:])
        ys, xs = np.nonzero(border)
        if ys.size < 16:
            continue
        ys, xs = ys + 1.0, xs + 1.0
        # Algebraic (Kasa) circle fit: x^2 + y^2 = a x + b y + c.
        design = np.stack([xs, ys, np.ones_like(xs)], axis=1)
        (a, b, c), *_ = np.linalg.lstsq(design, xs * xs + ys * ys, rcond=None)
        cx, cy = a / 2, b / 2
        radius_sq = c + cx * cx + cy * cy
        if radius_sq <= 0:
            continue
        radius = float(np.sqrt(radius_sq))
        if radius < 0.25 * min(ny, nx):
            continue
        tolerance = max(2.0, 0.02 * radius)
        distance_sq = (xx - cx) ** 2 + (yy - cy) ** 2
        inside = distance_sq < (radius - tolerance) ** 2
        outside = distance_sq > (radius + tolerance) ** 2
        if not outside.any() or not inside.any():
            continue
        # Outside the circle: padding; inside: (almost) none of it, as real voxels never equal one value.
        if np.count_nonzero(pad & outside) >= 0.98 * np.count_nonzero(outside) and (
            np.count_nonzero(pad & inside) <= 0.01 * np.count_nonzero(inside)
        ):
            passed += 1
    return tested > 0 and passed >= 0.75 * tested


def _sample(array: np.ndarray) -> np.ndarray:
    # Contiguous: every later pass over it then touches 2 million values, not the whole volume's memory.
    return np.ascontiguousarray(array.ravel()[:: max(1, array.size // _SAMPLE_SIZE)])


def _extremes_without(array: np.ndarray, padding: list, minimum: float, maximum: float):
    """Exact minimum and maximum of ``array`` without the ``padding`` values: one masked pass."""
    valid = array != padding[0]
    for value in padding[1:]:
        valid &= array != value
    if minimum in padding:
        minimum = float(np.min(array, where=valid, initial=maximum))
    if maximum in padding:
        maximum = float(np.max(array, where=valid, initial=minimum))
    return minimum, maximum


def find_ct_padding(array: np.ndarray, sample: np.ndarray | None = None) -> list:
    """Values that fill the outside of the scanner's field of view (see ``CT_PADDING_VALUES_HU``)."""
    if array.ndim != 3 or array.size == 0:
        return []
    if sample is None:
        sample = _sample(array)
    padding = []
    below_air = sample[sample < -1024]  # one pass over the sample; the typical values are counted among these
    for typical in CT_PADDING_VALUES_HU:
        value = _as_dtype(array, typical)
        if value is not None and np.count_nonzero(below_air == value) >= CT_PADDING_MIN_FRACTION * sample.size:
            padding.append(value)
    # The value in the slice corners, when below air, is padding if it fills the outside of a circular FOV.
    corners = array[:, [0, -1]][:, :, [0, -1]]
    values, counts = np.unique(corners, return_counts=True)
    value = values[np.argmax(counts)]
    if value < -1024 and value not in padding and _fills_outside_circle(array, value, corners):
        padding.append(value)
    return padding


def check_ct(image: Image) -> None:
    """Raise ``InputError`` unless ``image`` looks like a 3D CT in Hounsfield units.

    Padding outside the field of view (``find_ct_padding``) is left out; the rest must look like a CT.
    """
    check_3d(image)
    array = image.array
    minimum, maximum = check_real_finite(image, no_image="there is no image: this is not a CT scan",
                                         padding_values=CT_PADDING_VALUES_HU)
    sample = _sample(array)
    padding = find_ct_padding(array, sample)
    excluded, exact = "", True
    if padding:
        kept = sample != padding[0]
        for value in padding[1:]:
            kept &= sample != value
        sample = sample[kept]
        padded = 1.0 - sample.size / kept.size
        values = ", ".join(f"{float(value):g}" for value in padding)
        if sample.size < CT_MIN_IMAGE_FRACTION * kept.size:
            raise InputError(
                f"{image.name}: {np.floor(1000 * padded) / 10:.1f} % of the voxels are padding outside the scanner's "
                f"field of view (value {values}); too little image is left: this is not a CT scan to segment"
            )
        excluded = f"; {100 * padded:.0f} % padding outside the field of view (value {values}) left out"
        # The rest's exact extremes cost a masked pass over the volume: only done where they can change the
        # verdict (padding outside the plausible range, e.g. -8192; or a constant-looking rest) or are reported.
        # Padding within the range (e.g. -3024) bounds the rest's extreme and cannot turn the verdict.
        exact = not (minimum in padding or maximum in padding)
        if (
            (minimum in padding and minimum < CT_MIN_PLAUSIBLE_HU)
            or (maximum in padding and maximum > CT_MAX_PLAUSIBLE_HU)
            or sample.min() == sample.max()
        ):
            minimum, maximum = _extremes_without(array, padding, minimum, maximum)
            exact = True
        if minimum == maximum:
            raise InputError(
                f"{image.name}: apart from padding (value {values}) every voxel has the value {minimum:g}; "
                "this is not a CT scan"
            )
    low = float(np.percentile(sample, 0.5))
    if low > CT_AIR_THRESHOLD_HU or minimum < CT_MIN_PLAUSIBLE_HU or maximum > CT_MAX_PLAUSIBLE_HU:
        if not exact:
            minimum, maximum = _extremes_without(array, padding, minimum, maximum)
        hint, filled = "", np.count_nonzero(sample == minimum) / sample.size
        if minimum < CT_MIN_PLAUSIBLE_HU and filled >= CT_PADDING_MIN_FRACTION:
            hint = (f"; the value {minimum:g} fills {100 * filled:.0f} % of the voxels but not as padding outside a "
                    "circular field of view: if it is padding, set it to -1024")
        raise InputError(
            f"{image.name}: intensities {minimum:.0f}..{maximum:.0f} (0.5th percentile {low:.0f}{excluded}) are not "
            f"a CT in Hounsfield units (expected air near -1000 HU and values within "
            f"{CT_MIN_PLAUSIBLE_HU:.0f}..{CT_MAX_PLAUSIBLE_HU:.0f}); is this an MR/PET image or a rescaled CT?{hint}"
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
