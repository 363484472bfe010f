"""Model-input fit (``CRCSegmentationLib.core.model_fit``): an input the model was not trained for is segmented with a
warning saying what the model expected, and an input that fits gets none.

MR: the plane of the slices (the training images' thick axis, recorded by ``prepare_mr`` in dataset.json and
by ``crcseg export`` in the bundle, format 3; older bundles fall back to the plans' array axis). CT: the
training foreground's intensity range from plans.json. The warning reaching ``crcseg segment`` is in the fault
catalogue (``faults_model_fit.py``); here the rule itself, the records, and the console.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from faults_model_fit import axial_mr, sagittal_mr

from CRCSegmentationLib.core.bundle import BundleMetadata, read_metadata
from CRCSegmentationLib.core.errors import BundleError
from CRCSegmentationLib.core.model_fit import ModelFitError, fit_warnings, model_expectation
from CRCSegmentationLib.core.mr_checks import ThickAxis, TrainingThickAxis, training_thick_axis
from CRCSegmentationLib.demo.ct import demo_model_path
from CRCSegmentationLib.models.open import open_model
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.phantom import make_abdominal_phantom

MR_BUNDLE = demo_model_path().parent / "demo_mr_phantom"


@pytest.fixture(scope="module")
def mr_expected():
    return model_expectation(open_model(MR_BUNDLE, load_checkpoints=False))


@pytest.fixture(scope="module")
def ct_expected():
    return model_expectation(open_model(demo_model_path(), load_checkpoints=False))


def _without_thick_axis(tmp_path: Path) -> Path:
    """The MR demonstration bundle as a format-2 bundle was: no thick_axis."""
    folder = Path(shutil.copytree(MR_BUNDLE, tmp_path / "format2"))
    data = json.loads((folder / "crcseg_model.json").read_text())
    del data["thick_axis"]
    data["format_version"] = 2
    (folder / "crcseg_model.json").write_text(json.dumps(data))
    return folder


# --- MR: the thick axis ---------------------------------------------------------------------------
def test_the_shipped_mr_bundle_records_a_left_right_thick_axis(mr_expected):
    metadata = read_metadata(MR_BUNDLE)
    assert metadata.format_version == 3
    assert TrainingThickAxis.from_dict(metadata.thick_axis) == TrainingThickAxis("L-R", 4.0, 4.571, {"L-R": 12})
    assert (mr_expected.thick.runs, mr_expected.thick_source, mr_expected.network_axis) == ("L-R", "crcseg_model.json", 0)


@pytest.mark.parametrize("seed, shape", [(21, (12, 64, 96)), (4242, (18, 192, 256))])
def test_a_sagittal_series_as_the_model_was_trained_on_gets_no_warning(mr_expected, seed, shape):
    from CRCSegmentationLib.demo.mr_phantom import make_sagittal_t2_phantom

    assert fit_warnings(mr_expected, make_sagittal_t2_phantom(seed=seed, shape=shape).image) == []


def test_an_axial_volume_is_warned_about_with_both_planes(mr_expected):
    warnings = fit_warnings(mr_expected, axial_mr())
    assert len(warnings) == 1
    text = warnings[0]
    assert "'demo_mr_phantom' was trained on volumes whose thick axis (4 mm) runs left-right (sagittal slices)" in text
    assert "this volume's thick axis (5.09 mm) runs superior-inferior (axial slices)" in text
    assert "the network sees axial slices where it learnt sagittal ones: expect a wrong result" in text


def test_a_sagittal_series_stored_with_its_thick_axis_last_is_warned_about(mr_expected):
    text = fit_warnings(mr_expected, sagittal_mr(storage="resampled"))[0]
    assert "runs left-right (sagittal slices), stored as array axis 2" in text
    assert "resamples this volume's array axis 0 (superior-inferior, 0.875 mm) to 4 mm" in text
    assert "expect a wrong result" in text and "thick axis as array axis 0" in text


def test_an_isotropic_volume_sliced_in_the_wrong_plane_is_warned_about(mr_expected):
    image = axial_mr(slice_mm=1.0, in_plane_mm=1.0)  # a 3D T2: ~1 mm in every direction, array axis 0 is S-I
    text = fit_warnings(mr_expected, image)[0]
    assert "this volume has no thick axis" in text and "sees axial slices" in text


def test_a_bundle_without_the_record_falls_back_to_the_plans(tmp_path):
    expected = model_expectation(open_model(_without_thick_axis(tmp_path), load_checkpoints=False))
    assert expected.thick is None and expected.network_axis == 0 and expected.anisotropic
    assert fit_warnings(expected, axial_mr()) == []  # same array axis; its patient axis is not known
    text = fit_warnings(expected, sagittal_mr(storage="resampled"))[0]
    assert "is stored as array axis 0 (the patient axis it runs along is not recorded in the model)" in text
    assert text.endswith("expect a degraded result (store the volume as the training images were: thick axis "
                         "as array axis 0)")


def test_a_results_folder_reads_the_record_of_its_dataset_json(tmp_path):
    folder = tmp_path / "Dataset903_PhantomMRDemo" / "nnUNetTrainerRCSegNeXt__nnUNetPlans__3d_fullres_rcsegnext"
    shutil.copytree(MR_BUNDLE, folder, ignore=shutil.ignore_patterns("crcseg_model.json"))
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["crcseg"]["thick_axis"] = TrainingThickAxis("L-R", 4.0, 4.571, {"L-R": 12}).to_dict()
    (folder / "dataset.json").write_text(json.dumps(dataset))
    expected = model_expectation(open_model(folder, load_checkpoints=False))
    assert expected.thick_source == "dataset.json" and "axial slices" in fit_warnings(expected, axial_mr())[0]
    dataset["crcseg"]["thick_axis"]["runs"] = "sideways"
    (folder / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(ModelFitError, match=r"dataset.json: crcseg.thick_axis.runs 'sideways'"):
        model_expectation(open_model(folder, load_checkpoints=False))


def test_the_training_record_summarises_the_cases():
    sagittal, axial = ThickAxis(0, 4.0, "L-R", 4.57), ThickAxis(0, 5.0, "S-I", 5.7)
    record = training_thick_axis([sagittal, sagittal, axial])
    assert (record.runs, record.spacing_mm, record.cases) == ("L-R", 4.0, {"L-R": 2, "S-I": 1})
    assert training_thick_axis([ThickAxis(0, 1.0, "S-I", 1.1)]).runs == ""  # isotropic: no thick axis
    assert training_thick_axis([]) is None
    assert TrainingThickAxis.from_dict(record.to_dict()) == TrainingThickAxis("L-R", 4.0, 4.57, {"L-R": 2, "S-I": 1})


# --- the bundle record --------------------------------------------------------------------------
def _metadata(**fields) -> BundleMetadata:
    return BundleMetadata(name="m", version="1", input_channels=["MR"], labels={"background": 0, "tumor": 1},
                          checkpoint_sha256={}, modality="MR", trainer="t", configuration="c", plans="p",
                          folds=["all"], checkpoint="checkpoint_final.pth", **fields)


def test_a_bundle_is_written_as_format_3_only_when_it_records_a_thick_axis(tmp_path):
    plain = json.loads(_metadata().to_json())
    assert plain["format_version"] == 2 and "thick_axis" not in plain  # readable by format-2 readers
    record = TrainingThickAxis("L-R", 4.0, 4.571, {"L-R": 3}).to_dict()
    written = json.loads(_metadata(thick_axis=record).to_json())
    assert written["format_version"] == 3 and written["thick_axis"] == record
    (tmp_path / "crcseg_model.json").write_text(json.dumps(written))
    assert read_metadata(tmp_path).thick_axis == record


@pytest.mark.parametrize("changes, words", [
    ({"thick_axis": {"runs": "up-down", "spacing_mm": 4.0, "anisotropy": 4.5}}, "thick_axis.runs 'up-down'"),
    ({"thick_axis": {"runs": "L-R", "spacing_mm": -4.0, "anisotropy": 4.5}}, "thick_axis.spacing_mm -4.0"),
    ({"thick_axis": ["L-R"]}, "thick_axis must be a JSON object"),
    ({"thick_axis": {"runs": "L-R", "spacing_mm": 4.0, "anisotropy": 4.5}, "modality": "CT",
      "input_channels": ["CT"]}, "thick_axis is recorded for MR models only"),
])
def test_a_bad_thick_axis_record_is_refused_naming_the_file(tmp_path, changes, words):
    data = {**json.loads(_metadata().to_json()), **changes, "format_version": 3}
    (tmp_path / "crcseg_model.json").write_text(json.dumps(data))
    with pytest.raises(BundleError) as raised:
        read_metadata(tmp_path)
    assert str(tmp_path / "crcseg_model.json") in str(raised.value) and words in str(raised.value)


def test_prepare_mr_records_the_thick_axis_and_export_carries_it_into_the_bundle(tmp_path):
    from CRCTraining.data.phantoms_mr import make_mr_phantom_dataset
    from CRCTraining.data.prepare_mr import prepare_mr_dataset
    from CRCTraining.nnunet.export import export_bundle

    source = make_mr_phantom_dataset(tmp_path / "source", cases=2, seed=5, shape=(12, 64, 96))
    raw = tmp_path / "raw"
    raw.mkdir()
    report = prepare_mr_dataset(source, 93, "Fit", raw)
    dataset = json.loads((report.dataset_folder / "dataset.json").read_text())
    record = {"runs": "L-R", "spacing_mm": 4.0, "anisotropy": 4.571, "cases": {"L-R": 2}}
    assert dataset["crcseg"]["thick_axis"] == record
    assert prepare_mr_dataset(source, 93, "Fit", raw).cached == ["rectum_001", "rectum_002"]  # a rerun keeps the record
    assert json.loads((report.dataset_folder / "dataset.json").read_text()) == dataset
    # A trained model's folder holds nnU-Net's copy of dataset.json; export reads the record from it.
    model = tmp_path / "results" / "nnUNetTrainerRCSegNeXt__nnUNetPlans__3d_fullres_rcsegnext"
    (model / "fold_all").mkdir(parents=True)
    shutil.copy(MR_BUNDLE / "plans.json", model / "plans.json")
    (model / "dataset.json").write_text(json.dumps(dataset))
    shutil.copy(MR_BUNDLE / "fold_all" / "checkpoint_final.pth", model / "fold_all" / "checkpoint_final.pth")
    bundle = export_bundle(model, tmp_path / "bundle", folds=("all",))
    metadata = read_metadata(bundle)
    assert metadata.thick_axis == record and metadata.format_version == 3


# --- CT: the training intensity range ----------------------------------------------------------------
def _ct_variants():
    ct = make_abdominal_phantom().ct
    rows, cols = np.ogrid[: ct.shape[1], : ct.shape[2]]
    outside = (rows - ct.shape[1] / 2) ** 2 + (cols - ct.shape[2] / 2) ** 2 > (0.47 * ct.shape[1]) ** 2
    return ct, ct.with_array(np.where(outside[None], np.int16(-3024), ct.array).astype(np.int16))


def _shifted(image, offset=0.0, scale=1.0):
    return image.with_array(image.array.astype(np.float32) * scale + offset)


def test_the_ct_model_expects_its_training_foreground_range(ct_expected):
    assert ct_expected.ct_range == (-444.0, 84.0) and ct_expected.modality == "CT"


@pytest.mark.parametrize("offset, scale", [(0, 1), (0, 2), (0, 0.5)])
def test_phantom_ct_padded_or_rescaled_by_2_gets_no_warning(ct_expected, offset, scale):
    for image in _ct_variants():
        assert fit_warnings(ct_expected, _shifted(image, offset, scale)) == []


def test_the_real_ct_gets_no_warning(ct_expected, shared_data):
    assert fit_warnings(ct_expected, read_image(shared_data / "ts_example_ct.nii.gz")) == []


@pytest.mark.parametrize("offset", [-1024, 200, 400])
def test_shifted_values_are_warned_about_with_the_training_range(ct_expected, offset):
    for image in _ct_variants():
        text = fit_warnings(ct_expected, _shifted(image, offset))[0]
        assert "lie within -444..84 HU" in text and "trained on CTs whose foreground ranged -444..84 HU" in text
        assert "shifted or rescaled" in text


def test_the_real_ct_with_its_intercept_applied_twice_is_warned_about(ct_expected, shared_data):
    real = read_image(shared_data / "ts_example_ct.nii.gz")
    assert "shifted or rescaled" in fit_warnings(ct_expected, _shifted(real, -1024))[0]


@pytest.mark.parametrize("make", [lambda ct: _shifted(ct, 1024), lambda ct: _shifted(_shifted(ct, 1024), 0, 1 / 4096)],
                         ids=["unsigned-without-intercept", "normalised-0-to-1"])
def test_values_without_air_are_warned_about(ct_expected, make):
    text = fit_warnings(ct_expected, make(make_abdominal_phantom().ct))[0]
    assert "darker than -444 HU, where air and fat lie" in text and "no rescale slope/intercept?" in text


# --- the console ------------------------------------------------------------------------------------
def test_the_console_logs_the_warning_and_keeps_it(mrml_scene, caplog):
    from CRCSegmentationLib.core.segmentation import SegmentationParameters
    from CRCSegmentationLib.logic import CRCSegmentationLogic, CRCSegmentationSettings
    from OrganGuidanceLib.mrml import add_volume_node

    logic = CRCSegmentationLogic(mrml_scene)
    node = add_volume_node(mrml_scene, axial_mr(), "T2 axial")
    settings = CRCSegmentationSettings(model="demo_mr_phantom", guidance_source="none",
                                       segmentation=SegmentationParameters(device="cpu", mirroring=False))
    with caplog.at_level(logging.WARNING, logger="CRCSegmentationLib.logic"):
        logic.process(node, settings)
    assert any("runs superior-inferior (axial slices)" in m for m in logic.messages), logic.messages
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("T2 axial: ") and "expect a wrong result" in m for m in logged), logged
