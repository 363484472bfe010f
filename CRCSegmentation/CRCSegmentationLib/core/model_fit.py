"""Does an input fit the model it is given to? Warnings that say what the model expected and what it got.

The input is still segmented (it may be right, and the user decides), but the result carries the warning
(``TumorSegmentation.warnings``: ``crcseg segment``'s summary, the console, the panel). Refusals stay where
they are: ``check_ct`` / ``mr_checks.check_mr`` refuse what is no CT / no MR at all.

**MR models: the plane of the slices.** RCSegNeXt learns thick-slice volumes with a network that convolves
in-plane along the thick axis (§2.1). nnU-Net keeps one axis order for every input, the training's
(``plans.json`` ``transpose_forward``: the thick axis first), and resamples the input's array axis
``transpose_forward[0]`` to the training's thick spacing. So the network sees the slices the input's storage
gives it: an axial volume given to a model trained on sagittal series reaches it as axial slices (seen on the
demonstration model: a 125 ml "tumor" in 96 pieces on an axial abdominal MR), and a sagittal series stored
with its thick axis elsewhere (reoriented to LPS) has its thick axis resampled to the thin spacing. Which
patient axis the training images' thick axis ran along comes from the bundle (``thick_axis``, format 3),
else from ``dataset.json`` (``crcseg.thick_axis``, written by ``prepare_mr``); a model that records neither
(older bundles, foreign results folders) is checked on the array axis alone (from its plans).

**CT models: the intensity range.** nnU-Net's CT normalisation clips every input to the 0.5th..99.5th
percentile of the training foreground's intensities (``plans.json``
``foreground_intensity_properties_per_channel``) and z-scores it with their mean and standard deviation. A
CT in Hounsfield units has its soft tissue in that range (the structures a model segments are soft tissue);
a CT with its values shifted (a wrong rescale intercept, or one applied twice: -1024) has almost none there,
and one stored without its intercept (+1024) or normalised to 0..1 has no voxel darker than it, where air
lies. Measured (``Testing/test_model_fit.py``), the share of voxels within the demonstration model's range
-444..84 HU (padding outside the field of view left out): the phantom CT 38 %, the real CT of the test data
60 %, the phantom with -3024 padding 54 %, scaled by 0.5 or 2 (no warning) 30..65 %; shifted by -1024 0.2 %,
by +200..+400 2.7..4.1 % (warned); by -600 4.7..6.0 % (the threshold's edge). ``check_ct`` already refuses
+1024 and 0..1 (no air), and organ
guidance's body crop finds no body in the phantom shifted by -1024 (its densest voxel falls below 50 HU): on
those the model's check is not reached.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from CRCSegmentationLib.core.mr_checks import (
    ANISOTROPIC,
    AXIS_WORDS,
    SLICE_PLANES,
    TrainingThickAxis,
    describe_axis,
    patient_axis,
    thick_axis,
)
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.json_files import read_json
from OrganGuidanceLib.validation import InputError, find_ct_padding

MIN_SHARE_IN_RANGE = 0.05  # below this share of voxels within the training range, the values are elsewhere
MIN_SHARE_BELOW_RANGE = 0.005  # a CT has air (and fat) darker than any soft-tissue range: at least this share
AIR_HU = -900.0  # the dark check needs a training range above air; a range reaching down here says nothing
_SAMPLE_SIZE = 2_000_000  # a strided sample keeps the shares cheap on large volumes


class ModelFitError(InputError):
    """A model's own record of what it expects is unreadable; the message names the file."""


@dataclass(frozen=True)
class ModelExpectation:
    """What an nnU-Net model was trained on, as far as its files say."""

    name: str
    modality: str  # "CT" or "MR"
    thick: Optional[TrainingThickAxis]  # the training images' thick axis; None: not recorded
    thick_source: str  # the file it was read from ("" when not recorded)
    network_axis: int  # the input array axis nnU-Net resamples to the training's thick spacing
    network_spacing: Tuple[float, ...]  # the training's median spacing, thick axis first (plans.json)
    ct_range: Optional[Tuple[float, float]]  # CT channel: training foreground's 0.5th..99.5th percentile (HU)

    @property
    def anisotropic(self) -> bool:
        spacing = [s for s in self.network_spacing if s > 0]
        return len(spacing) == 3 and max(spacing) / min(spacing) >= ANISOTROPIC


def _read(path: Path) -> dict:
    return read_json(path, error=ModelFitError)


def _recorded_thick_axis(model) -> Tuple[Optional[TrainingThickAxis], str]:
    """The bundle's ``thick_axis``, else ``dataset.json``'s ``crcseg.thick_axis``, else (None, "")."""
    metadata = getattr(model, "metadata", None)
    if metadata is not None and metadata.thick_axis:  # checked when the bundle was read
        return TrainingThickAxis.from_dict(metadata.thick_axis), "crcseg_model.json"
    path = Path(model.folder) / "dataset.json"
    record = ((_read(path).get("crcseg") or {}) if path.is_file() else {}).get("thick_axis")
    if record is None:
        return None, ""
    try:
        return TrainingThickAxis.from_dict(record), "dataset.json"
    except ValueError as error:
        raise ModelFitError(f"{path}: crcseg.{error}") from error


def _ct_range(plans: dict, channels: List[str]) -> Optional[Tuple[float, float]]:
    if "CT" not in channels:
        return None
    properties = (plans.get("foreground_intensity_properties_per_channel") or {}).get(str(channels.index("CT")))
    try:
        low, high = float(properties["percentile_00_5"]), float(properties["percentile_99_5"])
    except (TypeError, KeyError, ValueError):
        return None  # no statistics (hand-written plans): nothing to compare with
    return (low, high) if np.isfinite(low) and np.isfinite(high) and low < high else None


def model_expectation(model) -> ModelExpectation:
    """What ``model`` (a ``core.model.ModelSource`` of kind ``nnunet``) expects; ``ModelFitError`` naming a bad file."""
    plans = _read(Path(model.folder) / "plans.json")
    thick, source = _recorded_thick_axis(model) if model.modality == "MR" else (None, "")
    forward = plans.get("transpose_forward") or [0, 1, 2]
    spacing = plans.get("original_median_spacing_after_transp") or []
    try:
        network_axis, network_spacing = int(forward[0]), tuple(float(s) for s in spacing)
    except (TypeError, ValueError, IndexError) as error:
        raise ModelFitError(f"{Path(model.folder) / 'plans.json'}: transpose_forward {forward!r} / "
                            f"original_median_spacing_after_transp {spacing!r} are not an axis order and spacings"
                            ) from error
    return ModelExpectation(model.name, model.modality, thick, source, network_axis, network_spacing,
                            _ct_range(plans, list(model.input_channels)))


def fit_warnings(expected: ModelExpectation, image: Image) -> List[str]:
    """The warnings for ``image`` given to the model (none when it fits)."""
    found = thick_axis_warning(expected, image) if expected.modality == "MR" else ct_range_warning(expected, image)
    return [found] if found else []


# --- MR: the plane ---------------------------------------------------------------------------------
def thick_axis_warning(expected: ModelExpectation, image: Image) -> Optional[str]:
    """A warning when the network would see ``image`` in another plane, or with its thick axis resampled thin."""
    if not expected.anisotropic:
        return None  # isotropic training images: no plane to get wrong
    got = thick_axis(image)
    axis = expected.network_axis
    seen = patient_axis(image, axis)  # what nnU-Net makes the thick axis of this volume
    runs = expected.thick.runs if expected.thick is not None else ""
    wrong_plane = bool(runs) and seen != runs
    wrong_storage = got.anisotropy >= ANISOTROPIC and got.array_axis != axis
    if not (wrong_plane or wrong_storage):
        return None
    thick_mm = expected.thick.spacing_mm if expected.thick is not None else max(expected.network_spacing)
    text = f"model '{expected.name}' was trained on volumes whose thick axis ({thick_mm:.3g} mm) "
    text += (f"runs {describe_axis(runs)}, stored as array axis {axis}" if runs else
             f"is stored as array axis {axis} (the patient axis it runs along is not recorded in the model)")
    spacing = image.spacing_zyx
    if got.anisotropy >= ANISOTROPIC:
        text += (f"; this volume's thick axis ({got.spacing_mm:.3g} mm) runs {describe_axis(got.anatomical)}, stored "
                 f"as array axis {got.array_axis}")
    else:
        text += f"; this volume has no thick axis (spacing {' x '.join(f'{s:.3g}' for s in spacing)} mm)"
    if wrong_storage:
        text += (f": nnU-Net keeps the training's axis order, so it resamples this volume's array axis {axis} "
                 f"({AXIS_WORDS[seen]}, {spacing[axis]:.3g} mm) to {thick_mm:.3g} mm and its thick "
                 f"axis to {min(expected.network_spacing):.3g} mm")
    if wrong_plane:
        text += f": the network sees {SLICE_PLANES[seen]} slices where it learnt {SLICE_PLANES[runs]} ones"
    return text + (": expect a wrong result" if wrong_plane else ": expect a degraded result") + (
        f" (store the volume as the training images were: thick axis as array axis {axis})" if wrong_storage else "")


# --- CT: the intensity range -----------------------------------------------------------------------
def _values(image: Image) -> np.ndarray:
    """A strided sample of the voxels, padding outside the field of view left out, as float64."""
    array = image.array
    sample = np.ascontiguousarray(array.ravel()[:: max(1, array.size // _SAMPLE_SIZE)])
    for value in find_ct_padding(array, sample):
        sample = sample[sample != value]
    return sample.astype(np.float64)


def ct_range_warning(expected: ModelExpectation, image: Image) -> Optional[str]:
    """A warning when ``image``'s values lie where no CT the model was trained on has them."""
    if expected.ct_range is None:
        return None
    low, high = expected.ct_range
    values = _values(image)
    if values.size == 0:
        return None
    inside = float(np.mean((values >= low) & (values <= high)))
    below = float(np.mean(values < low))
    p_low, p_high = np.percentile(values, [0.5, 99.5])
    got = f"CT values {p_low:.4g}..{p_high:.4g} (0.5th..99.5th percentile)"
    model = (f"model '{expected.name}' was trained on CTs whose foreground ranged {low:.0f}..{high:.0f} HU "
             "(0.5th..99.5th percentile in its plans.json)")
    if inside < MIN_SHARE_IN_RANGE:
        return (f"{got}: only {100 * inside:.1f} % of the voxels lie within {low:.0f}..{high:.0f} HU, where soft "
                f"tissue lies; {model}: the values look shifted or rescaled (rescale slope/intercept applied twice?): "
                "expect a wrong result")
    if low > AIR_HU and below < MIN_SHARE_BELOW_RANGE:
        return (f"{got}: only {100 * below:.1f} % of the voxels are darker than {low:.0f} HU, where air and fat lie "
                f"on a CT; {model}: the values look like unscaled raw data or a normalised volume (no rescale "
                "slope/intercept?): expect a wrong result")
    return None
