"""Dataset preparation for nnU-Net v2 (AG-CRC Table V: CT + MOS + OOI; §III-D AG-SSL bowel-wall labels):
source layouts, the phantom dataset, channels on one grid, caching, failures, real CT."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from CRCTraining.data.phantoms_ct import make_phantom_dataset
from CRCTraining.data.prepare_ct import CHANNEL_NAMES, PrepareError, case_outputs, prepare_dataset
from CRCTraining.data.sources import DatasetError, list_cases, read_source_dataset
from OrganGuidanceLib.guidance import GuidanceParameters, bowel_wall_mask
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import read_image, write_image
from OrganGuidanceLib.labels import word_convention
from OrganGuidanceLib.morphology import dilate_mm
from OrganGuidanceLib.mos_codes import MOS_CODES, compact_mos


@pytest.fixture(scope="module")
def phantom_source(tmp_path_factory) -> Path:
    """A 3-case MSD-layout phantom dataset with organ maps in organsTr (read-only for the tests)."""
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom") / "Task99_Phantom", num_cases=3, seed=0)


def _copy(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / source.name))


def _prepare(source: Path, raw: Path, **options):
    options.setdefault("organs", source / "organsTr")
    return prepare_dataset(source, 501, "Phantom", raw, **options)


def _verify_with_nnunet(folder: Path, capfd) -> None:
    """nnU-Net's own dataset check must pass without errors or warnings."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(folder), num_processes=1)
    printed = capfd.readouterr().out
    assert "verify_dataset_integrity Done" in printed  # its workers' output was captured too
    assert "Error" not in printed and "Warning" not in printed, printed


def _mtimes(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name != "prepare_report.json"}


# --- the phantom dataset ----------------------------------------------------------------------
def test_phantom_dataset_is_msd_layout_and_deterministic(tmp_path, ts):
    first = make_phantom_dataset(tmp_path / "a", num_cases=2, seed=7)
    again = make_phantom_dataset(tmp_path / "b", num_cases=2, seed=7)
    other = make_phantom_dataset(tmp_path / "c", num_cases=1, seed=8)
    description = json.loads((first / "dataset.json").read_text())
    assert description["modality"] == {"0": "CT"} and description["numTraining"] == 2
    assert description["labels"] == {"0": "background", "1": "colon cancer primaries"}
    assert description["training"][1] == {"image": "./imagesTr/colon_002.nii.gz", "label": "./labelsTr/colon_002.nii.gz"}
    colon = ts.organ_labels["colon"]
    for sub in ("imagesTr", "labelsTr", "organsTr"):
        for name in ("colon_001.nii.gz", "colon_002.nii.gz"):
            a, b = read_image(first / sub / name), read_image(again / sub / name)
            assert np.array_equal(a.array, b.array) and a.same_grid(b)
    for name in ("colon_001.nii.gz", "colon_002.nii.gz"):
        ct, tumor, organs = (read_image(first / sub / name) for sub in ("imagesTr", "labelsTr", "organsTr"))
        assert ct.shape == (40, 96, 96) and ct.array.dtype == np.int16
        assert tumor.array.sum() > 200  # present at this size, and entirely inside the colon label
        assert np.isin(organs.array[tumor.array > 0], colon).all()
    # the seed moves the anatomy and the tumor within the field of view
    one, two = (read_image(first / "labelsTr" / n).array for n in ("colon_001.nii.gz", "colon_002.nii.gz"))
    assert not np.array_equal(one, two)
    assert not np.array_equal(read_image(other / "imagesTr" / "colon_001.nii.gz").array,
                              read_image(first / "imagesTr" / "colon_001.nii.gz").array)


# --- source layouts ---------------------------------------------------------------------------
def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_list_cases_reads_msd_nnunet_and_image_folders(tmp_path):
    msd = tmp_path / "Task10_Colon"
    for name in ("colon_001", "colon_005"):
        _touch(msd / "imagesTr" / f"{name}.nii.gz")
        _touch(msd / "labelsTr" / f"{name}.nii.gz")
    _touch(msd / "imagesTr" / "._colon_001.nii.gz")  # macOS AppleDouble junk of the MSD tarball
    _touch(msd / "labelsTr" / "._colon_001.nii.gz")
    _touch(msd / "imagesTr" / ".DS_Store")
    _touch(msd / "organsTr" / "colon_005.nii.gz")
    (msd / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}, "labels": {"0": "background", "1": "tumour"}}))
    dataset = read_source_dataset(msd)
    assert dataset.layout == "msd" and dataset.label_names == {0: "background", 1: "tumour"}
    assert [c.case_id for c in dataset.cases] == ["colon_001", "colon_005"]
    assert dataset.cases[0].organs is None and dataset.cases[1].organs == msd / "organsTr" / "colon_005.nii.gz"
    assert dataset.cases[1].label == msd / "labelsTr" / "colon_005.nii.gz"

    raw = tmp_path / "Dataset010_Colon"
    for channel in ("0000", "0001"):
        _touch(raw / "imagesTr" / f"case_a_{channel}.nrrd")
    _touch(raw / "labelsTr" / "case_a.nrrd")
    (raw / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "T2", "1": "CT"}, "labels": {"background": 0, "tumor": 1}, "file_ending": ".nrrd"}))
    [case] = list_cases(raw, organs=msd / "organsTr")
    assert case.case_id == "case_a" and case.image.name == "case_a_0001.nrrd"  # the channel named CT
    assert case.label == raw / "labelsTr" / "case_a.nrrd" and case.organs is None

    v1 = tmp_path / "Task011_v1"  # nnU-Net v1 raw: "modality", no file_ending; told apart from MSD by file names
    _touch(v1 / "imagesTr" / "case_0001_0000.nii.gz")
    _touch(v1 / "labelsTr" / "case_0001.nii.gz")
    (v1 / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}}))
    assert [(c.case_id, c.image.name) for c in list_cases(v1)] == [("case_0001", "case_0001_0000.nii.gz")]
    (v1 / "imagesTr" / "case_0001_0000.nii.gz").rename(v1 / "imagesTr" / "case_0001.nii.gz")  # MSD after all
    assert read_source_dataset(v1).layout == "msd" and list_cases(v1)[0].case_id == "case_0001"

    images = tmp_path / "unlabeled"
    _touch(images / "scan_b.nii.gz")
    _touch(images / "scan_a.mha")
    _touch(images / "notes.txt")
    assert [c.case_id for c in list_cases(images, require_labels=False)] == ["scan_a", "scan_b"]
    with pytest.raises(DatasetError, match="without a tumor label"):
        list_cases(images)


def test_list_cases_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        list_cases(tmp_path / "missing")
    _touch(tmp_path / "a" / "imagesTr" / "colon_001.nii.gz")
    _touch(tmp_path / "a" / "imagesTr" / "colon_002.nii.gz")
    _touch(tmp_path / "a" / "labelsTr" / "colon_001.nii.gz")
    with pytest.raises(DatasetError, match=r"without a tumor label.*colon_002"):
        list_cases(tmp_path / "a")
    assert [c.label is None for c in list_cases(tmp_path / "a", require_labels=False)] == [False, True]
    _touch(tmp_path / "a" / "labelsTr" / "colon_009.nii.gz")
    with pytest.raises(DatasetError, match=r"labels without an image.*colon_009"):
        list_cases(tmp_path / "a", require_labels=False)
    (tmp_path / "empty" / "imagesTr").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images found"):
        list_cases(tmp_path / "empty")
    with pytest.raises(DatasetError, match="organ maps: no such folder"):
        list_cases(tmp_path / "a", organs=tmp_path / "nowhere")


# --- the MOS channel code ---------------------------------------------------------------------
def test_compact_mos_codes_are_convention_independent(ts):
    word = word_convention()
    values = np.array([0, 5, 9, 11, 10, 13, 1, 14, 200], dtype=np.uint8).reshape(1, 3, 3)
    codes = compact_mos(Image(np.repeat(values, 2, axis=0)), word).array[0].ravel().tolist()
    assert codes == [0, 1, 2, 3, 4, 5, 6, 6, 6]  # WORD has a rectum; unknown labels are "other organ"
    names = {v: k for k, v in ts.labels.items()}
    ids = [0, names["stomach"], names["duodenum"], names["small_bowel"], names["colon"], names["liver"]]
    codes = compact_mos(Image(np.array(ids * 4, dtype=np.uint16).reshape(2, 2, 6)), ts).array[0, 0].tolist()
    assert codes == [0, 1, 2, 3, 4, 6]  # TotalSegmentator v2: the rectum is inside colon (4)
    assert set(MOS_CODES) == set(range(7))


# --- preparation ------------------------------------------------------------------------------
def test_prepare_writes_aligned_channels_nnunet_accepts(phantom_source, tmp_path, ts, capfd):
    report = _prepare(phantom_source, tmp_path / "raw")
    folder = tmp_path / "raw" / "Dataset501_Phantom"
    assert report.dataset_folder == folder and sorted(report.done) == ["colon_001", "colon_002", "colon_003"]
    assert not report.failed and not report.cached
    description = json.loads((folder / "dataset.json").read_text())
    assert description["channel_names"] == CHANNEL_NAMES == {"0": "CT", "1": "noNorm", "2": "noNorm"}
    assert description["channel_descriptions"] == {"0": "CT", "1": "MOS", "2": "OOI"}
    assert description["labels"] == {"background": 0, "tumor": 1} and description["numTraining"] == 3
    assert description["file_ending"] == ".nii.gz"
    assert description["agcrc"]["mos_codes"]["4"] == "colon" and description["agcrc"]["ooi"]["dilation_mm"] == 5.0
    names = {v: k for k, v in ts.labels.items()}
    for case in report.done:
        paths = case_outputs(folder, case)
        images = {key: read_image(path) for key, path in paths.items()}
        source_ct = read_image(phantom_source / "imagesTr" / f"{case}.nii.gz")
        organs = read_image(phantom_source / "organsTr" / f"{case}.nii.gz").array
        for key, image in images.items():
            assert image.same_grid(source_ct, tolerance_mm=1e-4), key
        assert np.array_equal(images["ct"].array, source_ct.array)
        tumor, ooi, mos = images["label"].array, images["ooi"].array, images["mos"].array
        assert set(np.unique(tumor)) == {0, 1} and set(np.unique(ooi)) == {0, 1}
        assert ooi[tumor > 0].all()  # the OOI channel covers every tumor voxel
        assert set(np.unique(mos)) <= set(MOS_CODES) and {0, 4, 6} <= set(np.unique(mos))
        assert (mos[organs == names["colon"]] == 4).all() and (mos[organs == names["sacrum"]] == 6).all()
        assert np.array_equal(images["ooi0"].array > 0, np.isin(organs, ts.ooi_label_values()))
        wall = bowel_wall_mask(images["ooi0"], GuidanceParameters().wall_width_mm)
        assert np.array_equal(images["bowel_wall"].array > 0, wall.array)
        assert report.statistics[case]["tumor_in_ooi"] == 1.0
    assert json.loads((folder / "prepare_report.json").read_text())["num_training"] == 3
    _verify_with_nnunet(folder, capfd)  # the extra folders (ooi0Tr, bowelwallTr, .agcrc_cache) do not disturb it


def test_rerun_is_cached_and_a_parameter_change_recomputes(phantom_source, tmp_path):
    raw = tmp_path / "raw"
    _prepare(phantom_source, raw)
    folder = raw / "Dataset501_Phantom"
    before = _mtimes(folder)
    again = _prepare(phantom_source, raw)
    assert sorted(again.cached) == ["colon_001", "colon_002", "colon_003"] and not again.done
    assert _mtimes(folder) == before  # nothing rewritten, dataset.json included
    assert json.loads((folder / "prepare_report.json").read_text())["cached"] == sorted(again.cached)

    ooi_before = read_image(case_outputs(folder, "colon_001")["ooi"]).array.sum()
    wider = _prepare(phantom_source, raw, parameters=GuidanceParameters(dilation_mm=9.0))
    assert sorted(wider.done) == ["colon_001", "colon_002", "colon_003"] and not wider.cached
    assert read_image(case_outputs(folder, "colon_001")["ooi"]).array.sum() > ooi_before
    assert json.loads((folder / "dataset.json").read_text())["agcrc"]["ooi"]["dilation_mm"] == 9.0


def test_bad_cases_are_reported_and_skipped(phantom_source, tmp_path, capfd):
    source, raw = _copy(phantom_source, tmp_path), tmp_path / "raw"
    _prepare(source, raw)
    folder = raw / "Dataset501_Phantom"
    (source / "imagesTr" / "colon_002.nii.gz").write_bytes(b"\x1f\x8b garbage, not an image" * 40)
    label = read_image(source / "labelsTr" / "colon_003.nii.gz")
    write_image(Image(label.array[:, :64], label.spacing, label.origin, label.direction),
                source / "labelsTr" / "colon_003.nii.gz")  # a label on another grid
    kept_before = {p: p.read_bytes() for p in case_outputs(folder, "colon_002").values()}
    report = _prepare(source, raw)
    assert report.cached == ["colon_001"] and not report.done
    # A failing rerun keeps the complete outputs of the earlier run (a rerun must not shrink a dataset).
    assert set(report.kept) == {"colon_002", "colon_003"} and not report.failed and not report.removed
    assert "colon_002 image" in report.kept["colon_002"] and "cannot be read" in report.kept["colon_002"]
    assert "geometry mismatch" in report.kept["colon_003"]
    assert {p: p.read_bytes() for p in case_outputs(folder, "colon_002").values()} == kept_before
    assert "earlier run's outputs are kept" in report.summary()
    written = json.loads((folder / "prepare_report.json").read_text())
    assert written["kept"] == report.kept and written["num_training"] == 3
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 3
    _verify_with_nnunet(folder, capfd)

    # Without an earlier result a failing case is left out, and a staging folder of a killed run is removed.
    for path in case_outputs(folder, "colon_003").values():
        path.unlink()
    (folder / ".tmp-colon_009-leftover" / "imagesTr").mkdir(parents=True)
    report = _prepare(source, raw)
    assert set(report.failed) == {"colon_003"} and set(report.kept) == {"colon_002"}
    assert not list(folder.glob(".tmp-*")) and not any(p.exists() for p in case_outputs(folder, "colon_003").values())
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 2


def test_every_case_failing_raises_with_reasons(phantom_source, tmp_path):
    empty_organs = tmp_path / "organs"
    empty_organs.mkdir()
    with pytest.raises(PrepareError, match=r"every one of 3 cases failed: colon_001: no organ map named colon_001.nii.gz"):
        _prepare(phantom_source, tmp_path / "raw", organs=empty_organs)
    with pytest.raises(PrepareError, match="neither 'totalsegmentator' nor an existing folder"):
        _prepare(phantom_source, tmp_path / "raw", organs=tmp_path / "nowhere")
    foreign = tmp_path / "raw2" / "Dataset501_Phantom"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("someone else's")
    with pytest.raises(PrepareError, match="not written by prepare_dataset"):
        _prepare(phantom_source, tmp_path / "raw2")


def test_missing_totalsegmentator_weights_fail_every_case_with_one_reason(phantom_source, tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))  # an empty weights folder, no network
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "weights"))
    with pytest.raises(PrepareError, match=r"colon_001, colon_002, colon_003: MissingWeightsError: .*totalseg_download_weights"):
        prepare_dataset(phantom_source, 504, "TS", tmp_path / "raw", organs="totalsegmentator", device="cpu")
    written = json.loads((tmp_path / "raw" / "Dataset504_TS" / "prepare_report.json").read_text())
    assert sorted(written["failed"]) == ["colon_001", "colon_002", "colon_003"] and written["num_training"] == 0


def test_ssl_labels_are_the_bowel_wall_and_labels_are_optional(phantom_source, tmp_path):
    source = _copy(phantom_source, tmp_path)
    shutil.rmtree(source / "labelsTr")  # AG-SSL pretraining data needs no tumor labels
    with pytest.raises(DatasetError, match="without a tumor label"):
        _prepare(source, tmp_path / "raw")
    parameters = GuidanceParameters()  # default 3 mm wall on the phantom's 2.9 mm in-plane grid
    report = prepare_dataset(source, 502, "PhantomSSL", tmp_path / "raw", organs=source / "organsTr",
                             parameters=parameters, ssl=True)
    assert sorted(report.done) == ["colon_001", "colon_002", "colon_003"]
    folder = report.dataset_folder
    description = json.loads((folder / "dataset.json").read_text())
    assert description["labels"] == {"background": 0, "bowel_wall": 1}
    assert description["agcrc"]["task"] == "ssl_bowel_wall"
    for case in report.done:
        paths = case_outputs(folder, case)
        label, ooi0 = read_image(paths["label"]), read_image(paths["ooi0"])
        assert label.array.any()
        assert np.array_equal(label.array > 0, bowel_wall_mask(ooi0, parameters.wall_width_mm).array)
    # A wall narrower than the voxel spacing still keeps one voxel on each side of the boundary.
    thin = prepare_dataset(source, 505, "ThinWall", tmp_path / "raw", organs=source / "organsTr",
                           parameters=GuidanceParameters(wall_width_mm=2.0), ssl=True)
    assert sorted(thin.done) == ["colon_001", "colon_002", "colon_003"]


def test_second_organ_source_is_or_merged_into_the_ooi(phantom_source, tmp_path):
    """Algorithm 1 line 15: OOI = OR over two MOS sources; the MOS channel stays the first source's."""
    second = tmp_path / "word"
    ct = read_image(phantom_source / "imagesTr" / "colon_001.nii.gz")
    word = np.zeros(ct.shape, np.uint8)
    word[2:6, 4:10, 4:10] = 13  # a WORD "rectum" far from every phantom organ (a corner of the image)
    write_image(ct.with_array(word), second / "colon_001.nii.gz")
    source = tmp_path / "one"
    for sub in ("imagesTr", "labelsTr", "organsTr"):
        (source / sub).mkdir(parents=True)
        shutil.copy(phantom_source / sub / "colon_001.nii.gz", source / sub)
    plain = _prepare(source, tmp_path / "raw")
    merged = prepare_dataset(source, 503, "Merged", tmp_path / "raw", organs=source / "organsTr",
                             second_organs=second, second_convention="word")
    one = {k: read_image(p).array for k, p in case_outputs(plain.dataset_folder, "colon_001").items()}
    two = {k: read_image(p).array for k, p in case_outputs(merged.dataset_folder, "colon_001").items()}
    expected = one["ooi"].astype(bool) | dilate_mm(word > 0, 5.0, ct.spacing_zyx)
    assert np.array_equal(two["ooi"] > 0, expected) and two["ooi"].sum() > one["ooi"].sum()
    assert np.array_equal(one["mos"], two["mos"])


def test_real_ct_as_a_one_case_msd_dataset(shared_data, tmp_path, ts):
    """The TotalSegmentator example CT (direction diag(-1, -1, 1), int32) with its real organ map."""
    source = tmp_path / "Task10_Colon"
    for sub, name in (("imagesTr", "ts_example_ct.nii.gz"), ("organsTr", "ts_example_ct_seg_total_v2.nii.gz")):
        (source / sub).mkdir(parents=True)
        (source / sub / "colon_001.nii.gz").symlink_to(shared_data / name)
    ct = read_image(shared_data / "ts_example_ct.nii.gz")
    organs = read_image(shared_data / "ts_example_ct_seg_total_v2.nii.gz").array
    colon = np.argwhere(organs == ts.organ_labels["colon"][0])
    center = colon[len(colon) // 2]
    tumor = np.zeros(ct.shape, np.uint8)  # a 9 mm ball centred on a colon voxel stands in for a tumor
    zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in ct.shape)]
    tumor[((zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2) * 9.0 <= 81] = 1
    write_image(ct.with_array(tumor), source / "labelsTr" / "colon_001.nii.gz")

    report = prepare_dataset(source, 10, "RealCT", tmp_path / "raw", organs=source / "organsTr")
    assert report.done == ["colon_001"] and not report.failed
    paths = case_outputs(report.dataset_folder, "colon_001")
    written_ct, mos, ooi = (read_image(paths[k]) for k in ("ct", "mos", "ooi"))
    assert written_ct.same_grid(ct, tolerance_mm=1e-4) and np.array_equal(written_ct.array, ct.array)
    assert np.allclose(written_ct.direction, np.diag([-1.0, -1.0, 1.0]))  # no reorientation
    assert mos.same_grid(ct, tolerance_mm=1e-4) and ooi.same_grid(ct, tolerance_mm=1e-4)
    assert {0, 1, 2, 3, 4, 6} <= set(np.unique(mos.array))  # stomach, duodenum, small bowel, colon, others
    assert ooi.array[tumor > 0].all() and report.statistics["colon_001"]["tumor_in_ooi"] == 1.0
