"""FLARE24's body crop on the real CT: 26- and 6-connected, and it never cuts an organ of the MOS."""
from __future__ import annotations

import numpy as np
import pytest

from OrganGuidanceLib.crop import body_crop_box, body_mask, crop_box_containing
from OrganGuidanceLib.guidance import GuidanceParameters, MOSSource, run_guidance


@pytest.mark.parametrize("connectivity", [26, 6])
def test_the_crop_keeps_every_organ_voxel_for_either_connectivity(ct, organs, ts, connectivity):
    parameters = GuidanceParameters(crop_margin_mm=0.0, body_connectivity=connectivity)  # FLARE24: tight
    result = run_guidance(ct, [MOSSource(organs, ts)], parameters)
    box = result.crop_box
    assert np.count_nonzero(organs.array[box.slices]) == np.count_nonzero(organs.array)
    tight = body_crop_box(ct, parameters.body_threshold_hu, 0.0, connectivity)
    assert all(a <= b for a, b in zip(box.start, tight.start)) and all(a >= b for a, b in zip(box.stop, tight.stop))
    cut = np.count_nonzero(organs.array) - np.count_nonzero(organs.array[tight.slices])
    grown = [w for w in result.warnings if w.startswith("body crop: grown")]
    assert bool(grown) == (cut > 0) and (not grown or f"{cut} organ voxels" in grown[0])
    print(f"connectivity {connectivity}: tight box {tight.shape}, cut {cut} organ voxels, final {box.shape}")


def test_six_connectivity_keeps_a_smaller_or_equal_component(ct):
    six, twenty_six = body_mask(ct, connectivity=6), body_mask(ct, connectivity=26)
    assert six.sum() <= twenty_six.sum() and not (six & ~twenty_six).any()  # every 6-path is a 26-path


def test_growing_the_box_to_an_organ_outside_it(ct):
    box = body_crop_box(ct, 50.0, 0.0)
    outside = np.zeros(ct.shape, np.uint8)
    outside[0, 0, 0] = 1  # a corner voxel, far outside the body
    grown = crop_box_containing(box, outside)
    assert grown.start == (0, 0, 0) and grown.stop == box.stop
    assert crop_box_containing(box, np.zeros(ct.shape, np.uint8)) == box
