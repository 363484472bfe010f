"""Input integrity in the one reader every command uses: images whose data ends early, DICOM series that are
not one regular series, file names as the operating system gives them, and case discovery for batches."""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_writer import small_ct, write_series

from OrganGuidanceLib.cases import CaseInput, case_name, find_case_file, find_cases
from OrganGuidanceLib.dicom_series import DicomSeriesError, is_dicom_series_folder
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.image_integrity import size_text
from OrganGuidanceLib.io import ImageReadError, read_image, write_image
from OrganGuidanceLib.phantom import make_abdominal_phantom
from OrganGuidanceLib.validation import InputError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ct() -> Image:
    return make_abdominal_phantom().ct


@pytest.fixture(scope="module")
def block(ct) -> Image:
    return small_ct(ct)  # 12 slices of 48 x 48 voxels, 5 mm apart


def _cut(path: Path, fraction: float = 2 / 3) -> Path:
    data = path.read_bytes()
    cut = path.with_name("cut_" + path.name)
    cut.write_bytes(data[: int(len(data) * fraction)])
    return cut


# --- images whose data ends early ------------------------------------------------------------------
def test_cut_short_nii_is_refused_with_the_amount_missing(ct, tmp_path):
    whole = write_image(ct, tmp_path / "ct.nii", compress=False)
    cut = _cut(whole)
    expected = ct.array.size * ct.array.itemsize
    present = cut.stat().st_size - 352
    with pytest.raises(ImageReadError) as raised:
        read_image(cut)
    message = str(raised.value)
    assert "cut_ct.nii" in message and "ends early" in message
    assert f"{size_text(present)} of {size_text(expected)} ({int(100 * present / expected)} %)" in message


def test_cut_short_nii_gz_is_refused_with_the_amount_missing(ct, tmp_path):
    whole = write_image(ct, tmp_path / "ct.nii.gz")
    cut = _cut(whole)
    decompressed = 0  # what Python's gzip gets out of the cut stream before it ends
    with gzip.open(cut, "rb") as stream:
        try:
            while block := stream.read(1 << 16):
                decompressed += len(block)
        except EOFError:
            pass
    expected = ct.array.size * ct.array.itemsize
    with pytest.raises(ImageReadError) as raised:
        read_image(cut, name="CT cut_ct.nii.gz")
    message = str(raised.value)
    assert message.startswith("CT cut_ct.nii.gz: the image data ends early: ")
    assert f"{size_text(decompressed - 352)} of {size_text(expected)}" in message


def test_a_whole_gzip_stream_of_too_little_data_is_refused(ct, tmp_path):
    raw = write_image(ct, tmp_path / "ct.nii", compress=False).read_bytes()
    (tmp_path / "half.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(ImageReadError, match=r"half\.nii\.gz: the image data ends early: .* \(49 %\)"):
        read_image(tmp_path / "half.nii.gz")


@pytest.mark.parametrize("suffix, compress", [(".nrrd", True), (".nrrd", False), (".mha", True), (".mha", False)])
def test_cut_short_nrrd_and_mha_are_refused_with_the_amount(ct, tmp_path, suffix, compress):
    cut = _cut(write_image(ct, tmp_path / f"ct{suffix}", compress=compress))
    with pytest.raises(ImageReadError, match=rf"cut_ct\{suffix}: the (compressed )?image data ends early: .* of .* \(6\d %\)"):
        read_image(cut)


def test_cut_short_mhd_data_file_is_refused(ct, tmp_path):
    header = write_image(ct, tmp_path / "ct.mhd", compress=False)
    data = next(tmp_path.glob("*.raw"))
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(ImageReadError, match=r"ct\.mhd: the image data ends early: 1.0 kB of "):
        read_image(header)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_whole_files_read_exactly_as_before(ct, tmp_path, suffix):
    path = write_image(ct, tmp_path / f"ct{suffix}")
    image = read_image(path)
    plain = sitk.ReadImage(str(path))
    assert np.array_equal(image.array, sitk.GetArrayFromImage(plain)) and np.array_equal(image.array, ct.array)
    assert image.spacing == plain.GetSpacing() and image.origin == plain.GetOrigin()


def test_several_gzip_members_and_padding_are_a_whole_file(ct, tmp_path):
    """bgzip-style files (several gzip members) make the trailer disagree: the stream is measured, and whole."""
    raw = write_image(ct, tmp_path / "ct.nii", compress=False).read_bytes()
    third = len(raw) // 3
    members = b"".join(gzip.compress(raw[i: i + third]) for i in range(0, len(raw), third))
    (tmp_path / "members.nii.gz").write_bytes(members)
    assert np.array_equal(read_image(tmp_path / "members.nii.gz").array, ct.array)


def test_real_ct_reads_as_simpleitk_reads_it(shared_data):
    path = shared_data / "ts_example_ct.nii.gz"
    image, plain = read_image(path), sitk.ReadImage(str(path))
    assert np.array_equal(image.array, sitk.GetArrayFromImage(plain))
    assert image.spacing == plain.GetSpacing() and image.origin == plain.GetOrigin()


def test_a_broken_metaimage_is_not_reported_as_a_missing_file(tmp_path):
    (tmp_path / "bad.mha").write_text("ObjectType = Image\nNDims = 3\nElementDataFile = LOCAL\n")
    with pytest.raises(ImageReadError) as raised:
        read_image(tmp_path / "bad.mha")
    assert "bad.mha" in str(raised.value) and "No such file" not in str(raised.value)


# --- DICOM series ------------------------------------------------------------------------------------
def test_regular_series_reads_the_volume_it_was_written_from(block, tmp_path):
    image = read_image(write_series(block, tmp_path / "series"))
    assert np.array_equal(image.array, block.array)
    np.testing.assert_allclose(image.spacing, block.spacing)
    np.testing.assert_allclose(image.origin, block.origin, atol=1e-4)
    np.testing.assert_allclose(image.direction, np.eye(3), atol=1e-6)


def test_real_series_reads_as_itks_plain_series_reader(shared_data):
    folder = shared_data / "ts_example_ct_dicom"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    plain = reader.Execute()
    image = read_image(folder)
    assert image.shape == (20, 512, 512) and np.array_equal(image.array, sitk.GetArrayFromImage(plain))
    assert image.spacing == plain.GetSpacing() and image.origin == plain.GetOrigin()
    assert tuple(image.direction.ravel()) == plain.GetDirection()


def test_series_with_a_gap_is_refused_with_its_positions(block, tmp_path):
    folder = write_series(block, tmp_path / "gap", slices=[k for k in range(12) if k != 5])
    z = block.origin[2]
    with pytest.raises(DicomSeriesError) as raised:
        read_image(folder)
    message = str(raised.value)
    assert str(folder) in message
    assert f"gap between z = {z + 20:.1f} and {z + 30:.1f} mm (spacing 5.0 mm elsewhere): 1 slice missing" in message


def test_series_missing_two_slices_and_uneven_steps(block, tmp_path):
    two = write_series(block, tmp_path / "two_missing", slices=[k for k in range(12) if k not in (3, 4)])
    with pytest.raises(DicomSeriesError, match="2 slices missing"):
        read_image(two)
    uneven = write_series(block, tmp_path / "uneven", slices=range(6))
    write_series(block, uneven, slices=range(6, 12), z_shift_mm=2.0)
    with pytest.raises(DicomSeriesError, match=r"step of 7.0 mm between z = .* \(spacing 5.0 mm elsewhere\)"):
        read_image(uneven)


def test_series_with_a_duplicate_slice_is_refused(block, tmp_path):
    folder = write_series(block, tmp_path / "duplicate")
    shutil.copy(folder / "IM01_01_0004.dcm", folder / "IM01_01_0004 copy.dcm")
    with pytest.raises(DicomSeriesError, match=r"two slices at the same position: z = .* mm \(IM01_01_0004 copy.dcm and "
                                               r"IM01_01_0004.dcm\)"):
        read_image(folder)


def test_two_interleaved_acquisitions_are_refused(block, tmp_path):
    shifted = write_series(block, tmp_path / "shifted", slices=range(0, 12, 2))
    write_series(block, shifted, acquisition=2, slices=range(0, 12, 2), z_shift_mm=2.5)  # regular 2.5 mm when stacked
    with pytest.raises(DicomSeriesError, match=r"two interleaved acquisitions.*acquisition number 1 \(6 slices, z = "):
        read_image(shifted)
    phases = write_series(block, tmp_path / "phases")
    write_series(block, phases, acquisition=2)
    with pytest.raises(DicomSeriesError, match="two interleaved acquisitions"):
        read_image(phases)


def test_step_and_shoot_acquisitions_in_a_row_are_one_series(block, tmp_path):
    folder = write_series(block, tmp_path / "steps", slices=range(6))
    write_series(block, folder, acquisition=2, slices=range(6, 12))
    assert np.array_equal(read_image(folder).array, block.array)


def test_folder_with_two_series_lists_them(block, tmp_path):
    folder = write_series(block, tmp_path / "two", series=3, description="arterial")
    write_series(block, folder, series=4, description="portal venous", slices=range(8))
    with pytest.raises(DicomSeriesError) as raised:
        read_image(folder)
    message = str(raised.value)
    assert 'holds 2 DICOM series: series 3 "arterial" (12 slices); series 4 "portal venous" (8 slices)' in message
    assert "one series per folder" in message


def test_two_orientations_in_one_series_are_refused(block, tmp_path):
    folder = write_series(block, tmp_path / "orientations")
    write_series(block, folder, tilt_degrees=90, prefix="COR")
    with pytest.raises(DicomSeriesError, match="in 2 orientations"):
        read_image(folder)


def test_gantry_tilt_is_refused_or_warned_with_its_angle(block, tmp_path):
    tilted = write_series(block, tmp_path / "tilted", tilt_degrees=15.0)
    with pytest.raises(DicomSeriesError, match=r"tilted by 15.00 degrees .* \(gantry tilt\).* 14.358 mm off"):
        read_image(tilted)
    slight = write_series(block, tmp_path / "slight", tilt_degrees=0.2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = read_image(slight)
    assert image.shape == block.shape
    assert any("tilted by 0.20 degrees" in str(w.message) and "half a pixel" in str(w.message) for w in caught)


# --- file names as the operating system gives them --------------------------------------------------
NON_UTF8_CHILD = """
import os, sys
from pathlib import Path
from OrganGuidanceLib.cases import find_cases
from OrganGuidanceLib.io import read_image, write_image
folder = Path(sys.argv[1])
image = read_image(folder / os.fsdecode(b"ct_\\xff.nii.gz"))
series = read_image(folder / os.fsdecode(b"series_\\xfe"))
out = folder / os.fsdecode(b"out_\\xfd")
write_image(image, out / "mask.nii.gz")
write_image(series, out / os.fsdecode(b"m\\xfc.nrrd"))
again = read_image(out / "mask.nii.gz")
print(image.shape, series.shape, again.shape, image.name, sorted(c.case for c in find_cases(folder)))
"""


def test_file_names_that_are_not_utf8_read_and_write_without_an_abort(ct, block, tmp_path):
    bad = os.fsencode(tmp_path) + b"/ct_\xff.nii.gz"
    write_image(ct, tmp_path / "ct.nii.gz")
    os.rename(tmp_path / "ct.nii.gz", bad)
    series = write_series(block, tmp_path / "series")
    for i, path in enumerate(sorted(series.iterdir())):
        os.rename(path, os.fsencode(series) + b"/slice_\xfe%d" % i)
    os.rename(series, os.fsencode(tmp_path) + b"/series_\xfe")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("OrganGuidance", "CRCSegmentation"))}
    done = subprocess.run([sys.executable, "-c", NON_UTF8_CHILD, os.fsencode(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr)  # -6 would be SimpleITK's abort
    assert done.stdout.split("\n")[0] == ("(64, 128, 128) (12, 48, 48) (64, 128, 128) ct_\\xff.nii.gz "
                                          "['ct_\\\\xff', 'series_\\\\xfe']")
    assert sorted(os.listdir(os.fsencode(tmp_path) + b"/out_\xfd")) == [b"mask.nii.gz", b"m\xfc.nrrd"]


@pytest.mark.parametrize("name", ["tümor 1.nii.gz", "-ct.nii.gz", "ct with spaces.nrrd", "c" * 240 + ".nii.gz",
                                  "日本語.mha"])
def test_unusual_valid_names_round_trip(block, tmp_path, name):
    path = write_image(block, tmp_path / name)
    assert np.array_equal(read_image(path).array, block.array)
    assert find_cases(tmp_path) == [CaseInput(case_name(path), path)]


# --- case discovery -----------------------------------------------------------------------------------
def _touch_image(path: Path, image: Image) -> Path:
    return write_image(image, path)


def test_find_cases_on_each_folder_shape(block, tmp_path):
    images = tmp_path / "images"
    for name in ("b_0000.nii.gz", "a.nrrd"):
        _touch_image(images / name, block)
    (images / "._b_0000.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (images / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (images / "notes.txt").write_text("not an image")
    (images / "organs").mkdir()  # a folder of label maps inside the CT folder is no case
    _touch_image(images / "organs" / "a.nii.gz", block)
    assert find_cases(images) == [CaseInput("a", images / "a.nrrd"), CaseInput("b", images / "b_0000.nii.gz")]
    assert find_cases(images / "a.nrrd") == [CaseInput("a", images / "a.nrrd")]

    series = write_series(block, tmp_path / "patient 7 CT")
    assert is_dicom_series_folder(series) and not is_dicom_series_folder(images)
    assert find_cases(series) == [CaseInput("patient 7 CT", series)]

    batch = tmp_path / "batch"
    write_series(block, batch / "s1")
    write_series(block, batch / "s2", series=2)
    (batch / ".hidden_series").mkdir()
    shutil.copy(next((batch / "s1").iterdir()), batch / ".hidden_series")
    assert [c.case for c in find_cases(batch)] == ["s1", "s2"]

    mixed = tmp_path / "mixed"
    write_series(block, mixed / "s3")
    _touch_image(mixed / "c.nii.gz", block)
    assert find_cases(mixed) == [CaseInput("c", mixed / "c.nii.gz"), CaseInput("s3", mixed / "s3")]
    assert [c.case for c in find_cases([mixed / "c.nii.gz", series])] == ["c", "patient 7 CT"]


def test_find_cases_refuses_empty_folders_missing_paths_and_clashing_names(block, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "._ct.nii.gz").write_bytes(b"junk")
    with pytest.raises(InputError, match=r"empty: no image files .* or DICOM series in this folder"):
        find_cases(tmp_path / "empty")
    with pytest.raises(InputError, match="absent: no such file or folder"):
        find_cases(tmp_path / "absent")
    clash = tmp_path / "clash"
    _touch_image(clash / "ct.nii.gz", block)
    write_series(block, clash / "ct")
    with pytest.raises(InputError, match="2 inputs have the case name 'ct'"):
        find_cases(clash)


def test_find_case_file_finds_organ_maps_by_case(block, tmp_path):
    path = _touch_image(tmp_path / "ct_0000.nii.gz", block)
    assert find_case_file(tmp_path, "ct") == path and find_case_file(tmp_path, "other") is None
    odd = os.fsencode(tmp_path) + b"/x\xff.nii.gz"
    os.rename(path, odd)
    assert find_case_file(tmp_path, "x\\xff") == Path(os.fsdecode(odd))


def test_training_datasets_take_dicom_series_folders_as_images(block, tmp_path):
    from CRCTraining.data.sources import list_cases

    images = tmp_path / "pretraining"
    write_series(block, images / "scan_b")
    _touch_image(images / "scan_a.nii.gz", block)
    (images / "not_dicom").mkdir()
    (images / "not_dicom" / "readme.txt").write_text("no images here")
    assert [(c.case_id, c.image.name) for c in list_cases(images, require_labels=False)] == \
        [("scan_a", "scan_a.nii.gz"), ("scan_b", "scan_b")]
    msd = tmp_path / "Task10_Colon"
    write_series(block, msd / "imagesTr" / "colon_001")
    (msd / "imagesTr" / "._colon_001").write_bytes(b"junk")
    _touch_image(msd / "labelsTr" / "colon_001.nii.gz", block.with_array(np.zeros(block.shape, np.uint8)))
    cases = list_cases(msd)
    assert [(c.case_id, c.image.name, c.label.name) for c in cases] == [("colon_001", "colon_001", "colon_001.nii.gz")]
    assert np.array_equal(read_image(cases[0].image).array, block.array)
