"""DICOM as hospitals hand it over: a series folder, a folder of series, a zip of them (issue 21, "DICOM in").

A series is one case named from its header (patient, study date, series number); the image read from it
carries its UIDs and files in slice order (``Image.source``), so outputs can reference them; a series with
a gap fails its own case with a message naming the gap; a damaged or unsafe zip is refused naming it.
"""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_writer import small_ct, write_series

from CRCTraining.cli import main as crcseg
from CRCTraining.data.phantoms_ct import make_phantom_dataset
from OrganGuidanceLib.cases import find_cases
from OrganGuidanceLib.dicom_series import DicomSeriesError
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.validation import InputError

UID = "1.2.826.0.1.3680043.2.1125.7.21"


def zip_folder(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder.parent).as_posix())
    return target


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_phantom_dataset(tmp_path_factory.mktemp("dicom_in") / "source", num_cases=1, seed=21)


@pytest.fixture(scope="module")
def two_series(dataset, tmp_path_factory) -> Path:
    """A folder ``export/`` with two series of one patient in archive-style folders; one has a gap."""
    root = tmp_path_factory.mktemp("two") / "export"
    ct = read_image(dataset / "imagesTr" / "colon_001.nii.gz")
    write_series(ct, root / "S0001", series=2, uid=f"{UID}.2", patient_id="CRC^017", study_date="20240105")
    block = small_ct(ct)
    write_series(block, root / "S0002", series=5, uid=f"{UID}.5", patient_id="CRC^017", study_date="20240105",
                 slices=[k for k in range(12) if k != 5])
    return root


def test_a_series_is_named_from_its_header_and_carries_its_uids(two_series):
    cases = find_cases(two_series)
    assert [c.case for c in cases] == ["CRC_017_20240105_s2", "CRC_017_20240105_s5"]
    image = read_image(cases[0].path)
    source = image.source
    assert source is not None and source.series_instance_uid == f"{UID}.2" and source.series_number == "2"
    assert source.patient_id == "CRC^017" and source.study_date == "20240105" and source.modality == "CT"
    assert len(source.files) == len(source.sop_instance_uids) == image.shape[0]
    # the k-th instance is the image's k-th slice: its position is that slice's origin
    for k in (0, image.shape[0] // 2, image.shape[0] - 1):
        header = pydicom.dcmread(source.files[k], stop_before_pixels=True)
        assert header.SOPInstanceUID == source.sop_instance_uids[k]
        expected = (image.index_to_physical @ np.array([0, 0, k, 1.0]))[:3]
        np.testing.assert_allclose([float(v) for v in header.ImagePositionPatient], expected, atol=1e-3)
    assert image.with_array(image.array > 0).source is None  # a mask computed from it is no DICOM series


def test_a_zip_of_two_series_is_two_cases_and_a_gap_fails_its_case(two_series, tmp_path):
    archive = zip_folder(two_series, tmp_path / "study.zip")
    cases = find_cases(archive)
    assert [c.case for c in cases] == ["CRC_017_20240105_s2", "CRC_017_20240105_s5"]
    folder_image = read_image(find_cases(two_series)[0].path)
    zipped = read_image(cases[0].path)
    np.testing.assert_array_equal(zipped.array, folder_image.array)
    assert zipped.source.sop_instance_uids == folder_image.source.sop_instance_uids
    with pytest.raises(DicomSeriesError, match="gap between"):
        read_image(cases[1].path)
    assert find_cases(archive)[0].path == cases[0].path  # unpacked once per process


def test_crcseg_segment_reads_the_zip_and_fails_only_the_gapped_series(two_series, dataset, tmp_path, capsys):
    archive = zip_folder(two_series, tmp_path / "study.zip")
    organs = tmp_path / "organs"
    organs.mkdir()
    shutil.copy(dataset / "organsTr" / "colon_001.nii.gz", organs / "CRC_017_20240105_s2.nii.gz")
    code = crcseg(["segment", str(archive), "-m", "demo_phantom", "-o", str(tmp_path / "out"), "--organs",
                   str(organs), "--no-mirroring", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code != 0 and "1 of 2 cases segmented" in out, out
    assert "CRC_017_20240105_s5: FAILED" in out and "gap between" in out and "1 slice missing" in out
    assert (tmp_path / "out" / "CRC_017_20240105_s2_tumor.nii.gz").is_file()


def test_series_named_alike_get_their_folder_names(dataset, tmp_path):
    ct = small_ct(read_image(dataset / "imagesTr" / "colon_001.nii.gz"))
    for folder, uid in (("a", "1"), ("b", "2")):  # anonymised alike: same patient, date and series number
        write_series(ct, tmp_path / "batch" / folder, uid=f"{UID}.{uid}", patient_id="ANON", study_date="19000101")
    assert [c.case for c in find_cases(tmp_path / "batch")] == ["ANON_19000101_s1_a", "ANON_19000101_s1_b"]


def test_bad_zips_are_refused_naming_the_zip_and_member(two_series, tmp_path):
    (tmp_path / "not.zip").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InputError, match="not.zip: is not a readable zip"):
        find_cases(tmp_path / "not.zip")
    with zipfile.ZipFile(tmp_path / "slip.zip", "w") as archive:
        archive.writestr("../../outside.dcm", b"DICM")
    with pytest.raises(InputError, match=r"slip.zip: member '../../outside.dcm' would be written outside"):
        find_cases(tmp_path / "slip.zip")
    # a damaged member: its data no longer matches its CRC
    good = zip_folder(two_series / "S0002", tmp_path / "good.zip")
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as archive:
        first = archive.infolist()[0]
    start = first.header_offset + 30 + len(first.filename) + len(first.extra)
    data[start + first.compress_size // 2] ^= 0xFF
    (tmp_path / "damaged.zip").write_bytes(bytes(data))
    with pytest.raises(InputError, match=f"damaged.zip: member '{first.filename}' is damaged"):
        find_cases(tmp_path / "damaged.zip")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as archive:
        archive.writestr("notes.txt", b"no images here")
    with pytest.raises(InputError, match="empty.zip: this zip holds no DICOM series"):
        find_cases(tmp_path / "empty.zip")


def test_the_real_series_keeps_its_folder_name_and_references_its_instances(shared_data):
    """``ts_example_ct_dicom`` has an empty PatientID: the case keeps the folder's name."""
    folder = shared_data / "ts_example_ct_dicom"
    assert [c.case for c in find_cases(folder)] == ["ts_example_ct_dicom"]
    image = read_image(folder)
    source = image.source
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in source.files]
    assert [h.SOPInstanceUID for h in headers] == list(source.sop_instance_uids)
    assert {h.SeriesInstanceUID for h in headers} == {source.series_instance_uid}
    normal = image.direction[:, 2]
    along = [float(np.dot([float(v) for v in h.ImagePositionPatient], normal)) for h in headers]
    assert along == sorted(along) and len(along) == image.shape[0]


def test_a_zip_of_one_series_is_read_where_one_image_is(two_series, dataset, tmp_path, capsys):
    """``read_image`` (every one-image command: guidance, the console) takes a zip of one series; of two, it
    says how many it holds and where a batch goes."""
    one = zip_folder(two_series / "S0001", tmp_path / "one.zip")
    image = read_image(one)
    assert image.source.series_number == "2" and image.shape == read_image(two_series / "S0001").shape
    code = crcseg(["guidance", str(one), "--organs", str(dataset / "organsTr" / "colon_001.nii.gz"),
                   "-o", str(tmp_path / "guidance")])
    assert code == 0, capsys.readouterr()
    with pytest.raises(InputError, match=r"study.zip: holds 2 series or images .*'crcseg segment'"):
        read_image(zip_folder(two_series, tmp_path / "study.zip"))
