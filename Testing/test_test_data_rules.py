"""Where real test data comes from: lookup order, skip / CI-failure rules, and the fetch script.

The fetch script is exercised offline: a file:// "repository" is built in tmp_path from the shared
files that are byte-identical to the upstream ones (the script's SHA-256 checks prove that); the v1
segmentation it derives from is not available offline, so a synthetic v1 label map stands in for it.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
import SimpleITK as sitk
import test_data
from test_data import DICOM_FOLDER, FETCHED_FILES, WORD_LABEL_MAP, find_test_data, holds_test_data

REPO_ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(
    r"real test data not found: (\d+) tests (skipped|failed); "
    r"get it with: \.venv/bin/python scripts/fetch_test_data\.py \(or set SLICERCRC_TEST_DATA\)"
)


def _load_fetch_script():
    spec = importlib.util.spec_from_file_location("fetch_test_data", REPO_ROOT / "scripts" / "fetch_test_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


fetch = _load_fetch_script()


def make_data_folder(folder: Path) -> Path:
    """A folder that has every fetched name (dummy bytes): enough for the lookup rules."""
    (folder / DICOM_FOLDER).mkdir(parents=True)
    (folder / DICOM_FOLDER / "slice").write_bytes(b"x")
    for name in FETCHED_FILES:
        if name != DICOM_FOLDER:
            (folder / name).write_bytes(b"x")
    return folder


# --- lookup order -------------------------------------------------------------------------------
@pytest.fixture
def places(tmp_path, monkeypatch) -> Dict[str, Path]:
    """A fake repository root beside a fake ../shared/data, a fake user cache, and no env override."""
    monkeypatch.setattr(test_data, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SLICERCRC_TEST_DATA", raising=False)
    return {"shared": tmp_path / "shared" / "data", "cache": tmp_path / "cache" / "slicercrc" / "test-data",
            "env": tmp_path / "env"}


def test_nothing_anywhere_is_none(places):
    assert find_test_data() is None


def test_cache_then_shared_then_environment(places, monkeypatch):
    make_data_folder(places["cache"])
    assert find_test_data() == places["cache"]
    make_data_folder(places["shared"])
    assert find_test_data() == places["shared"]  # ../shared/data comes before the cache
    monkeypatch.setenv("SLICERCRC_TEST_DATA", str(make_data_folder(places["env"])))
    assert find_test_data() == places["env"]


def test_explicit_folder_has_no_fallback(places, monkeypatch, tmp_path):
    make_data_folder(places["shared"])
    make_data_folder(places["cache"])
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("SLICERCRC_TEST_DATA", str(empty))
    assert find_test_data() is None


@pytest.mark.parametrize("damage", ["missing file", "empty dicom folder"])
def test_incomplete_folder_does_not_count(places, damage):
    make_data_folder(places["shared"])
    good = make_data_folder(places["cache"])
    if damage == "missing file":
        (places["shared"] / "ts_example_ct_sm.nii.gz").unlink()
    else:
        shutil.rmtree(places["shared"] / DICOM_FOLDER)
        (places["shared"] / DICOM_FOLDER).mkdir()
    assert not holds_test_data(places["shared"])
    assert find_test_data() == good


def test_default_cache_follows_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert test_data.default_cache_dir() == tmp_path / "xdg" / "slicercrc" / "test-data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert test_data.default_cache_dir() == tmp_path / "home" / ".cache" / "slicercrc" / "test-data"


# --- skip without data, fail in CI (pytest in a subprocess) ---------------------------------------
PROBE_TESTS = '''
def test_needs_data(shared_data):
    assert (shared_data / "ts_example_ct.nii.gz").exists()


def test_needs_word(shared_file):
    assert shared_file("word_label_map.nii.gz").exists()


def test_needs_nothing():
    assert True
'''


def run_pytest(args: List[str], data: Path, ci: bool, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("CI", "PYTEST_ADDOPTS")}
    env["SLICERCRC_TEST_DATA"] = str(data)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "Testing"), env.get("PYTHONPATH", "")])
    if ci:
        env["CI"] = "true"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(cwd), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def probe(tmp_path: Path, data: Path, ci: bool) -> subprocess.CompletedProcess:
    """The probe tests with the project's conftest loaded as a plugin (they live outside Testing/)."""
    folder = tmp_path / "probe"
    folder.mkdir(exist_ok=True)
    (folder / "test_probe.py").write_text(PROBE_TESTS)
    return run_pytest(["-p", "conftest", "-q", "test_probe.py"], data, ci, folder)


def counts(output: str) -> Dict[str, int]:
    """pytest's final tally: {'passed': 3, 'skipped': 5, ...}."""
    tally = output.strip().splitlines()[-1]
    return {word: int(number) for number, word in re.findall(r"(\d+) (passed|skipped|failed|errors?)", tally)}


@pytest.fixture
def empty(tmp_path) -> Path:
    folder = tmp_path / "no-data"
    folder.mkdir()
    return folder


def test_real_data_tests_skip_without_data_and_say_so(empty):
    result = run_pytest(["Testing/test_image_io.py", "-q"], empty, ci=False, cwd=REPO_ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    found = SUMMARY.findall(output)
    assert len(found) == 1, output  # one line
    skipped = int(found[0][0])
    assert found[0][1] == "skipped" and skipped >= 1
    assert counts(output).get("skipped") == skipped and counts(output).get("passed", 0) >= 1, output
    # -ra (pyproject addopts) would list every data skip; that one line replaces them
    assert "SKIPPED [" not in output, output


def test_missing_data_skips_with_one_summary_line(tmp_path, empty):
    result = probe(tmp_path, empty, ci=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert SUMMARY.findall(output) == [("2", "skipped")], output
    assert counts(output) == {"passed": 1, "skipped": 2}, output


def test_missing_data_fails_in_ci(tmp_path, empty):
    result = probe(tmp_path, empty, ci=True)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert SUMMARY.findall(output) == [("2", "failed")], output
    assert "CI=true: missing test data is a failure" in output
    assert counts(output).get("passed") == 1 and "skipped" not in counts(output), output


@pytest.mark.parametrize("ci", [False, True], ids=["local", "ci"])
def test_missing_word_map_alone_skips_only_its_tests(tmp_path, ci):
    data = make_data_folder(tmp_path / "data")
    result = probe(tmp_path, data, ci=ci)
    output = result.stdout + result.stderr
    assert SUMMARY.findall(output) == [], output  # the data folder itself is there
    verb = "failed" if ci else "skipped"
    assert f"test data file not found: 1 tests {verb} for want of {WORD_LABEL_MAP}" in output, output
    if ci:
        assert result.returncode != 0 and counts(output).get("passed") == 2, output
    else:
        assert result.returncode == 0 and counts(output) == {"passed": 2, "skipped": 1}, output


# --- the fetch script: derivation ----------------------------------------------------------------
def label_image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((3.0, 2.0, 1.5))
    image.SetOrigin((177.9, -11.3, 94.3))
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    return image


def v1_id(name: str) -> int:
    return fetch.V1_TOTAL_NAMES.index(name) + 1


def test_v1_table_has_the_known_ids():
    """Spot checks against TotalSegmentator v1 (0effae9 map_to_binary.py): 104 classes."""
    assert len(fetch.V1_TOTAL) == 104 and len(set(fetch.V1_TOTAL_NAMES)) == 104
    assert [fetch.V1_TOTAL[i] for i in (1, 5, 6, 55, 56, 57, 92, 104)] == [
        "spleen", "liver", "stomach", "small_bowel", "duodenum", "colon", "sacrum", "urinary_bladder"]


def test_relabel_by_name_to_installed_v2_ids():
    v2 = fetch.v2_total_classes()  # reads TotalSegmentator's class map: a hard dependency, never skipped
    array = np.zeros((4, 5, 6), np.uint8)
    array[0] = v1_id("liver")
    array[1, :2] = v1_id("colon")
    array[2, 1:] = v1_id("urinary_bladder")
    array[3, 3] = v1_id("sacrum")
    result = fetch.relabel_by_name(label_image(array), fetch.V1_TOTAL, v2)
    expected = np.zeros_like(array)  # v2 ids as in shared/data/README.md
    expected[0], expected[1, :2], expected[2, 1:], expected[3, 3] = 5, 20, 21, 25
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result), expected)
    source = label_image(array)
    assert result.GetPixelID() == source.GetPixelID()
    assert (result.GetSpacing(), result.GetOrigin(), result.GetDirection()) == (
        source.GetSpacing(), source.GetOrigin(), source.GetDirection())


def test_relabel_refuses_to_drop_a_present_class():
    array = np.zeros((2, 3, 3), np.uint8)
    array[0, 0, 0] = v1_id("heart_myocardium")  # v2 has `heart`, no myocardium class
    with pytest.raises(fetch.FetchError, match="heart_myocardium"):
        fetch.relabel_by_name(label_image(array), fetch.V1_TOTAL, {1: "liver"})


def test_relabel_table_maps_by_name_not_by_id():
    assert fetch.relabel_table({1: "a", 2: "b", 3: "c"}, {7: "b", 1: "c"}) == {2: 7, 3: 1}


# --- the fetch script: the pinned checksums are shared/data's files ------------------------------
def test_pinned_checksums_and_derivation_match_the_shared_data(shared_data):
    assert fetch.problems(shared_data) == []
    assert [s.name for s in fetch.outputs(fetch.SOURCES)].count(DICOM_FOLDER) == 0
    assert len([s for s in fetch.SOURCES if s.name.startswith(DICOM_FOLDER + "/")]) == 20


# --- the fetch script: fetching from a file:// mirror --------------------------------------------
SYNTHETIC_V2 = {5: "liver", 20: "colon", 21: "urinary_bladder"}


def synthetic_v1(shared_data: Path, path: Path) -> np.ndarray:
    """A v1 `total` label map on the example CT's grid at ``path``; returns the v2 array expected from it."""
    ct = sitk.ReadImage(str(shared_data / "ts_example_ct.nii.gz"))
    array = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    expected = array.copy()
    for box, name, v2_id in (((slice(10, 20), slice(30, 40), slice(40, 60)), "liver", 5),
                             ((slice(50, 60), slice(30, 40), slice(40, 60)), "colon", 20),
                             ((slice(5, 8), slice(50, 60), slice(50, 60)), "urinary_bladder", 21)):
        array[box], expected[box] = v1_id(name), v2_id
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(ct)
    sitk.WriteImage(image, str(path), True)
    return expected


@pytest.fixture
def mirror(tmp_path, shared_data):
    """A file:// repository at the pinned commits, and sources whose v1 segmentation is synthetic."""
    from OrganGuidanceLib.checksum import sha256_of

    root = tmp_path / "mirror"
    sources = []
    for source in fetch.SOURCES:
        target = root / source.commit / source.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.name == fetch.V1_SEG:  # not available offline: a synthetic stand-in with its own checksum
            expected = synthetic_v1(shared_data, target)
            source = fetch.Source(source.commit, source.path, sha256_of(target), source.name)
        else:  # byte-identical to upstream: the SHA-256 pinned in the script must accept it
            shutil.copyfile(shared_data / source.name, target)
        sources.append(source)
    reference = sitk.GetImageFromArray(expected)
    reference.CopyInformation(sitk.ReadImage(str(shared_data / "ts_example_ct.nii.gz")))
    reference_path = tmp_path / "expected_derived.nii.gz"
    sitk.WriteImage(reference, str(reference_path), True)
    return {"root": root, "sources": sources, "digest": fetch.image_digest(reference_path), "expected": expected}


def fetch_from(mirror, dest: Path, sources: Optional[list] = None) -> bool:
    return fetch.fetch_test_data(dest, fetch.base_url_of(str(mirror["root"])), 10.0, False,
                                 sources or mirror["sources"], mirror["digest"], SYNTHETIC_V2)


def test_fetch_assembles_the_folder_and_a_rerun_does_nothing(mirror, shared_data, tmp_path):
    dest = tmp_path / "cache" / "test-data"
    assert fetch_from(mirror, dest) is True
    assert sorted(p.name for p in dest.iterdir()) == sorted(FETCHED_FILES)
    assert holds_test_data(dest)
    for name in ("ts_example_ct.nii.gz", "ts_example_ct_sm.nii.gz", "ts_example_ct_sm_seg_total_v2.nii.gz",
                 "ts_example_ct_dicom_seg_total_v2.nii.gz"):
        assert (dest / name).read_bytes() == (shared_data / name).read_bytes(), name
    assert sorted(p.name for p in (dest / DICOM_FOLDER).iterdir()) == sorted(
        p.name for p in (shared_data / DICOM_FOLDER).iterdir())
    derived = sitk.ReadImage(str(dest / fetch.DERIVED_SEG))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(derived), mirror["expected"])
    assert derived.GetDirection() == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    assert [p.name for p in dest.parent.iterdir()] == ["test-data"]  # no staging folder left behind

    shutil.rmtree(mirror["root"])  # a rerun that tried to download would now fail
    assert fetch_from(mirror, dest) is False


def test_fetch_into_an_incomplete_folder_keeps_other_files(mirror, tmp_path):
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / WORD_LABEL_MAP).write_bytes(b"placed by hand")
    (dest / "ts_example_ct.nii.gz").write_bytes(b"damaged")
    (dest / DICOM_FOLDER).mkdir()
    (dest / DICOM_FOLDER / "stale-slice").write_bytes(b"old")  # a half series is replaced as a whole
    assert fetch_from(mirror, dest) is True
    assert fetch.problems(dest, mirror["sources"], mirror["digest"]) == []
    assert (dest / WORD_LABEL_MAP).read_bytes() == b"placed by hand"
    assert not (dest / DICOM_FOLDER / "stale-slice").exists() and len(list((dest / DICOM_FOLDER).iterdir())) == 20


def test_failed_fetch_leaves_no_folder(mirror, tmp_path):
    from OrganGuidanceLib.download import ChecksumMismatch

    last = mirror["sources"][-1]  # corrupt the last DICOM slice: everything before it downloads fine
    target = mirror["root"] / last.commit / last.path
    data = target.read_bytes()
    target.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    dest = tmp_path / "cache" / "test-data"
    with pytest.raises(ChecksumMismatch, match=re.escape(last.path.rsplit("/", 1)[1])):
        fetch_from(mirror, dest)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # the staging folder is gone too


def test_unreachable_server_is_one_line_and_exit_code_1(tmp_path):
    base = "http://127.0.0.1:9"  # the discard port: connection refused at once
    dest = tmp_path / "test-data"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "fetch_test_data.py"), "--dest", str(dest), "--base-url", base,
         "--quiet"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fetch_test_data: error: "), result.stderr
    assert f"{base}/{fetch.V1_COMMIT}/tests/reference_files/example_ct.nii.gz" in lines[0]
    assert not dest.exists()


def test_main_on_complete_data_fetches_nothing_and_names_the_word_map(shared_data, tmp_path, capsys):
    dest = tmp_path / "data"
    dest.mkdir()
    for name in FETCHED_FILES:  # a copy in tmp_path only: the shared files themselves are read-only
        source = shared_data / name
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, dest / name)
    assert fetch.main(["--dest", str(dest), "--base-url", str(tmp_path / "nowhere"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "already complete" in out and WORD_LABEL_MAP in out and "WORD dataset" in out
