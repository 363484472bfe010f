"""The shipped U-SAM demonstration model (``demo_usam_phantom``) on held-out phantoms: clicks, boxes, negatives.

Held-out: CT phantoms of ``CRCTraining.data.phantoms_ct`` with seed ``HELD_OUT_SEED`` (the model was trained
on seed ``TRAIN_SEED`` of scripts/train_usam_demo_model.py), their rectum slices with look-alikes painted in
(``phantom_prompts``: blobs with the tumor's CT numbers that are not tumor), the slices with a tumor of at
least ``prompt_check.MIN_TUMOR_PX`` pixels. Points as CARE's evaluation places them (sampled at random from
the ground truth, ``prompt_check.DRAWS`` seeded draws per slice), the tight box as SAM evaluates boxes.
``pytest -s`` prints the table.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from CRCSegmentationLib.models.catalogue import fetch_model, find_model, list_models
from CRCSegmentationLib.models.usam import load_usam_model, usam_catalogue_names
from CRCTraining.usam.phantom_prompts import extract_lookalike_slices
from CRCTraining.usam.prompt_check import check_prompts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from train_usam_demo_model import NAME, TRAIN_SEED  # noqa: E402 - the script names the model and its seed

HELD_OUT_SEED = 4242
HELD_OUT_CASES = 4


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    assert HELD_OUT_SEED != TRAIN_SEED
    torch.set_num_threads(1)
    torch.manual_seed(0)
    slices = extract_lookalike_slices(tmp_path_factory.mktemp("held_out") / "slices", HELD_OUT_CASES,
                                      seed=HELD_OUT_SEED)
    result = check_prompts(load_usam_model(NAME), slices)
    print(f"\nU-SAM demonstration model on {HELD_OUT_CASES} held-out phantoms (seed {HELD_OUT_SEED}), tumor Dice:")
    print(result.table())
    return result


def test_the_catalogue_ships_it_as_a_usam_demonstration_model():
    entry = find_model(NAME)
    assert entry.demonstration and entry.extra["kind"] == "usam" and "not for clinical use" in entry.description
    assert NAME in usam_catalogue_names() and NAME in [e.name for e in list_models()]
    model = load_usam_model(NAME)
    assert model.config.vit_depth == 2 and model.config.image_size == 128 and not model.training
    folder = fetch_model(NAME)
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 11e6  # a few MB, shipped in git


def test_dice_rises_with_the_number_of_points(check):
    """Dice rises with every step 0 -> 1 -> 3 -> 5 points (0.59, 0.84, 0.88, 0.89 when written); the step from
    3 to 5 is the smallest, as in CARE's Table 4, where 5 points gave nothing over 3."""
    dice = {k: check.mean(f"{k} points") for k in (0, 1, 3, 5)}
    assert dice[0] < dice[1] < dice[3] < dice[5], dice
    assert dice[3] - dice[1] >= 0.02, dice
    assert dice[3] >= 0.8, dice


def test_a_box_alone_finds_the_tumor(check):
    assert check.mean("box") >= 0.8
    assert check.mean("box + 1 point") >= 0.8


def test_a_negative_click_removes_a_false_region(check):
    """The constructed case: one click on the tumor and a box drawn too large, around a look-alike blob
    too, which the model then takes in; a negative click on the blob removes it (less than 20 % stays).

    The table also counts the false regions one click alone leaves (printed, not asserted: about a third
    of those go with one negative click)."""
    assert check.loose_box_regions >= 10, check.table()
    assert check.loose_box_removed >= 0.8 * check.loose_box_regions, check.table()
