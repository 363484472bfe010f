"""FLARE24 organ-interference labels (§2.2, Fig. 2) in ``crcseg prepare``: organ pseudo-labels from the
MOS found by name, the tumor painted over them; the label layout in dataset.json and in the exported bundle.

DESIGN.md ("Facts for the three remaining methods"): organs 1..13 from an organ model, tumor 14 painted
over them (tumor wins on overlap); default organs: FLARE22's 13 as TotalSegmentator v2 names.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from CRCSegmentationLib.core.bundle import read_metadata, verify_bundle
from CRCTraining.cli import main as crcseg
from CRCTraining.data.phantoms_ct import make_phantom_dataset
from CRCTraining.data.prepare_ct import (
    PrepareError,
    _organ_setup,
    case_outputs,
    prepare_dataset,
)
from CRCTraining.flare24.labels import (
    FLARE22_ORGANS,
    check_organ_list,
    inference_mos_values,
    match_organs,
    merge_labels,
    organ_voxel_counts,
)
from CRCTraining.nnunet.export import export_bundle, label_roles
from OrganGuidanceLib.guidance import GuidanceParameters
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.labels import word_convention
from OrganGuidanceLib.validation import InputError

CASES = ["colon_001", "colon_002"]


def _ids(ts) -> Dict[str, int]:
    return {name: value for value, name in ts.labels.items()}


def _ball(shape, center, radius_mm: float, spacing_zyx) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    squared = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, center, spacing_zyx))
    return squared <= radius_mm ** 2


def _spacing_zyx(image: Image):
    return tuple(float(s) for s in reversed(image.spacing))


def _expected(mos: np.ndarray, tumor: np.ndarray, organs, ts) -> np.ndarray:
    """The direct computation: organ i (1-based, list order) where the MOS has its TotalSegmentator id, then tumor."""
    expected = np.zeros(mos.shape, dtype=np.uint8)
    for index, name in enumerate(organs, start=1):
        expected[mos == _ids(ts)[name]] = index
    expected[tumor] = len(organs) + 1
    return expected


# --- the organ list and name matching ---------------------------------------------------------
def test_flare22_organs_are_totalsegmentator_v2_class_names(ts):
    from totalsegmentator.map_to_binary import class_map

    assert len(FLARE22_ORGANS) == 13 and len(set(FLARE22_ORGANS)) == 13
    missing = [name for name in FLARE22_ORGANS if name not in class_map["total"].values()]
    assert not missing
    labels = match_organs(ts, FLARE22_ORGANS)
    assert labels.absent == [] and labels.tumor_value == 14  # DESIGN: 15 output classes, tumor 14
    assert labels.source_values == {name: (_ids(ts)[name],) for name in FLARE22_ORGANS}
    assert labels.dataset_labels() == {"background": 0, **{n: i for i, n in enumerate(FLARE22_ORGANS, 1)}, "tumor": 14}


def test_word_names_match_what_word_has_and_leave_the_rest_absent():
    word = word_convention()
    labels = match_organs(word, FLARE22_ORGANS)
    # WORD has no aorta or IVC; its one "adrenal" label covers both glands, so neither side is taken
    assert labels.absent == ["aorta", "inferior_vena_cava", "adrenal_gland_right", "adrenal_gland_left"]
    assert labels.source_values["liver"] == (1,) and labels.source_values["kidney_right"] == (4,)
    assert labels.source_values["kidney_left"] == (3,) and labels.source_values["duodenum"] == (9,)
    assert labels.tumor_value == 14  # absent organs keep their label numbers: the layout never shifts
    assert match_organs(word, ["small_bowel", "bladder"]).source_values == {"small_bowel": (11,), "bladder": (14,)}


def test_rectum_is_absent_in_totalsegmentator_and_a_label_value_goes_to_the_first_organ(ts):
    # TotalSegmentator v2 has no rectum class; for labels it is not stood in for by colon (the OOI does that)
    labels = match_organs(ts, ["colon", "rectum"])
    assert labels.source_values == {"colon": (_ids(ts)["colon"],), "rectum": ()} and labels.absent == ["rectum"]
    with pytest.raises(InputError, match="none of the interference organs"):
        match_organs(ts, ["rectum"])


@pytest.mark.parametrize("organs, message", [
    ([], "at least one"),
    (["liver", "tumor"], "background and tumor"),
    (["kidney_right", "right kidney"], "same organ more than once"),
])
def test_bad_organ_lists_are_refused(organs, message):
    with pytest.raises(InputError, match=message):
        check_organ_list(organs)


# --- the label merge on the real CT's TotalSegmentator map -----------------------------------
def test_merge_on_real_totalsegmentator_map_tumor_wins_and_organs_are_kept(ct, organs, ts):
    mos = organs.array
    ids = _ids(ts)
    liver, colon = mos == ids["liver"], mos == ids["colon"]
    # a synthetic tumor: a 15 mm ball centred on the liver voxel nearest the colon (hepatic flexure)
    from scipy.ndimage import distance_transform_edt

    distance = distance_transform_edt(~colon, sampling=_spacing_zyx(organs))
    center = np.unravel_index(np.argmin(np.where(liver, distance, np.inf)), mos.shape)
    tumor = _ball(mos.shape, center, 15.0, _spacing_zyx(organs))
    assert (tumor & liver).sum() > 20 and (tumor & colon).sum() > 20 and (tumor & (mos == 0)).any()

    for organ_list in (FLARE22_ORGANS, ("colon", *FLARE22_ORGANS)):
        labels = match_organs(ts, organ_list)
        merged = merge_labels(mos, tumor, labels)
        assert merged.dtype == np.uint8 and merged.shape == ct.shape
        assert np.array_equal(merged, _expected(mos, tumor, organ_list, ts))
        assert (merged[tumor] == labels.tumor_value).all()  # tumor wins over liver, colon and background
        for value, name in enumerate(organ_list, start=1):  # every organ kept wherever the tumor is not
            assert np.array_equal(merged == value, (mos == ids[name]) & ~tumor), name
        others = ~np.isin(mos, [ids[n] for n in organ_list]) & ~tumor
        assert not merged[others].any()  # small bowel, bones, ... are background
        counts = organ_voxel_counts(merged, labels)
        assert counts["esophagus"] == 0  # in the list, not in this field of view: the label exists, no voxel
        assert counts["tumor"] == int(tumor.sum()) and set(np.unique(merged)) <= set(labels.dataset_labels().values())
    assert (merged == 1).sum() == (colon & ~tumor).sum()  # colon listed first is label 1


# --- prepare and export on the phantom dataset ------------------------------------------------
@pytest.fixture(scope="module")
def phantom_source(tmp_path_factory) -> Path:
    """A 2-case MSD-layout phantom (TotalSegmentator v2 organ maps in organsTr; tumor inside colon)."""
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom_oi") / "Task99_Phantom", num_cases=2, seed=0)


def _check_labels(folder: Path, source: Path, organ_list, ts) -> dict:
    description = json.loads((folder / "dataset.json").read_text())
    layout = {"background": 0, **{n: i for i, n in enumerate(organ_list, 1)}, "tumor": len(organ_list) + 1}
    assert description["labels"] == layout
    block = description["agcrc"]["organ_interference"]
    assert block["organ_labels"] == list(organ_list) and block["tumor_label"] == "tumor"
    assert block["label_values"] == layout and description["agcrc"]["task"] == "organ_interference"
    assert description["channel_descriptions"] == {"0": "CT", "1": "MOS", "2": "OOI"}  # channels as before
    for case in CASES:
        label = read_image(case_outputs(folder, case)["label"])
        mos = read_image(source / "organsTr" / f"{case}.nii.gz").array
        tumor = read_image(source / "labelsTr" / f"{case}.nii.gz").array > 0
        expected = np.zeros(mos.shape, dtype=np.uint8)
        for value, name in enumerate(organ_list, start=1):
            if name in _ids(ts):
                expected[mos == _ids(ts)[name]] = value
        expected[tumor] = len(organ_list) + 1
        assert np.array_equal(label.array, expected), case
        assert set(np.unique(label.array)) <= set(layout.values())
    return description


def test_prepare_organ_interference_defaults_labels_and_export(phantom_source, tmp_path, ts, capfd):
    raw = tmp_path / "raw"
    report = prepare_dataset(phantom_source, 502, "PhantomOI", raw, organs=phantom_source / "organsTr",
                             labels="organ-interference")
    folder = raw / "Dataset502_PhantomOI"
    assert sorted(report.done) == CASES and not report.failed
    description = _check_labels(folder, phantom_source, FLARE22_ORGANS, ts)
    assert description["agcrc"]["organ_interference"]["absent_in_convention"] == []
    counts = report.statistics["colon_001"]["label_voxels"]
    assert counts["aorta"] > 0 and counts["liver"] == 0 and counts["tumor"] > 0  # a pelvic field of view

    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(folder), num_processes=1)  # nnU-Net accepts the 15-label layout
    printed = capfd.readouterr().out
    assert "verify_dataset_integrity Done" in printed and "Error" not in printed, printed

    # crcseg export: organ_labels from the dataset.json block, tumor_labels ["tumor"]
    assert label_roles(folder, description) == (["tumor"], list(FLARE22_ORGANS))
    model = tmp_path / "results" / "Dataset502_PhantomOI" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    shutil.copy2(folder / "dataset.json", model / "dataset.json")
    (model / "plans.json").write_text("{}")
    # export copies and hashes checkpoints without loading them: untrained bytes suffice for the metadata
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"untrained: export does not load it")
    bundle = export_bundle(model, tmp_path / "bundle")
    verify_bundle(bundle)
    metadata = read_metadata(bundle)
    assert metadata.tumor_labels == ["tumor"] and metadata.organ_labels == list(FLARE22_ORGANS)
    assert metadata.tumor_label_names() == ["tumor"] and metadata.labels == description["labels"]


def test_prepare_command_with_chosen_organs_and_cache_follows_the_label_settings(phantom_source, tmp_path, ts,
                                                                                  capsys):
    work, organs = tmp_path / "work", ["colon", "small_bowel", "aorta", "rectum", "urinary_bladder"]
    argv = ["prepare", str(phantom_source), "--workdir", str(work), "-d", "503", "--name", "PhantomOI",
            "--organs", str(phantom_source / "organsTr"), "--device", "cpu"]
    assert crcseg(argv) == 0  # AG-CRC's tumor labels first
    folder = work / "nnUNet_raw" / "Dataset503_PhantomOI"
    tumor_json = json.loads((folder / "dataset.json").read_text())
    assert tumor_json["labels"] == {"background": 0, "tumor": 1} and "organ_interference" not in tumor_json["agcrc"]
    assert tumor_json["agcrc"]["task"] == "tumor" and label_roles(folder, tumor_json) == (["tumor"], [])

    assert crcseg([*argv, "--labels", "organ-interference", "--interference-organs", *organs]) == 0
    printed = capsys.readouterr().out
    assert "2 prepared, 0 cached" in printed  # the labels settings are hashed: a change recomputes
    assert "absent in every case): rectum" in printed  # TotalSegmentator v2 has no rectum class
    description = _check_labels(folder, phantom_source, organs, ts)
    assert description["agcrc"]["organ_interference"]["absent_in_convention"] == ["rectum"]
    colon = read_image(case_outputs(folder, "colon_001")["label"]).array
    assert (colon == 1).any() and (colon == 6).any()  # the tumor, inside the colon, painted over it
    mos = read_image(case_outputs(folder, "colon_001")["mos"]).array
    assert {0, 3, 4, 6} <= set(np.unique(mos))  # the MOS channel is the compact code, as for tumor labels

    assert crcseg([*argv, "--labels", "organ-interference", "--interference-organs", *organs]) == 0
    assert "0 prepared, 2 cached" in capsys.readouterr().out
    assert crcseg([*argv, "--labels", "organ-interference", "--interference-organs", *organs[:3]]) == 0
    assert "2 prepared, 0 cached" in capsys.readouterr().out
    _check_labels(folder, phantom_source, organs[:3], ts)

    assert crcseg([*argv, "--interference-organs", "liver"]) == 2  # without --labels organ-interference
    assert "--interference-organs needs --labels organ-interference" in capsys.readouterr().err


def test_prepare_refuses_organ_interference_without_tumor_labels(phantom_source, tmp_path):
    organs = phantom_source / "organsTr"
    with pytest.raises(PrepareError, match="need tumor labels"):
        prepare_dataset(phantom_source, 504, "X", tmp_path, organs=organs, labels="organ-interference", ssl=True)
    with pytest.raises(PrepareError, match="choose one of"):
        prepare_dataset(phantom_source, 504, "X", tmp_path, organs=organs, labels="organs")
    assert not list(tmp_path.iterdir())  # refused before anything is written


def test_totalsegmentator_source_also_segments_the_organs_but_the_mos_channel_stays(ts):
    parameters = GuidanceParameters()
    plain, *_ = _organ_setup("totalsegmentator", "totalsegmentator", parameters, "cpu", True)
    provider, convention, settings, folder = _organ_setup("totalsegmentator", "totalsegmentator", parameters,
                                                          "cpu", True, FLARE22_ORGANS)
    assert folder is None and set(FLARE22_ORGANS) <= set(provider.roi_subset)  # TotalSegmentator runs them
    assert set(plain.roi_subset) < set(provider.roi_subset) and settings["roi_subset"] == provider.roi_subset
    kept = inference_mos_values(provider, parameters.organ_set)  # what an inference run's MOS holds
    assert sorted(convention.labels[v] for v in kept) == sorted(plain.roi_subset)
