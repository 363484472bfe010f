"""The rules every training input follows: one JSON reader, one folder listing and pairing, options named.

Real files written to tmp (tiny label maps, JSON as editors and interrupted copies leave it, a classifier-only
HCF bundle); the fault catalogue (``faults_training.py``) runs the same rules through ``crcseg``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from CRCSegmentationLib.core.errors import ModelError
from OrganGuidanceLib.case_folders import (
    files_by_case,
    image_files,
    image_stem,
    is_empty_of_visible,
    name_list,
    pair_images_and_labels,
    visible_files,
)
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import write_image
from OrganGuidanceLib.json_files import json_field, read_json
from OrganGuidanceLib.validation import InputError

MAC_FORK = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X"


def _label_map(path, value: int = 1) -> None:
    array = np.zeros((4, 6, 6), np.uint8)
    array[1:3, 2:4, 2:4] = value
    write_image(Image(array, (1.0, 1.0, 2.0)), path)


# --- the JSON reader ---------------------------------------------------------------------------------------
def test_a_valid_object_is_read(tmp_path):
    path = tmp_path / "plans.json"
    path.write_text(json.dumps({"configurations": {"3d_fullres": {"patch_size": [32, 80, 80]}}}))
    plans = read_json(path)
    assert json_field(plans, "configurations", path)["3d_fullres"]["patch_size"] == [32, 80, 80]


def test_a_cut_short_file_names_the_file_the_place_and_that_it_ends_early(tmp_path):
    path = tmp_path / "nnUNetPlans.json"
    text = json.dumps({"configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres"}}}, indent=2)
    for keep in (len(text) // 3, len(text) // 2, len(text) - 2):  # inside a key, a string value, before the last }
        path.write_text(text[:keep])
        with pytest.raises(InputError) as raised:
            read_json(path)
        message = str(raised.value)
        assert message.startswith(f"{path}: is not valid JSON (line ") and "column" in message, message
        assert "ends early" in message, message


def test_an_edited_file_is_not_called_cut_short(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text('{"labels": {"background": 0,, "tumor": 1}}')
    with pytest.raises(InputError, match=r"dataset\.json: is not valid JSON \(line 1, column 29") as raised:
        read_json(path)
    assert "ends early" not in str(raised.value)


@pytest.mark.parametrize("content, expect, words", [
    ("[1, 2]", dict, "holds a JSON array, expected a JSON object"),
    ('{"a": 1}', list, "holds a JSON object, expected a JSON array"),
    ("true", (dict, list), "holds a JSON true/false value, expected a JSON object or array"),
    ("", dict, "is not valid JSON (the file is empty)"),
    ("  \n", dict, "is not valid JSON (the file is empty)"),
])
def test_wrong_shapes_and_empty_files(tmp_path, content, expect, words):
    path = tmp_path / "index.json"
    path.write_text(content)
    with pytest.raises(InputError) as raised:
        read_json(path, expect=expect)
    assert str(raised.value) == f"{path}: {words}"


def test_missing_folders_bytes_and_a_byte_order_mark(tmp_path):
    with pytest.raises(InputError, match="no_such.json: no such file"):
        read_json(tmp_path / "no_such.json")
    with pytest.raises(InputError, match="is a folder, not a JSON file"):
        read_json(tmp_path)
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"name": "Stra\u00dfe"}'.encode("latin-1"))
    with pytest.raises(InputError, match=r"latin\.json: is not valid JSON \(not UTF-8 text: byte 14 is 0xdf\)"):
        read_json(latin)
    bom = tmp_path / "windows.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"1": "liver"}).encode())
    assert read_json(bom) == {"1": "liver"}  # Notepad's byte-order mark is no error


def test_the_callers_error_type_is_raised(tmp_path):
    path = tmp_path / "hcf.json"
    path.write_text('{"hcf_format": 1, "slice_config": {')
    with pytest.raises(ModelError, match=r"hcf\.json: is not valid JSON"):
        read_json(path, error=ModelError)
    assert issubclass(ModelError, InputError)  # exit code 2 on the command line


def test_a_field_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "dataset.json"
    data = {"agcrc": {"organ_interference": []}}
    with pytest.raises(InputError, match=r"dataset\.json: 'labels' is missing"):
        json_field(data, "labels", path)
    with pytest.raises(InputError, match=r"'agcrc\.organ_interference' is a JSON array, expected a JSON object"):
        json_field(data["agcrc"], "organ_interference", path, where="agcrc.")
    assert json_field({"n": 3}, "n", path, expect=int) == 3
    with pytest.raises(InputError, match="'n' is a JSON true/false value, expected a JSON number"):
        json_field({"n": True}, "n", path, expect=int)


# --- listing and pairing ----------------------------------------------------------------------------------
@pytest.fixture
def msd(tmp_path):
    """imagesTr/labelsTr of three cases with the MSD archives' macOS files beside them."""
    for case in ("colon_001", "colon_002", "colon_003"):
        for sub in ("imagesTr", "labelsTr"):
            _label_map(tmp_path / sub / f"{case}.nii.gz")
            (tmp_path / sub / f"._{case}.nii.gz").write_bytes(MAC_FORK)
    (tmp_path / "imagesTr" / ".DS_Store").write_bytes(b"Bud1")
    return tmp_path


def test_hidden_files_are_never_cases(msd):
    assert [p.name for p in image_files(msd / "imagesTr")] == ["colon_001.nii.gz", "colon_002.nii.gz",
                                                               "colon_003.nii.gz"]
    assert image_stem("case_0000.nii.gz") == "case_0000" and image_stem("a.seg.nrrd", ".seg.nrrd") == "a"
    pairs = pair_images_and_labels(msd / "imagesTr", msd / "labelsTr")
    assert [(p.case, p.image.name, p.label.name) for p in pairs] == [
        (f"colon_00{k}", f"colon_00{k}.nii.gz", f"colon_00{k}.nii.gz") for k in (1, 2, 3)]


def test_an_image_without_a_label_and_a_label_without_an_image_are_named(msd):
    _label_map(msd / "imagesTr" / "colon_004.nii.gz")
    with pytest.raises(InputError) as raised:
        pair_images_and_labels(msd / "imagesTr", msd / "labelsTr", "--images", "--labels")
    message = str(raised.value)
    assert "1 image(s) in --images" in message and "without a label map" in message and "colon_004.nii.gz" in message
    _label_map(msd / "labelsTr" / "colon_005.nii.gz")
    with pytest.raises(InputError) as raised:
        pair_images_and_labels(msd / "imagesTr", msd / "labelsTr")
    message = str(raised.value)
    assert "colon_004.nii.gz" in message and "1 label map(s) in labels" in message and "colon_005.nii.gz" in message
    assert "._" not in message


def test_a_file_name_that_is_not_utf8_is_named_printably(msd):
    import os
    import shutil

    odd = msd / "imagesTr" / os.fsdecode(b"colon_\xff.nii.gz")  # as the OS hands over a Latin-1 name
    shutil.copy2(msd / "imagesTr" / "colon_001.nii.gz", odd)
    with pytest.raises(InputError) as raised:
        pair_images_and_labels(msd / "imagesTr", msd / "labelsTr")
    assert "colon_\\xff.nii.gz" in str(raised.value)
    str(raised.value).encode("utf-8")  # printable: no lone surrogates in the message


def test_a_dicom_series_folder_is_an_image_as_prepare_takes_it(msd):
    from dicom_writer import write_series

    write_series(Image(np.full((3, 8, 8), -1000, np.int16), (1.0, 1.0, 2.0)), msd / "imagesTr" / "colon_004")
    (msd / "imagesTr" / "notes").mkdir()  # a folder that holds no DICOM is no image
    (msd / "imagesTr" / "notes" / "read_me.txt").write_text("scanner protocol")
    with pytest.raises(InputError, match=r"image\(s\) in images .*: colon_004\."):
        pair_images_and_labels(msd / "imagesTr", msd / "labelsTr")
    _label_map(msd / "labelsTr" / "colon_004.nii.gz")
    pairs = pair_images_and_labels(msd / "imagesTr", msd / "labelsTr")
    assert [(p.case, p.image.is_dir()) for p in pairs][-1] == ("colon_004", True) and len(pairs) == 4


def test_nnunet_channel_names_and_mixed_endings_pair(tmp_path):
    for case in ("a", "b"):
        _label_map(tmp_path / "images" / f"{case}_0000.nii.gz")
        _label_map(tmp_path / "images" / f"{case}_0001.nii.gz")  # a second channel: not an image of its own
        _label_map(tmp_path / "labels" / f"{case}.nii.gz")
    _label_map(tmp_path / "images" / "c.nrrd")
    _label_map(tmp_path / "labels" / "c.nii.gz")
    pairs = pair_images_and_labels(tmp_path / "images", tmp_path / "labels")
    assert [(p.case, p.image.name) for p in pairs] == [("a", "a_0000.nii.gz"), ("b", "b_0000.nii.gz"),
                                                       ("c", "c.nrrd")]
    _label_map(tmp_path / "images" / "d_0001.nii.gz")  # a channel of no labelled case is an unpaired image
    with pytest.raises(InputError, match="d_0001.nii.gz"):
        pair_images_and_labels(tmp_path / "images", tmp_path / "labels")


def test_ambiguous_and_empty_folders_are_refused(tmp_path):
    _label_map(tmp_path / "images" / "a.nii.gz")
    _label_map(tmp_path / "images" / "a.nrrd")
    with pytest.raises(InputError, match=r"case 'a' has two files, a.nii.gz and a.nrrd"):
        files_by_case(tmp_path / "images", "--images")
    (tmp_path / "images" / "a.nrrd").unlink()
    _label_map(tmp_path / "images" / "a_0000.nii.gz")
    _label_map(tmp_path / "labels" / "a.nii.gz")
    with pytest.raises(InputError, match="case 'a' has two images, a.nii.gz and a_0000.nii.gz"):
        pair_images_and_labels(tmp_path / "images", tmp_path / "labels")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "._a.nii.gz").write_bytes(MAC_FORK)
    with pytest.raises(InputError, match="empty: holds no label maps"):
        pair_images_and_labels(tmp_path / "images", tmp_path / "empty")
    with pytest.raises(InputError, match="nowhere: does not exist"):
        pair_images_and_labels(tmp_path / "nowhere", tmp_path / "labels")


def test_long_name_lists_are_cut_and_hidden_files_do_not_fill_a_folder(tmp_path):
    assert name_list([f"c{k}" for k in range(13)]) == "c0, c1, c2, c3, c4, c5, c6, c7, c8, c9 and 3 more"
    (tmp_path / ".DS_Store").write_bytes(b"Bud1")
    (tmp_path / "._slice_0001.npz").write_bytes(MAC_FORK)
    assert is_empty_of_visible(tmp_path) and is_empty_of_visible(tmp_path / "missing")
    assert visible_files(tmp_path, ".npz") == []
    (tmp_path / "slice_0001.npz").write_bytes(b"")
    assert not is_empty_of_visible(tmp_path) and [p.name for p in visible_files(tmp_path, ".npz")] == ["slice_0001.npz"]


# --- evaluate: unpaired files refused, or missing predictions scored empty / skipped when asked ----------
def test_evaluate_refuses_unpaired_files_unless_told_what_a_missing_prediction_means(tmp_path):
    import json as json_module

    from CRCTraining.evaluate import EvaluationError, evaluate_folder

    for case in ("a", "b"):
        _label_map(tmp_path / "references" / f"{case}.nii.gz")
    _label_map(tmp_path / "predictions" / "a.nii.gz")
    (tmp_path / "predictions" / "._a.nii.gz").write_bytes(MAC_FORK)
    with pytest.raises(EvaluationError, match=r"1 reference\(s\) .* without a prediction .*: b\.nii\.gz; pass "
                                              "--missing-predictions empty"):
        evaluate_folder(tmp_path / "predictions", tmp_path / "references", tmp_path / "out")
    with pytest.warns(UserWarning, match="count as empty predictions: b"):
        empty = evaluate_folder(tmp_path / "predictions", tmp_path / "references", tmp_path / "empty",
                                missing_predictions="empty")
    assert empty.missing_predictions == ["b"] and empty.statistics[1]["dice"].mean == pytest.approx(0.5)
    with pytest.warns(UserWarning, match="are not evaluated: b"):
        skipped = evaluate_folder(tmp_path / "predictions", tmp_path / "references", tmp_path / "skip",
                                  missing_predictions="skip")
    assert [r.case for r in skipped.results] == ["a"] and skipped.statistics[1]["dice"].mean == 1.0
    document = json_module.loads((tmp_path / "skip" / "summary.json").read_text())
    assert document["missing_predictions"] == ["b"] and document["conventions"]["missing_prediction"].startswith("not")
    _label_map(tmp_path / "predictions" / "z.nii.gz")
    with pytest.raises(EvaluationError, match=r"1 prediction\(s\) .* without a reference .*: z\.nii\.gz"):
        evaluate_folder(tmp_path / "predictions", tmp_path / "references", tmp_path / "out2",
                        missing_predictions="empty")
    assert not (tmp_path / "out2").exists()


# --- organ names ------------------------------------------------------------------------------------------
def test_unknown_organ_names_are_refused_with_the_closest_known_names():
    from CRCTraining.flare24.labels import match_organs
    from OrganGuidanceLib.labels import word_convention

    with pytest.raises(InputError) as raised:
        match_organs(word_convention(), ["liver", "spleen", "livr", "pancraes"])
    message = str(raised.value)
    assert message.startswith("--interference-organs: unknown organ names 'livr' (did you mean 'liver'?), "
                              "'pancraes' (did you mean 'pancreas'?)"), message
    assert "Label convention 'word' names adrenal, bladder" in message
    labels = match_organs(word_convention(), ["liver", "aorta", "right kidney"])  # known names, WORD lacks aorta
    assert labels.absent == ["aorta"] and labels.source_values["right kidney"] == (4,)


def test_a_custom_conventions_own_names_are_known(tmp_path):
    from CRCTraining.flare24.labels import match_organs
    from OrganGuidanceLib.labels import load_convention

    path = tmp_path / "hospital.json"
    path.write_text(json.dumps({"1": "liver", "2": "mesorectal_fascia"}))
    labels = match_organs(load_convention(str(path)), ["mesorectal_fascia", "liver"])
    assert labels.dataset_labels() == {"background": 0, "mesorectal_fascia": 1, "liver": 2, "tumor": 3}
    with pytest.raises(InputError, match="did you mean 'mesorectal_fascia'"):
        match_organs(load_convention(str(path)), ["mesorectal_fascie"])


# --- nnU-Net plans and the slice filter's option ------------------------------------------------------------
def test_plans_are_read_through_the_one_reader(tmp_path, monkeypatch):
    from CRCTraining.nnunet.env import configure
    from CRCTraining.nnunet.planning import check_training_files, read_plans

    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, "")  # records the value before, restored after the test; configure sets them
    paths = configure(tmp_path)
    folder = paths.preprocessed / "Dataset961_Plans"
    folder.mkdir()
    with pytest.raises(InputError, match=r"nnUNetPlans\.json: no nnU-Net plans; run `crcseg plan -d 961` first"):
        read_plans(961)
    (folder / "nnUNetPlans.json").write_text(json.dumps({"configurations": {"2d": {}}}))
    with pytest.raises(InputError, match=r"has no configuration '3d_fullres' \(it has \['2d'\]\)"):
        read_plans(961, "3d_fullres")
    (folder / "nnUNetPlans.json").write_text(json.dumps({"configurations": {"3d_fullres": {}}}))
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "tumor": 1}}))
    (folder / "splits_final.json").write_text('[{"train": ["a"], "val": ["b"]}, {"train"')
    with pytest.raises(InputError, match=r"splits_final\.json: is not valid JSON .*ends early"):
        check_training_files(961, "3d_fullres")


def test_slice_filter_errors_carry_the_callers_name(tmp_path):
    import torch

    from CRCSegmentationLib.demo.ct import demo_model_path
    from CRCSegmentationLib.hcf.bundle import write_hcf_bundle
    from CRCSegmentationLib.hcf.preprocessing import SliceDatasetConfig
    from CRCSegmentationLib.models.slice_filter import open_filter_model
    from CRCSegmentationLib.networks.hcf import build_slice_classifier

    (tmp_path / "notes").mkdir()
    (tmp_path / "weights.pth").write_bytes(b"\x00" * 16)
    with pytest.raises(ModelError, match=r"^--slice-filter: .*notes is not a model bundle \(crcseg_model\.json is "
                                         r"missing\); give an HCF bundle"):
        open_filter_model(tmp_path / "notes", "--slice-filter")
    with pytest.raises(ModelError, match=r"^slice filter: .*weights\.pth is a file; give an HCF bundle"):
        open_filter_model(tmp_path / "weights.pth")
    with pytest.raises(ModelError, match=r"^--slice-filter: 'no_such_model' is neither a model folder"):
        open_filter_model("no_such_model", "--slice-filter")
    with pytest.raises(ModelError, match=r"^--slice-filter: .*demo_phantom is a model of kind 'nnunet'"):
        open_filter_model(demo_model_path(), "--slice-filter")
    torch.manual_seed(0)
    bundle = write_hcf_bundle(tmp_path / "filter", [build_slice_classifier(1, 2).state_dict()], [],
                              SliceDatasetConfig(size=32), name="filter")
    assert open_filter_model(bundle, "--slice-filter").kind == "hcf"
    (bundle / "hcf.json").write_text((bundle / "hcf.json").read_text()[:40])
    with pytest.raises(ModelError, match=r"^--slice-filter: .*hcf\.json: is not valid JSON"):
        open_filter_model(bundle, "--slice-filter")
