"""Where the real test data is (shared/DESIGN.md, "Test data: where it comes from").

``SLICERCRC_TEST_DATA`` if set (then only that folder), else ``<repo>/../shared/data``, else the
cache that ``scripts/fetch_test_data.py`` fills. Stdlib only: tests, benchmarks and the fetch
script all import it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_VAR = "SLICERCRC_TEST_DATA"
FETCH_COMMAND = ".venv/bin/python scripts/fetch_test_data.py"
HOW_TO_GET = f"get it with: {FETCH_COMMAND} (or set {ENV_VAR})"

# What the fetch script provides (all from the TotalSegmentator repository); a folder counts only if it holds them.
DICOM_FOLDER = "ts_example_ct_dicom"
FETCHED_FILES = (
    "ts_example_ct.nii.gz",
    "ts_example_ct_seg_total_v2.nii.gz",
    "ts_example_ct_sm.nii.gz",
    "ts_example_ct_sm_seg_total_v2.nii.gz",
    DICOM_FOLDER,
    "ts_example_ct_dicom_seg_total_v2.nii.gz",
)
# WORD dataset (GPL-3.0): never fetched; the tests that need it skip on their own when it is absent.
WORD_LABEL_MAP = "word_label_map.nii.gz"


def default_cache_dir() -> Path:
    """Where the fetch script puts the data by default: ``${XDG_CACHE_HOME:-~/.cache}/slicercrc/test-data``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "slicercrc" / "test-data"


def holds_test_data(folder: Path) -> bool:
    """True when ``folder`` has every fetched file (and a non-empty DICOM folder)."""
    folder = Path(folder)
    if not all((folder / name).exists() for name in FETCHED_FILES):
        return False
    dicom = folder / DICOM_FOLDER
    return dicom.is_dir() and any(dicom.iterdir())


def candidate_folders() -> List[Path]:
    """The folders looked at, in order; an explicit ``SLICERCRC_TEST_DATA`` is the only one."""
    given = os.environ.get(ENV_VAR)
    if given:  # explicit: no fallback, so a test can point it at an empty folder
        return [Path(given)]
    return [REPO_ROOT.parent / "shared" / "data", default_cache_dir()]


def find_test_data() -> Optional[Path]:
    """The first candidate folder that holds the test data, or None."""
    return next((folder for folder in candidate_folders() if holds_test_data(folder)), None)


def data_file_or_exit(name: str) -> Path:
    """``name`` in the test-data folder, for scripts (benchmarks): exits with a clear message when missing."""
    folder = find_test_data()
    if folder is None:
        looked = ", ".join(str(path) for path in candidate_folders())
        raise SystemExit(f"real test data not found (looked in {looked}); {HOW_TO_GET}")
    path = folder / name
    if not path.exists():
        extra = " (WORD dataset, GPL-3.0: the fetch script does not provide it)" if name == WORD_LABEL_MAP else ""
        raise SystemExit(f"{name} not found in {folder}{extra}; give the input file explicitly")
    return path
