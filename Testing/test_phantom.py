"""The synthetic phantom: TotalSegmentator v2 labels, a rectal tumor in the colon wall, plausible HU,
and organ guidance on it covering the tumor."""
from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage
from totalsegmentator.map_to_binary import class_map

from OrganGuidanceLib.guidance import GuidanceParameters, MOSSource, run_guidance
from OrganGuidanceLib.labels import totalsegmentator_convention
from OrganGuidanceLib.phantom import Phantom, make_abdominal_phantom

TS_IDS = {name: value for value, name in class_map["total"].items()}


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_abdominal_phantom()


def _centroid_lps(image, mask: np.ndarray) -> np.ndarray:
    zyx = np.argwhere(mask).mean(axis=0)
    return (image.index_to_physical @ np.array([*zyx[::-1], 1.0]))[:3]


def test_types_geometry_and_speed():
    start = time.perf_counter()
    phantom = make_abdominal_phantom(seed=3)
    assert time.perf_counter() - start < 2.0
    assert phantom.ct.array.dtype == np.int16 and phantom.labels.array.dtype == np.uint8
    assert phantom.tumor.array.dtype == np.uint8 and set(np.unique(phantom.tumor.array)) == {0, 1}
    assert phantom.ct.shape == (64, 128, 128)
    assert phantom.labels.same_grid(phantom.ct) and phantom.tumor.same_grid(phantom.ct)


def test_labels_are_totalsegmentator_v2_names(phantom):
    present = {int(v) for v in np.unique(phantom.labels.array) if v}
    assert present == set(phantom.label_names)
    for value, name in phantom.label_names.items():
        assert class_map["total"][value] == name
    for name in ("stomach", "duodenum", "small_bowel", "colon", "urinary_bladder", "sacrum", "vertebrae_L3"):
        assert TS_IDS[name] in present, name
    assert "rectum" not in phantom.label_names.values()  # v2 has no rectum class: it is part of colon


def test_tumor_lies_in_the_rectal_wall_next_to_the_lumen(phantom):
    tumor = phantom.tumor.array > 0
    labels, ct = phantom.labels.array, phantom.ct.array
    voxel_ml = np.prod(phantom.ct.spacing) / 1000
    assert 10 < tumor.sum() * voxel_ml < 60  # AG-CRC RJH-Colon: median tumor 32 cm3
    assert (labels[tumor] == TS_IDS["colon"]).all()
    slices = np.flatnonzero(tumor.any(axis=(1, 2)))
    assert len(slices) >= 5  # "over several slices"
    # Next to the rectal lumen: gas inside the colon label touches the tumor.
    lumen = (labels == TS_IDS["colon"]) & (ct < -500)
    assert (ndimage.binary_dilation(tumor) & lumen).any()
    # In the rectum: below the sacral promontory, behind the bladder.
    tumor_lps = _centroid_lps(phantom.ct, tumor)
    bladder_lps = _centroid_lps(phantom.ct, labels == TS_IDS["urinary_bladder"])
    promontory_z = _centroid_lps(phantom.ct, labels == TS_IDS["vertebrae_L5"])[2]
    assert tumor_lps[1] > bladder_lps[1] and tumor_lps[2] < promontory_z
    hu = ct[tumor]
    assert 45 < np.median(hu) < 75  # soft tissue, a little denser than the 40 HU wall
    assert ((hu > -20) & (hu < 140)).mean() > 0.8  # the rest: partial volume with the gas lumen


def test_hounsfield_units_are_plausible(phantom):
    ct, labels = phantom.ct.array.astype(float), phantom.labels.array

    def median(name):
        return np.median(ct[labels == TS_IDS[name]])

    corner = ct[:, :8, :8]
    assert abs(corner.mean() + 1000) < 5 and 6 < corner.std() < 14  # air, ~10 HU noise
    assert -10 < median("urinary_bladder") < 30
    assert 80 < median("liver") < 130
    assert 200 < median("vertebrae_L3") < 800
    stomach = ct[labels == TS_IDS["stomach"]]
    assert (stomach < -800).mean() > 0.1 and (stomach > 150).mean() > 0.1  # air-fluid level
    # Subcutaneous fat just inside the skin on the anterior midline.
    column = ct[:, :, 64].mean(axis=0)
    first_body = int(np.argmax(column > -500))
    assert -130 < column[first_body + 3: first_body + 6].mean() < -70
    assert ct.min() >= -1024 and ct.max() <= 3071


def test_seed_changes_the_patient_but_repeats_exactly():
    a, b, c = make_abdominal_phantom(seed=1), make_abdominal_phantom(seed=1), make_abdominal_phantom(seed=2)
    assert np.array_equal(a.ct.array, b.ct.array) and np.array_equal(a.labels.array, b.labels.array)
    assert not np.array_equal(a.labels.array, c.labels.array)


def test_flipped_direction_keeps_the_anatomy_in_place(phantom):
    flipped = make_abdominal_phantom(direction=np.diag([-1.0, -1.0, 1.0]))
    assert np.array_equal(flipped.labels.array, phantom.labels.array[:, ::-1, ::-1])
    assert np.allclose(flipped.ct.physical_bounds(), phantom.ct.physical_bounds())
    labels = flipped.labels.array
    stomach = _centroid_lps(flipped.ct, labels == TS_IDS["stomach"])
    liver = _centroid_lps(flipped.ct, labels == TS_IDS["liver"])
    spine = _centroid_lps(flipped.ct, labels == TS_IDS["vertebrae_L3"])
    bladder = _centroid_lps(flipped.ct, labels == TS_IDS["urinary_bladder"])
    assert stomach[0] > spine[0] > liver[0]  # LPS x grows to the patient's left
    assert bladder[1] < spine[1]  # anterior has smaller y
    assert stomach[2] > bladder[2]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="diagonal"):
        make_abdominal_phantom(direction=np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]]))
    with pytest.raises(ValueError, match="rectal tumor"):
        make_abdominal_phantom(shape_zyx=(8, 64, 64))  # the field of view stops above the pelvis


def test_guidance_covers_the_tumor_and_crops_the_table(phantom):
    result = run_guidance(phantom.ct, [MOSSource(phantom.labels, totalsegmentator_convention())], GuidanceParameters())
    tumor = phantom.tumor.array > 0
    assert result.ooi.array[tumor].all()
    assert (result.bowel_wall.array & tumor).any()
    names = set(result.organ_names.values())
    assert {"stomach", "duodenum", "small_bowel", "colon"} <= names
    ooi0 = result.ooi0.array
    assert not ooi0[phantom.labels.array == TS_IDS["liver"]].any()  # only GI organs make the OOI
    box = result.crop_box
    assert box is not None and np.prod(box.shape) < 0.8 * np.prod(box.full_shape)
    table_row = int(np.argmax((phantom.ct.array[:, :, 5] > 100).any(axis=0)))  # table spans the whole width
    assert box.stop[1] <= table_row  # FLARE24: the largest component is the body, not the table
