"""Organ label conventions: TotalSegmentator (from its class map), WORD, user mappings."""
from __future__ import annotations

import json

import pytest

from OrganGuidanceLib.labels import ORGAN_SETS, load_convention, word_convention


def test_word_organs_of_interest():
    word = word_convention()
    # WORD: 5 stomach, 9 duodenum, 10 colon, 11 intestine, 13 rectum (AG-CRC's GI organs)
    assert word.ooi_label_values() == (5, 9, 10, 11, 13)
    assert word.ooi_label_values("colorectum") == (10, 13)
    assert 14 not in word.ooi_label_values()  # the bladder is not an organ of interest


def test_totalsegmentator_aliases():
    for spec in ("totalsegmentator", "total", "TS"):
        assert load_convention(spec).name == "totalsegmentator"


def test_user_mapping_from_json(tmp_path):
    path = tmp_path / "my_model.json"
    path.write_text(json.dumps({"labels": {"1": "Liver", "2": "Small intestine", "3": "Sigmoid colon", "4": "rectum"}}))
    convention = load_convention(str(path))
    assert convention.name == "my_model"
    assert convention.ooi_label_values() == (2, 3, 4)  # names are matched case- and space-insensitively
    path.write_text(json.dumps({"1": "liver", "7": "colon", "8": "rectum"}))
    assert load_convention(str(path)).ooi_label_values("colorectum") == (7, 8)


def test_bad_mappings_are_named(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json.*not valid JSON"):
        load_convention(str(path))
    path.write_text(json.dumps({"liver": 1}))
    with pytest.raises(ValueError, match="keys must be integers"):
        load_convention(str(path))
    path.write_text(json.dumps({"1": "liver"}))
    with pytest.raises(ValueError, match="none of the organs"):
        load_convention(str(path)).ooi_label_values()
    with pytest.raises(ValueError, match="organ set 'no_such_set'"):
        word_convention().ooi_label_values("no_such_set")
    assert set(ORGAN_SETS) == {"gi_tract", "lower_gi", "colorectum"}
