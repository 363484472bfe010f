"""Shared fixtures. Real test data lives outside the repository (see Testing/test_data.py for where)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Set

import pytest
from test_data import HOW_TO_GET, WORD_LABEL_MAP, candidate_folders, find_test_data

REPO_ROOT = Path(__file__).resolve().parents[1]
MISSING_DATA = "real test data not found"  # skip/fail reasons start with these: the summary counts them
MISSING_FILE = "test data file not found"
_missing_files: Set[str] = set()  # names asked for by `shared_file` and absent, for the summary line


def in_ci() -> bool:
    """CI must never pass by skipping: there missing data fails the tests."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _missing(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} (CI=true: missing test data is a failure)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of real CT and label maps (see shared/data/README.md); tests skip without it (fail in CI)."""
    folder = find_test_data()
    if folder is None:
        looked = ", ".join(str(path) for path in candidate_folders())
        _missing(f"{MISSING_DATA} (looked in {looked}); {HOW_TO_GET}")
    return folder


@pytest.fixture(scope="session")
def shared_file(shared_data) -> Callable[[str], Path]:
    """``shared_file(name)``: one file of the data folder; the test skips (fails in CI) when that file is absent.

    For files the fetch script does not provide (``word_label_map.nii.gz``, WORD dataset, GPL-3.0).
    """
    def get(name: str) -> Path:
        path = shared_data / name
        if not path.exists():
            _missing_files.add(name)
            origin = " (WORD dataset, GPL-3.0: the fetch script does not provide it)" if name == WORD_LABEL_MAP else ""
            _missing(f"{MISSING_FILE}: {name} is not in {shared_data}{origin}")
        return path

    return get


def _count(terminalreporter, outcomes: List[str], reason: str) -> int:
    reports = [report for outcome in outcomes for report in terminalreporter.stats.get(outcome, [])]
    return sum(1 for report in reports if reason in str(getattr(report, "longrepr", "")))


def _summary_line(terminalreporter) -> str:
    verb, outcomes = ("failed", ["error", "failed"]) if in_ci() else ("skipped", ["skipped"])
    count = _count(terminalreporter, outcomes, MISSING_DATA)
    if count:
        return f"{MISSING_DATA}: {count} tests {verb}; {HOW_TO_GET}"
    count = _count(terminalreporter, outcomes, MISSING_FILE)
    if count:
        names = ", ".join(sorted(_missing_files)) or "some files"
        word = (f"; the fetch script does not provide {WORD_LABEL_MAP} (WORD dataset, GPL-3.0): "
                "put it into the data folder by hand") if WORD_LABEL_MAP in _missing_files else ""
        return f"{MISSING_FILE}: {count} tests {verb} for want of {names}{word}"
    return ""


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line saying how many tests lacked real data and how to get it, instead of one line per test.

    Outermost wrapper: the skips for want of data are kept out of ``-ra``'s short summary (printed
    inside) and put back afterwards, so the final count still includes them.
    """
    line = _summary_line(terminalreporter)
    if line:
        terminalreporter.write_line(line)
    skipped = terminalreporter.stats.get("skipped", [])
    data_skips = [r for r in skipped if any(m in str(getattr(r, "longrepr", "")) for m in (MISSING_DATA, MISSING_FILE))]
    terminalreporter.stats["skipped"] = [r for r in skipped if r not in data_skips]
    try:
        return (yield)
    finally:
        terminalreporter.stats["skipped"] = skipped


# Real data read once per session; tests derive new images and never write into these arrays.
@pytest.fixture(scope="session")
def ct(shared_data):
    """The TotalSegmentator example CT: 3 mm, direction diag(-1, -1, 1)."""
    from OrganGuidanceLib.io import read_image

    return read_image(shared_data / "ts_example_ct.nii.gz", name="ts_example_ct")


@pytest.fixture(scope="session")
def organs(shared_data):
    """TotalSegmentator v2 `total` label map of ``ct``, same grid."""
    from OrganGuidanceLib.io import read_image

    return read_image(shared_data / "ts_example_ct_seg_total_v2.nii.gz", name="organs")


@pytest.fixture(scope="session")
def ts():
    """TotalSegmentator v2 label convention, read from its class map."""
    from OrganGuidanceLib.labels import totalsegmentator_convention

    return totalsegmentator_convention()


# --- MRML scene under slicer-core (Qt-free Slicer); used by the MRML glue and logic tests ---
@pytest.fixture
def mrml_scene():
    """A fresh ``vtkMRMLScene`` with the segmentation converter rules registered."""
    from OrganGuidanceLib.mrml import new_scene

    scene = new_scene()
    yield scene
    scene.Clear(1)
