"""``crcseg demo --points``: simulated clicks as CARE places them, Dice per prompt, one prompt to 3D, the QA picture.

The engine's logic is checked with the ideal stand-in (``GroundTruthSliceModel``: the ground-truth
components under a positive point or in the box) and a disc stand-in that leaves false regions; the
command line with a random small U-SAM checkpoint (every row printed, every file written); the shipped
demonstration model, when present, must reach Dice >= 0.8 with 3 points.
"""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from usam_stand_ins import DiscModel, GroundTruthSliceModel

from CRCSegmentationLib.core.errors import ModelError
from CRCSegmentationLib.demo.points import (
    POINTS_FILES,
    USAM_DEMO_MODEL_NAME,
    points_phantom,
    run_clicks,
    run_points_demo,
)
from CRCSegmentationLib.networks.usam import USAM, USAMConfig
from CRCSegmentationLib.usam.checkpoint import save_usam_checkpoint
from CRCSegmentationLib.usam.refinement import InteractiveSegmenter
from CRCSegmentationLib.usam.simulated_prompts import (
    care_prompts,
    central_slice,
    deepest_pixel,
    false_positive_region,
    ground_truth_box,
    negative_click,
    positive_clicks,
)
from CRCTraining.cli import main as crcseg
from CRCTraining.cli.demo import POINTS_DEMO_THREADS
from OrganGuidanceLib.validation import InputError

ROWS = ["no prompt", "1 point", "3 points", "5 points", "box", "box + 1 point"]


@pytest.fixture(scope="module")
def phantom():
    return points_phantom()


def _disc(shape, centre, radius):
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def test_positive_clicks_and_box_come_from_the_ground_truth():
    truth = _disc((40, 50), (20, 22), 8)
    for count in (1, 3, 5):
        prompt = positive_clicks(truth, count)
        assert len(prompt.labels) == count and set(prompt.labels.tolist()) == {1}
        cols, rows = np.round(prompt.xy).astype(int).T
        assert truth[rows, cols].all()
    assert tuple(positive_clicks(truth, 1).xy[0]) == (22.0, 20.0)  # the deepest pixel first (x = column)
    assert ground_truth_box(truth).box.tolist() == [14.0, 12.0, 30.0, 28.0]  # tight: first/last column and row
    assert [p.name for p in care_prompts(truth)] == ["1 point", "3 points", "5 points", "box", "box + 1 point"]
    with pytest.raises(InputError, match="empty"):
        positive_clicks(np.zeros((8, 8), bool), 1)
    with pytest.raises(InputError, match="empty"):
        ground_truth_box(np.zeros((8, 8), bool))
    stack = np.zeros((9, 40, 50), bool)
    stack[2:7] = truth  # slices 2..6: the middle is 4
    assert central_slice(stack) == 4
    stack[4] = False  # a tumor in two pieces: the largest slice instead of the empty middle
    stack[5, :, :] |= _disc((40, 50), (20, 22), 10)
    assert central_slice(stack) == 5


def test_the_negative_click_lands_deepest_in_the_largest_false_region():
    truth = _disc((60, 60), (20, 20), 6)
    small, large = _disc((60, 60), (50, 10), 2), _disc((60, 60), (40, 45), 7)
    prediction = truth | small | large
    assert np.array_equal(false_positive_region(prediction, truth), large)
    negative = negative_click(prediction, truth)
    assert negative.labels.tolist() == [0] and negative.xy.tolist() == [[45.0, 40.0]]
    assert tuple(deepest_pixel(large)) == (40, 45)
    assert negative_click(truth, truth) is None  # nothing false: no negative click


def test_demo_with_an_ideal_segmenter_scores_every_prompt_and_3d(phantom, tmp_path, capsys):
    model = GroundTruthSliceModel(phantom.ct.array, phantom.tumor.array)
    report = run_points_demo(tmp_path, model=model, write_volumes=False)
    assert [c.prompt.name for c in report.clicks] == ROWS  # an ideal answer leaves no false region to click on
    assert report.dice("no prompt") == 0.0  # the stand-in answers nothing without a prompt
    for name in ROWS[1:]:
        assert report.dice(name) > 0.97, name  # the slice -> input -> slice round trip loses a few pixels
    assert report.metrics_3d.dice > 0.95
    # The propagation stops where the tumor ends (the engine may stop at a last sliver of a slice).
    assert set(report.slices_3d) <= set(report.reference_slices)
    assert len(report.slices_3d) >= len(report.reference_slices) - 2
    assert report.slice_index == central_slice(phantom.tumor.array > 0)
    out = capsys.readouterr().out
    assert all(name in out for name in ROWS) and "one prompt to 3D" in out
    with open(tmp_path / POINTS_FILES["table"]) as stream:
        rows = list(csv.DictReader(stream))
    assert [r["prompt"] for r in rows] == ROWS + ["one prompt to 3D (3 points)"]
    assert float(rows[2]["dice"]) == pytest.approx(report.dice("3 points"), abs=1e-6)
    assert (tmp_path / POINTS_FILES["picture"]).stat().st_size > 20_000


def test_a_negative_click_follows_a_false_region(phantom):
    """A disc larger than the tumor spills over it: the negative click goes into the spill, outside the tumor."""
    tumor = phantom.tumor.array > 0
    k = central_slice(tumor)
    segmenter = InteractiveSegmenter(DiscModel(radius=14.0))
    clicks = run_clicks(segmenter, phantom.ct, k, tumor[k])
    names = [c.prompt.name for c in clicks]
    corrected = next(c for c in clicks if c.prompt.name.endswith("+ 1 negative"))
    worst = next(c for c in clicks if c.prompt.name == corrected.prompt.name.replace(" + 1 negative", ""))
    col, row = np.round(corrected.prompt.xy[-1]).astype(int)
    assert corrected.prompt.labels.tolist()[-1] == 0 and not tumor[k][row, col] and worst.mask[row, col]
    assert names.index(corrected.prompt.name) == 4  # after the point rows, before the box rows


def test_crcseg_demo_points_prints_the_table_and_writes_the_picture(tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = tmp_path / "small.pt"
    save_usam_checkpoint(checkpoint, USAM(USAMConfig.preset("small")))  # random weights: the wiring, not Dice
    assert crcseg(["demo", "--points", "--model", str(checkpoint), "--device", "cpu", "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ROWS) and "one prompt to 3D" in out and str(checkpoint) in out
    for key in ("picture", "table", "text", "ct", "prediction"):
        assert (tmp_path / "out" / POINTS_FILES[key]).is_file(), key
    assert crcseg(["demo", "--points", "--mri", "-o", str(tmp_path / "mri")]) != 0
    assert "--points runs the point-prompt demo" in capsys.readouterr().err


def _shipped_model():
    from CRCSegmentationLib.models.catalogue import find_model

    try:
        find_model(USAM_DEMO_MODEL_NAME)
    except ModelError as error:
        pytest.skip(f"the shipped U-SAM demonstration model {USAM_DEMO_MODEL_NAME} is not in the catalogue ({error})")


def test_shipped_model_demo_reaches_dice_080_with_3_points(tmp_path, capsys):
    _shipped_model()
    torch.set_num_threads(POINTS_DEMO_THREADS)  # as `crcseg demo --points` runs
    report = run_points_demo(tmp_path)
    print(capsys.readouterr().out)  # pytest -s shows the table
    names = [c.prompt.name for c in report.clicks]
    assert all(name in names for name in ROWS)
    assert report.dice("3 points") >= 0.8
    assert sum(report.timings_s.values()) < 60.0
