"""MOS providers: TotalSegmentator weight layout, cancellable subprocess, imported label maps."""
from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

from OrganGuidanceLib.io import write_image
from OrganGuidanceLib.labels import word_convention
from OrganGuidanceLib.progress import RunCancelled, run_cancellable
from OrganGuidanceLib.providers import (
    ImportedLabelMapProvider,
    TotalSegmentatorProvider,
    check_totalsegmentator_weights,
    required_weight_folders,
    totalsegmentator_roi_subset,
)


def test_roi_subset_names_the_gi_organs():
    assert totalsegmentator_roi_subset() == ["colon", "duodenum", "small_bowel", "stomach"]
    assert "urinary_bladder" in TotalSegmentatorProvider().roi_subset


def test_weight_check_accepts_installed_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path))
    roi = totalsegmentator_roi_subset()
    fast = required_weight_folders(fast=True, roi_subset=roi)
    # fast model + the 6 mm model TotalSegmentator runs first to crop around a roi_subset
    assert [f.split("_")[0] for f in fast] == ["Dataset297", "Dataset298"]
    # full resolution: only the "organs" part model holds the GI organs
    assert [f.split("_")[0] for f in required_weight_folders(fast=False, roi_subset=roi)] == ["Dataset291", "Dataset298"]
    assert len(required_weight_folders(fast=False)) == 5
    for folder in fast:
        (tmp_path / folder).mkdir(parents=True)
    assert check_totalsegmentator_weights(fast=True, roi_subset=roi) == tmp_path


def test_command_line_matches_options():
    command = TotalSegmentatorProvider(fast=False, device="cuda").command("in.nii.gz", "out.nii.gz")
    assert command[1:9] == ["-i", "in.nii.gz", "-o", "out.nii.gz", "--ml", "--task", "total", "--roi_subset"]
    assert "--fast" not in command and command[command.index("--device") + 1] == "gpu"


def test_subprocess_is_cancellable_and_forwards_output():
    lines = []
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.perf_counter()
    script = "import time\nprint('started', flush=True)\ntime.sleep(60)"
    with pytest.raises(RunCancelled):
        run_cancellable([sys.executable, "-c", script], cancel, lines.append, poll_seconds=0.05)
    assert time.perf_counter() - started < 10
    assert lines == ["started"]


def test_subprocess_failure_reports_its_output():
    with pytest.raises(RuntimeError, match=r"exit code 3:\nboom"):
        run_cancellable([sys.executable, "-c", "print('boom'); raise SystemExit(3)"])


def test_imported_label_map_from_file_and_memory(tmp_path, shared_data):
    from OrganGuidanceLib.io import read_image

    labels = read_image(shared_data / "ts_example_ct_sm_seg_total_v2.nii.gz")
    path = write_image(labels, tmp_path / "mos.nrrd")
    from_file = ImportedLabelMapProvider(path, "totalsegmentator").segment()
    np.testing.assert_array_equal(from_file.label_map.array, labels.array)
    assert from_file.convention.name == "totalsegmentator"
    in_memory = ImportedLabelMapProvider(labels, word_convention()).segment()
    assert in_memory.label_map is labels and in_memory.convention.name == "word"
