"""``crcseg segment --output-type dicom-seg rtstruct sr`` end to end (issue 21): a DICOM series in, the NIfTI mask
and SEG, RTSTRUCT and SR out, each read back by an independent reader and compared with the NIfTI mask and the
summary's statistics; the real series ``ts_example_ct_dicom``, where the demonstration model finds no tumor."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Dict

import numpy as np
import pydicom
import pytest
from dicom_readback import content_items, dice, on_ct_grid, rasterise, read_with_dcmqi
from dicom_writer import write_series

from CRCTraining.cli import main as crcseg
from CRCTraining.data.phantoms_ct import make_phantom_dataset
from OrganGuidanceLib.io import read_image

PATIENT, DATE, SERIES = "CRC^021", "20250314", 3
CASE = "CRC_021_20250314_s3"
DICOM_TYPES = ["dicom-seg", "rtstruct", "sr"]


def summary_rows(folder: Path) -> Dict[str, Dict[str, str]]:
    with open(folder / "summary.csv", newline="") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """The phantom CT as a DICOM series (with the organ map the phantom comes with), segmented with DICOM outputs."""
    root = tmp_path_factory.mktemp("dicom_segment")
    dataset = make_phantom_dataset(root / "source", num_cases=1, seed=7)
    ct = read_image(dataset / "imagesTr" / "colon_001.nii.gz")
    write_series(ct, root / "series" / "S3", series=SERIES, uid="1.2.826.0.1.3680043.2.1125.7.213",
                 patient_id=PATIENT, study_date=DATE)
    (root / "organs").mkdir()
    shutil.copy(dataset / "organsTr" / "colon_001.nii.gz", root / "organs" / f"{CASE}.nii.gz")
    code = crcseg(["segment", str(root / "series"), "-m", "demo_phantom", "-o", str(root / "out"), "--organs",
                   str(root / "organs"), "--no-mirroring", "--device", "cpu", "--output-type", "nifti", *DICOM_TYPES])
    assert code == 0
    return root / "out", read_image(root / "series" / "S3")


def test_the_case_writes_the_mask_and_the_three_dicom_files(segmented):
    out, ct = segmented
    row = summary_rows(out)[CASE]
    assert row["status"] == "ok" and float(row["volume_ml"]) > 1.0  # the demonstration model finds the tumor
    assert row["dicom"].split() == [f"{CASE}_seg.dcm", f"{CASE}_rtstruct.dcm", f"{CASE}_sr.dcm"]
    assert "CRC^021" in row["series"] and (out / f"{CASE}_tumor.nii.gz").is_file()
    for name in row["dicom"].split():
        header = pydicom.dcmread(out / name, stop_before_pixels=True)
        assert header.PatientID == PATIENT and header.StudyInstanceUID == pydicom.dcmread(
            ct.source.files[0], stop_before_pixels=True).StudyInstanceUID


def test_seg_read_by_dcmqi_and_highdicom_equals_the_nifti_mask(segmented, tmp_path):
    import highdicom as hd

    out, ct = segmented
    mask = read_image(out / f"{CASE}_tumor.nii.gz").array > 0
    seg_file = out / f"{CASE}_seg.dcm"
    np.testing.assert_array_equal(on_ct_grid(read_with_dcmqi(seg_file, tmp_path / "dcmqi")["tumor"], ct), mask)
    seg = hd.seg.segread(seg_file)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.source.series_instance_uid
    pixels = seg.get_pixels_by_source_instance(list(ct.source.sop_instance_uids), segment_numbers=[1],
                                               assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(pixels[..., 0] > 0, mask)
    item = seg.SegmentSequence[0]
    assert item.SegmentAlgorithmType == "AUTOMATIC"
    assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "86049000"  # SCT: malignant neoplasm
    algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "demo_phantom" and algorithm.AlgorithmVersion


def test_rtstruct_gtv_matches_the_mask_and_sr_holds_the_summary_volume(segmented):
    out, ct = segmented
    mask = read_image(out / f"{CASE}_tumor.nii.gz").array > 0
    rtstruct = pydicom.dcmread(out / f"{CASE}_rtstruct.dcm")
    assert dice(rasterise(rtstruct, "GTV", ct), mask) >= 0.95
    sr = pydicom.dcmread(out / f"{CASE}_sr.dcm")
    values = {i.ConceptNameCodeSequence[0].CodeValue: float(i.MeasuredValueSequence[0].NumericValue)
              for i in content_items(sr) if i.ValueType == "NUM"}
    row = summary_rows(out)[CASE]
    assert values["118565006"] == pytest.approx(float(row["volume_ml"]), abs=0.01)
    assert values["81827009"] == pytest.approx(float(row["largest_axial_diameter_mm"]), abs=0.01)


def test_a_rerun_reuses_the_case_and_a_nifti_input_with_dicom_types_fails_its_case(segmented, tmp_path, capsys):
    out, _ = segmented
    series = out.parent / "series"
    code = crcseg(["segment", str(series), "-m", "demo_phantom", "-o", str(out), "--organs", str(out.parent / "organs"),
                   "--no-mirroring", "--device", "cpu", "--output-type", "nifti", *DICOM_TYPES])
    assert code == 0 and "finished by an earlier run" in capsys.readouterr().out
    source = out.parent / "source"
    code = crcseg(["segment", str(source / "imagesTr"), "-m", "demo_phantom", "-o", str(tmp_path / "nifti"),
                   "--organs", str(source / "organsTr"), "--device", "cpu", "--output-type", "dicom-seg"])
    printed = capsys.readouterr().out
    assert code == 1 and "colon_001: FAILED" in printed and "is not a DICOM series" in printed


def test_real_series_with_no_tumor_writes_the_empty_mask_and_no_dicom(shared_data, tmp_path, capsys):
    """The demonstration model (trained on phantoms) finds no tumor on the real upper-abdomen series: the empty
    NIfTI mask is written, no DICOM file, and the summary says why."""
    series = shared_data / "ts_example_ct_dicom"
    code = crcseg(["segment", str(series), "-m", "demo_phantom", "-o", str(tmp_path / "out"), "--organs",
                   str(shared_data / "ts_example_ct_dicom_seg_total_v2.nii.gz"), "--no-mirroring", "--device", "cpu",
                   "--output-type", "nifti", *DICOM_TYPES])
    printed = capsys.readouterr().out
    assert code == 0, printed
    row = summary_rows(tmp_path / "out")["ts_example_ct_dicom"]
    assert row["status"] == "ok" and float(row["volume_ml"]) == 0.0 and row["dicom"] == ""
    assert "no tumor found" in row["warnings"] and "no tumor found" in printed
    assert not read_image(tmp_path / "out" / "ts_example_ct_dicom_tumor.nii.gz").array.any()
    assert not list((tmp_path / "out").glob("*.dcm"))
