"""U-SAM point prompts (CARE Table 4): per-class points from a label slice, padding for batches."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from CRCSegmentationLib.usam.prompts import PointPrompts, pad_prompts, sample_points
from OrganGuidanceLib.validation import InputError


def _slice() -> np.ndarray:
    """64 x 80 slice: a normal-rectum ring (1) with a tumor (2) in its wall, background 0."""
    rows, cols = np.mgrid[:64, :80]
    radius = np.hypot(rows - 30, cols - 42)
    label = np.zeros((64, 80), dtype=np.uint8)
    label[(radius <= 16) & (radius >= 6)] = 1
    label[(radius <= 18) & (cols >= 46) & (rows <= 30)] = 2
    return label


def _value_at(label: np.ndarray, xy: np.ndarray) -> np.ndarray:
    cols, rows = xy[:, 0].astype(int), xy[:, 1].astype(int)
    return label[rows, cols]


@pytest.mark.parametrize("seeded", [False, True])
def test_points_per_class_lie_inside_their_class_and_negatives_in_background(seeded):
    label = _slice()
    rng = np.random.default_rng(3) if seeded else None
    prompts = sample_points(label, classes=(1, 2), per_class=3, negatives=2, rng=rng)
    assert prompts.coords_xy.shape == (8, 2) and prompts.coords_xy.dtype == np.float32
    assert prompts.labels.tolist() == [1, 1, 1, 1, 1, 1, 0, 0]  # all class points positive (public U-SAM code)
    values = _value_at(label, prompts.coords_xy).tolist()
    assert values == [1, 1, 1, 2, 2, 2, 0, 0]
    # (x, y) = (column, row): the slice is wider than tall, so a swap would leave the array or the class.
    assert prompts.coords_xy[:, 0].max() < 80 and prompts.coords_xy[:, 1].max() < 64
    # negatives lie next to the foreground, not in a far corner
    distance = ndimage.distance_transform_edt(label == 0)
    assert _value_at(distance, prompts.coords_xy[6:]).max() <= 10.0


def test_deterministic_points_are_repeatable_well_inside_and_spread():
    label = _slice()
    first = sample_points(label, (1, 2), per_class=3, negatives=1)
    second = sample_points(label.copy(), (1, 2), per_class=3, negatives=1)
    np.testing.assert_array_equal(first.coords_xy, second.coords_xy)
    np.testing.assert_array_equal(first.labels, second.labels)
    for value, points in ((1, first.coords_xy[:3]), (2, first.coords_xy[3:6])):
        depth = ndimage.distance_transform_edt(np.pad(label == value, 1))[1:-1, 1:-1]
        assert _value_at(depth, points).min() >= 2.0  # at least 1 px from the class border
        assert len({tuple(p) for p in points.tolist()}) == 3  # three different points
    # the deepest tumor pixel is the first tumor point
    tumor_depth = ndimage.distance_transform_edt(np.pad(label == 2, 1))[1:-1, 1:-1]
    assert _value_at(tumor_depth, first.coords_xy[3:4])[0] == tumor_depth.max()


def test_random_points_differ_between_draws_but_follow_the_seed():
    label = _slice()
    a = sample_points(label, (1, 2), 3, 1, rng=np.random.default_rng(0))
    b = sample_points(label, (1, 2), 3, 1, rng=np.random.default_rng(0))
    c = sample_points(label, (1, 2), 3, 1, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a.coords_xy, b.coords_xy)
    assert not np.array_equal(a.coords_xy, c.coords_xy)


@pytest.mark.parametrize("seeded", [False, True])
def test_empty_class_gets_no_points(seeded):
    label = _slice()
    label[label == 2] = 1  # no tumor on this slice
    rng = np.random.default_rng(0) if seeded else None
    prompts = sample_points(label, (1, 2), per_class=3, negatives=1, rng=rng)
    assert prompts.labels.tolist() == [1, 1, 1, 0]
    assert _value_at(label, prompts.coords_xy).tolist() == [1, 1, 1, 0]
    nothing = sample_points(np.zeros((8, 8), np.uint8), (1, 2), per_class=3, negatives=0, rng=rng)
    assert len(nothing) == 0 and nothing.coords_xy.shape == (0, 2)


def test_thin_and_tiny_classes_still_give_the_requested_count():
    label = np.zeros((20, 20), dtype=np.int64)
    label[5, 3:15] = 1  # one pixel thick: no pixel is 1 px from the border, points stay on the class
    label[12, 12] = 2  # a single pixel: the same point three times
    for rng in (None, np.random.default_rng(0)):
        prompts = sample_points(label, (1, 2), per_class=3, rng=rng)
        assert _value_at(label, prompts.coords_xy).tolist() == [1, 1, 1, 2, 2, 2]
    assert sample_points(label, (1, 2), per_class=0, negatives=0).labels.size == 0


def test_pad_prompts_pads_with_minus_one():
    label = _slice()
    full = sample_points(label, (1, 2), 3, 1)
    label[label == 2] = 0
    partial = sample_points(label, (1, 2), 3, 1)
    coords, labels = pad_prompts([full, partial, PointPrompts()])
    assert coords.shape == (3, 7, 2) and labels.shape == (3, 7)
    assert coords.dtype == np.float32 and labels.dtype == np.int64
    np.testing.assert_array_equal(coords[0], full.coords_xy)
    assert labels[1].tolist() == [1, 1, 1, 0, -1, -1, -1]
    assert labels[2].tolist() == [-1] * 7


def test_bad_inputs_raise_input_error():
    with pytest.raises(InputError, match="2D"):
        sample_points(np.zeros((2, 8, 8)), (1,))
    with pytest.raises(InputError, match="background"):
        sample_points(np.zeros((8, 8)), (0, 1))
    with pytest.raises(InputError, match="per_class"):
        sample_points(np.zeros((8, 8)), (1,), per_class=-1)
    with pytest.raises(InputError, match="integer"):
        sample_points(np.full((8, 8), 0.5), (1,))
    with pytest.raises(InputError, match="empty list"):
        pad_prompts([])
