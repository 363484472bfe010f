"""Organ guidance on a real CT and TotalSegmentator v2 label map (AG-CRC Alg. 1, §III-D; FLARE24 crop)."""
from __future__ import annotations

import numpy as np
import pytest

from OrganGuidanceLib.crop import body_crop_box, body_mask
from OrganGuidanceLib.guidance import (
    GuidanceParameters,
    MOSSource,
    bowel_wall_mask,
    derive_ooi,
    organ_union,
    resample_label_map,
    run_guidance,
)
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.labels import totalsegmentator_convention, word_convention
from OrganGuidanceLib.morphology import dilate_mm, erode_mm

GI_ORGANS = ("stomach", "duodenum", "small_bowel", "colon")


@pytest.fixture(scope="module")
def real_case(ct, organs):
    return ct, organs


@pytest.fixture(scope="module")
def convention(ts):
    return ts


@pytest.fixture(scope="module")
def result(real_case, convention):
    ct, labels = real_case
    return run_guidance(ct, [MOSSource(labels, convention)], GuidanceParameters())


def test_totalsegmentator_ids_come_from_its_class_map(convention):
    from totalsegmentator.map_to_binary import class_map

    by_name = {name: value for value, name in class_map["total"].items()}
    assert convention.ooi_label_values() == tuple(sorted(by_name[o] for o in GI_ORGANS))
    # No rectum class in TotalSegmentator v2: the rectum is part of the colon.
    assert convention.organ_labels["rectum"] == (by_name["colon"],)


def test_ooi_contains_every_gi_organ_voxel(real_case, convention, result):
    _, labels = real_case
    values = [v for v, name in convention.labels.items() if name in GI_ORGANS]
    gi = np.isin(labels.array, values)
    assert gi.sum() > 10_000
    assert result.ooi.array[gi].all()
    np.testing.assert_array_equal(result.ooi0.array, gi)
    # 5 mm at 3 mm spacing reaches the 6-neighbours (and nothing 2 voxels away along an axis).
    expected = dilate_mm(gi, 5.0, (3.0, 3.0, 3.0))
    np.testing.assert_array_equal(result.ooi.array, expected)
    assert result.ooi.array.sum() > gi.sum()


def test_bowel_wall_is_the_thick_edge_of_ooi0(result):
    ooi0 = result.ooi0.array
    wall = result.bowel_wall.array
    spacing = result.ooi0.spacing_zyx
    width = GuidanceParameters().wall_width_mm
    assert wall.any()
    assert not (wall & ~dilate_mm(ooi0, width, spacing)).any()  # inside dilate(OOI0)
    assert not (wall & erode_mm(ooi0, width, spacing)).any()  # outside erode(OOI0)
    # Every voxel on the OOI0 surface belongs to the wall, on both sides.
    surface = ooi0 & ~erode_mm(ooi0, 1.0, spacing)
    assert wall[surface].all()
    assert (wall & ~ooi0).any() and (wall & ooi0).any()


def test_body_crop_contains_every_organ_and_inverts(real_case, result):
    ct, labels = real_case
    box = result.crop_box
    assert box is not None
    inside = np.zeros(ct.shape, bool)
    inside[box.slices] = True
    assert not (labels.array.astype(bool) & ~inside).any(), "an organ voxel lies outside the body crop"
    assert np.prod(box.shape) < np.prod(ct.shape)
    cropped = box.apply(ct)
    # The cropped image's first voxel is at the same physical point as in the full image.
    start_xyz = [*box.start[::-1], 1.0]
    np.testing.assert_allclose(cropped.origin, (ct.index_to_physical @ start_xyz)[:3])
    restored = box.paste(cropped, ct, fill=-1024)
    assert restored.same_grid(ct)
    np.testing.assert_array_equal(restored.array[box.slices], ct.array[box.slices])
    assert (restored.array[~inside] == -1024).all()
    # A cropped mask pastes back exactly onto the full grid.
    np.testing.assert_array_equal(box.paste(box.apply(result.ooi), ct).array, result.ooi.array)


def test_body_mask_is_one_component_above_50_hu(real_case):
    ct, _ = real_case
    body = body_mask(ct)
    # Independent reference: scipy's 26-connected labelling, largest component.
    from scipy import ndimage

    components, _ = ndimage.label(ct.array > 50, structure=np.ones((3, 3, 3)))
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    np.testing.assert_array_equal(body, components == largest)
    assert body.sum() > 0.05 * ct.array.size
    tight = body_crop_box(ct, margin_mm=0)
    wide = body_crop_box(ct, margin_mm=9)
    assert all(w <= t for w, t in zip(wide.start, tight.start))
    assert all(w >= t for w, t in zip(wide.stop, tight.stop))


def test_label_map_on_another_grid_is_resampled(shared_data):
    ct = read_image(shared_data / "ts_example_ct_dicom", name="dicom CT")
    labels = read_image(shared_data / "ts_example_ct_dicom_seg_total_v2.nii.gz")
    resampled = resample_label_map(labels, ct)
    assert resampled.same_grid(ct)
    # Same physical grid, y axis stored the other way round: nearest neighbour is a pure flip.
    np.testing.assert_array_equal(resampled.array, labels.array[:, ::-1, :])


def test_merge_with_word_source_is_a_union(shared_file):
    """Algorithm 1 line 15: O_final = O_WORD OR O_TS, each source resampled to the CT grid."""
    word_map = read_image(shared_file("word_label_map.nii.gz"), name="word_label_map")
    # A coarser CT-like grid over the same body (as if the WORD map came from another model's grid).
    reference = Image(
        np.zeros((60, 120, 120), np.int16), spacing=(4.0, 4.0, 9.0), origin=word_map.origin,
        direction=word_map.direction, name="reference grid",
    )
    ts = totalsegmentator_convention()
    ts_id = {name: value for value, name in ts.labels.items()}
    # A TotalSegmentator-style source that (wrongly) misses the colon, like Fig. 1(d) of AG-CRC.
    word_to_ts = {5: ts_id["stomach"], 9: ts_id["duodenum"], 11: ts_id["small_bowel"], 1: ts_id["liver"]}
    ts_array = np.zeros(word_map.shape, np.uint8)
    for word_value, ts_value in word_to_ts.items():
        ts_array[word_map.array == word_value] = ts_value
    ts_source = MOSSource(word_map.with_array(ts_array, "TS-style source"), ts)
    word_source = MOSSource(word_map, word_convention())

    ooi0, ooi, maps = derive_ooi([ts_source, word_source], reference, dilation_mm=5.0)
    only_ts = derive_ooi([ts_source], reference, dilation_mm=5.0)[1].array
    only_word = derive_ooi([word_source], reference, dilation_mm=5.0)[1].array
    np.testing.assert_array_equal(ooi.array, only_ts | only_word)
    assert only_word.sum() > only_ts.sum()  # the WORD source brings the colon and rectum
    resampled_word = maps[1].array
    colon_rectum = np.isin(resampled_word, [10, 13])
    assert colon_rectum.any() and ooi.array[colon_rectum].all()
    np.testing.assert_array_equal(
        ooi0.array, organ_union(maps[0].array, ts.ooi_label_values()) | organ_union(resampled_word, [5, 9, 10, 11, 13])
    )


def test_bowel_wall_uses_undilated_ooi(result):
    """AG-CRC footnote 2: the bowel wall comes from OOI0, not from the dilated OOI."""
    direct = bowel_wall_mask(result.ooi0, 3.0)
    np.testing.assert_array_equal(direct.array, result.bowel_wall.array)
    from_dilated = bowel_wall_mask(result.ooi, 3.0)
    assert not np.array_equal(from_dilated.array, result.bowel_wall.array)


def test_bowel_wall_survives_widths_below_the_voxel_spacing(result):
    """A 2 mm wall on 3 mm voxels still marks one voxel on each side of the OOI0 boundary."""
    ooi0 = result.ooi0.array
    thin = bowel_wall_mask(result.ooi0, 2.0).array
    from scipy import ndimage

    cross = ndimage.generate_binary_structure(3, 1)
    edge = ndimage.binary_dilation(ooi0, cross) ^ ndimage.binary_erosion(ooi0, cross, border_value=1)
    np.testing.assert_array_equal(thin, edge)
    assert (thin & ooi0).any() and (thin & ~ooi0).any()
