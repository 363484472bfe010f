"""MR dataset preparation (RCSegNeXt §3.1): sagittal T2 phantoms -> an nnU-Net v2 raw dataset nnU-Net accepts,
labels found by name, bad cases reported, and nnU-Net's plans putting the thick axis first."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from CRCTraining.data.phantoms_mr import MSD_LABELS, make_mr_phantom_dataset
from CRCTraining.data.prepare_ct import PrepareError
from CRCTraining.data.prepare_mr import MRPrepareError, case_outputs, prepare_mr_dataset
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import read_image, write_image
from OrganGuidanceLib.phantom import make_abdominal_phantom
from OrganGuidanceLib.validation import InputError

CASES = ("rectum_001", "rectum_002", "rectum_003")
SHAPE = (16, 160, 224)  # (slices, rows, columns): smaller than the default, still with the whole tumor


@pytest.fixture(scope="module")
def mr_source(tmp_path_factory) -> Path:
    """3 sagittal T2 phantom cases, stored as acquired (thick axis = array axis 0); read-only for the tests."""
    return make_mr_phantom_dataset(tmp_path_factory.mktemp("mr") / "Task90_RectumMR", cases=3, seed=0, shape=SHAPE)


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch) -> Path:
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")  # 0 breaks nnU-Net's planning
    return tmp_path / "nnUNet_raw"


def _copy(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / source.name))


def _set_labels(source: Path, labels: dict) -> None:
    path = source / "dataset.json"
    description = json.loads(path.read_text())
    description["labels"] = labels
    path.write_text(json.dumps(description))


def _verify_with_nnunet(folder: Path, capfd) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    capfd.readouterr()
    verify_dataset_integrity(str(folder), num_processes=1)
    printed = capfd.readouterr().out
    assert "verify_dataset_integrity Done" in printed
    assert "Error" not in printed and "Warning" not in printed, printed


def _mtimes(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name != "prepare_report.json"}


# --- the source dataset -------------------------------------------------------------------------
def test_mr_phantom_dataset_is_msd_layout(mr_source):
    description = json.loads((mr_source / "dataset.json").read_text())
    assert description["modality"] == {"0": "T2"} and description["labels"] == MSD_LABELS
    assert MSD_LABELS == {"0": "background", "1": "rectum", "2": "tumor"}
    assert description["numTraining"] == 3
    assert description["training"][2] == {"image": "./imagesTr/rectum_003.nii.gz", "label": "./labelsTr/rectum_003.nii.gz"}
    images = [read_image(mr_source / "imagesTr" / f"{case}.nii.gz") for case in CASES]
    labels = [read_image(mr_source / "labelsTr" / f"{case}.nii.gz") for case in CASES]
    for image, label in zip(images, labels):
        assert image.shape == SHAPE and image.array.dtype == np.int16 and image.spacing == (0.875, 0.875, 4.0)
        assert label.same_grid(image) and set(np.unique(label.array)) == {0, 1, 2}
    assert not np.array_equal(labels[0].array, labels[1].array)  # one patient per case
    assert not list(mr_source.rglob(".tmp-*"))  # atomic writes leave nothing behind


# --- preparation --------------------------------------------------------------------------------
def test_prepare_writes_a_raw_dataset_nnunet_accepts(mr_source, nnunet_env, capfd):
    report = prepare_mr_dataset(mr_source, 90, "RectumMR", nnunet_env)
    folder = nnunet_env / "Dataset090_RectumMR"
    assert report.dataset_folder == folder and report.done == list(CASES) and not report.failed
    assert report.summary().startswith("Dataset090_RectumMR: 3 prepared, 0 cached, 0 failed")
    description = json.loads((folder / "dataset.json").read_text())
    assert description["channel_names"] == {"0": "zscore"} and description["channel_descriptions"] == {"0": "MR"}
    assert description["labels"] == {"background": 0, "rectum": 1, "tumor": 2}
    assert description["numTraining"] == 3 and description["file_ending"] == ".nii.gz"
    block = description["crcseg"]
    assert block["modality"] == "MR" and block["source"]["layout"] == "msd"
    assert block["source"]["folder"] == str(mr_source.resolve())
    assert block["source"]["labels"] == {"rectum": {"1": "rectum"}, "tumor": {"2": "tumor"},
                                         "background": {"0": "background"}}
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization
    from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import get_normalization_scheme

    assert get_normalization_scheme(description["channel_names"]["0"]) is ZScoreNormalization
    for case in CASES:
        outputs = case_outputs(folder, case)
        image, label = read_image(outputs["image"]), read_image(outputs["label"])
        source_image = read_image(mr_source / "imagesTr" / f"{case}.nii.gz")
        source_label = read_image(mr_source / "labelsTr" / f"{case}.nii.gz")
        assert np.array_equal(image.array, source_image.array) and image.array.dtype == source_image.array.dtype
        assert image.same_grid(source_image, tolerance_mm=1e-4)  # unchanged: no reorientation
        assert np.allclose(image.direction, source_image.direction, atol=1e-6)
        assert label.same_grid(image, tolerance_mm=1e-4) and label.array.dtype == np.uint8
        assert set(np.unique(label.array)) == {0, 1, 2} and np.array_equal(label.array, source_label.array)
        assert report.statistics[case]["thick_array_axis"] == 0 and report.statistics[case]["thick_axis_runs"] == "L-R"
    assert json.loads((folder / "prepare_report.json").read_text())["num_training"] == 3
    _verify_with_nnunet(folder, capfd)  # the cache folder and the report do not disturb it

    before = _mtimes(folder)
    again = prepare_mr_dataset(mr_source, 90, "RectumMR", nnunet_env)
    assert again.cached == list(CASES) and not again.done and _mtimes(folder) == before  # idempotent


def test_labels_are_found_by_name_and_remapped(mr_source, tmp_path, nnunet_env):
    """Source values 1 tumour, 2 bladder, 3 Rectum -> 2 tumor, 0, 1 rectum."""
    source = _copy(mr_source, tmp_path)
    _set_labels(source, {"0": "background", "1": "Tumour", "2": "bladder", "3": "Rectum"})
    originals = {}
    for case in CASES:
        path = source / "labelsTr" / f"{case}.nii.gz"
        label = read_image(path)
        originals[case] = label.array.copy()
        values = np.select([label.array == 1, label.array == 2], [3, 1], 0).astype(np.uint8)
        values[:, :6, :6] = 2  # a "bladder" label the MR dataset does not keep
        write_image(label.with_array(values), path)
    report = prepare_mr_dataset(source, 91, "Renamed", nnunet_env)
    assert report.done == list(CASES)
    folder = nnunet_env / "Dataset091_Renamed"
    for case in CASES:
        assert np.array_equal(read_image(case_outputs(folder, case)["label"]).array, originals[case])
    labels = json.loads((folder / "dataset.json").read_text())["crcseg"]["source"]["labels"]
    assert labels == {"rectum": {"3": "Rectum"}, "tumor": {"1": "Tumour"},
                      "background": {"0": "background", "2": "bladder"}}

    # Names nothing matches: explicit choices, by name or by value.
    _set_labels(source, {"0": "background", "1": "lesion", "2": "bladder", "3": "RW"})
    with pytest.raises(MRPrepareError, match=r"no label named like 'rectum'.*'RW'"):
        prepare_mr_dataset(source, 92, "Explicit", nnunet_env)
    report = prepare_mr_dataset(source, 92, "Explicit", nnunet_env, rectum_label="rw", tumor_label=1)
    assert report.done == list(CASES)
    label = read_image(case_outputs(nnunet_env / "Dataset092_Explicit", CASES[0])["label"]).array
    assert np.array_equal(label, originals[CASES[0]])
    with pytest.raises(MRPrepareError, match=r"no label value 7 for the tumor"):
        prepare_mr_dataset(source, 92, "Explicit", nnunet_env, rectum_label="RW", tumor_label="7")


def test_labels_without_a_rectum_are_an_error_naming_the_dataset_json(mr_source, tmp_path, nnunet_env):
    source = _copy(mr_source, tmp_path)
    _set_labels(source, {"0": "background", "1": "colon", "2": "tumor"})
    with pytest.raises(MRPrepareError) as error:
        prepare_mr_dataset(source, 93, "NoRectum", nnunet_env)
    message = str(error.value)
    assert str(source / "dataset.json") in message and "rectum" in message and "'colon'" in message
    assert isinstance(error.value, PrepareError) and isinstance(error.value, InputError)
    assert not (nnunet_env / "Dataset093_NoRectum").exists()  # nothing written
    _set_labels(source, {"0": "background", "1": "mesorectum", "2": "tumor"})  # not the rectum
    with pytest.raises(MRPrepareError, match="'mesorectum'"):
        prepare_mr_dataset(source, 93, "NoRectum", nnunet_env)
    _set_labels(source, {"0": "background", "1": "rectum", "2": "bladder"})
    with pytest.raises(MRPrepareError, match=r"dataset.json: no label named like 'tumor'"):
        prepare_mr_dataset(source, 93, "NoRectum", nnunet_env)


def test_bad_cases_are_reported_and_skipped(mr_source, tmp_path, nnunet_env):
    """A CT, a label on another grid, an undeclared label value, a case without rectum: each fails alone."""
    source = _copy(mr_source, tmp_path)
    ct_phantom = make_abdominal_phantom((48, 40, 40), (8.0, 8.0, 7.0))
    ct_label = ct_phantom.tumor.with_array((ct_phantom.tumor.array * 2 + (ct_phantom.labels.array == 21)).astype(np.uint8))
    write_image(ct_phantom.ct, source / "imagesTr" / "rectum_009.nii.gz")
    write_image(ct_label, source / "labelsTr" / "rectum_009.nii.gz")
    image = read_image(source / "imagesTr" / "rectum_001.nii.gz")
    label = read_image(source / "labelsTr" / "rectum_001.nii.gz")
    for case in ("rectum_010", "rectum_011", "rectum_012"):
        write_image(image, source / "imagesTr" / f"{case}.nii.gz")
    shifted = Image(label.array, label.spacing, tuple(np.add(label.origin, (0.0, 8.0, 0.0))), label.direction)
    write_image(shifted, source / "labelsTr" / "rectum_010.nii.gz")
    undeclared = label.array.copy()
    undeclared[0, :4, :4] = 7
    write_image(label.with_array(undeclared), source / "labelsTr" / "rectum_011.nii.gz")
    write_image(label.with_array(np.where(label.array == 1, 0, label.array).astype(np.uint8)),
                source / "labelsTr" / "rectum_012.nii.gz")

    report = prepare_mr_dataset(source, 94, "BadCases", nnunet_env)
    folder = nnunet_env / "Dataset094_BadCases"
    assert report.done == list(CASES) and report.num_training == 3
    assert set(report.failed) == {"rectum_009", "rectum_010", "rectum_011", "rectum_012"}
    assert report.failed["rectum_009"].startswith("Task90_RectumMR/imagesTr/rectum_009.nii.gz: ")
    assert "looks like a CT in Hounsfield units, not an MR volume" in report.failed["rectum_009"]
    assert report.failed["rectum_010"].startswith("Task90_RectumMR/labelsTr/rectum_010.nii.gz: ")
    assert "geometry mismatch" in report.failed["rectum_010"]
    assert "label values [7] are not among the labels of" in report.failed["rectum_011"]
    assert "has no rectum voxels" in report.failed["rectum_012"]
    assert "rectum_009: " in report.summary() and "4 failed" in report.summary()
    for case in report.failed:
        assert not any(path.exists() for path in case_outputs(folder, case).values())
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 3

    # Fixed on the source: the case joins on the next run; gone from the source: it leaves the dataset.
    write_image(label, source / "labelsTr" / "rectum_010.nii.gz")
    (source / "imagesTr" / "rectum_001.nii.gz").unlink()
    (source / "labelsTr" / "rectum_001.nii.gz").unlink()
    again = prepare_mr_dataset(source, 94, "BadCases", nnunet_env)
    assert again.done == ["rectum_010"] and again.cached == ["rectum_002", "rectum_003"]
    assert again.removed == ["rectum_001"] and not case_outputs(folder, "rectum_001")["image"].exists()
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 3


def test_every_case_failing_raises(mr_source, tmp_path, nnunet_env):
    source = tmp_path / "AllCT"
    ct_phantom = make_abdominal_phantom((48, 40, 40), (8.0, 8.0, 7.0))
    write_image(ct_phantom.ct, source / "imagesTr" / "case_1.nii.gz")
    write_image(ct_phantom.tumor, source / "labelsTr" / "case_1.nii.gz")
    (source / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "rectum", "2": "tumor"}}))
    with pytest.raises(MRPrepareError, match=r"every one of 1 cases failed: case_1: .*looks like a CT"):
        prepare_mr_dataset(source, 95, "AllCT", nnunet_env)
    with pytest.raises(MRPrepareError, match="exists and was not written by prepare_mr_dataset"):
        (nnunet_env / "Dataset096_Other").mkdir()
        (nnunet_env / "Dataset096_Other" / "dataset.json").write_text("{}")
        prepare_mr_dataset(mr_source, 96, "Other", nnunet_env)
    with pytest.raises(MRPrepareError, match="dataset id 96 is taken"):
        prepare_mr_dataset(mr_source, 96, "Another", nnunet_env)


# --- nnU-Net's plans: the network's anisotropic axis is the thick one ---------------------------
@pytest.mark.parametrize("thick_axis, transpose", [("resampled", [2, 0, 1]), ("acquisition", [0, 1, 2])])
def test_nnunet_plans_put_the_thick_axis_first(thick_axis, transpose, tmp_path, nnunet_env):
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
    )

    source = make_mr_phantom_dataset(tmp_path / f"Task97_{thick_axis}", cases=3, seed=1, thick_axis=thick_axis,
                                     shape=SHAPE)
    first = read_image(source / "imagesTr" / "rectum_001.nii.gz")
    assert int(np.argmax(first.spacing_zyx)) == transpose[0]  # where the 4 mm axis is stored
    prepare_mr_dataset(source, 97, "ThickAxis", nnunet_env)
    extract_fingerprint_dataset(97, num_processes=2, check_dataset_integrity=False, clean=True, verbose=False)
    plans, _ = plan_experiment_dataset(97)
    assert plans["transpose_forward"] == transpose
    assert plans["original_median_spacing_after_transp"] == pytest.approx([4.0, 0.875, 0.875])
    fullres = plans["configurations"]["3d_fullres"]
    assert fullres["spacing"] == pytest.approx([4.0, 0.875, 0.875])
    assert list(fullres["patch_size"])[0] <= 24 and min(list(fullres["patch_size"])[1:]) >= 128
    assert fullres["normalization_schemes"] == ["ZScoreNormalization"]
    kernels = fullres["architecture"]["arch_kwargs"]["kernel_sizes"]
    strides = fullres["architecture"]["arch_kwargs"]["strides"]
    assert list(kernels[0]) == [1, 3, 3]  # in-plane only at full resolution, as RCSegNeXt's AniNeXt stages
    assert list(strides[1]) == [1, 2, 2]  # the first poolings leave the thick axis alone
