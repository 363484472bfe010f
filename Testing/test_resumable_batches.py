"""``crcseg segment`` into a ``ResultFolder``: killed, cancelled, concurrent, disk-full and overwritten runs.

The rule (OrganGuidanceLib/result_folder.py): a run leaves only complete cases; the same command again
skips the finished cases and does the rest; the summary comes last; one run at a time per folder;
``--overwrite`` replaces the earlier result whole (stale files included) once the new one is complete.
"""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
from crcseg_child import CHILD, run_crcseg
from fault_catalogue import BAD_INPUT, CANCELLED, FAILED, OK, run_child

from CRCTraining.cli import main
from CRCTraining.data.phantoms_ct import make_phantom_dataset
from OrganGuidanceLib.result_folder import RECORDS
from OrganGuidanceLib.run_lock import output_lock

# Columns that measure the run, not the result: they differ between two runs of the same inputs.
TIMING_COLUMNS = ("seconds", "wall_s", "peak_rss_mb", "gpu_peak_mb", "gpu_memory_time_mb_s")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_phantom_dataset(tmp_path_factory.mktemp("resumable") / "source", num_cases=3, seed=5)


def argv(dataset: Path, out: Path, *extra: str) -> List[str]:
    return ["segment", str(dataset / "imagesTr"), "-m", "demo_phantom", "-o", str(out), "--organs",
            str(dataset / "organsTr"), "--no-mirroring", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> Path:
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(argv(dataset, out)) == OK
    return out


def result_bytes(folder: Path) -> Dict[str, bytes]:
    """Every result file (the records aside) byte for byte; summary.csv without the timing columns."""
    found = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != "summary.csv"}
    rows = list(csv.DictReader(io.StringIO((folder / "summary.csv").read_text())))
    found["summary.csv"] = json.dumps([{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]).encode()
    return found


def complete_records(folder: Path) -> int:
    records = folder / RECORDS
    return sum(json.loads(p.read_text()).get("complete", False) for p in records.glob("*.json")) \
        if records.is_dir() else 0


def stamps(folder: Path) -> Dict[str, int]:
    """Inode and modification time of each case file: a file a rerun skipped keeps both."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("*_tumor.nii.gz")}


def leftovers(folder: Path) -> List[str]:
    return sorted(p.name for p in list(folder.parent.glob(".tmp-*")) + list(folder.glob(".tmp-*")))


@pytest.mark.parametrize("after_cases", [1, 3])
def test_killed_after_a_case_then_rerun_equals_an_uninterrupted_run(dataset, reference, tmp_path, capsys, after_cases):
    out = tmp_path / "out"
    code, output = run_crcseg(argv(dataset, out), tmp_path, kill_when=lambda: complete_records(out) >= after_cases)
    # after the last case the run may finish (summary and exit) before the kill lands
    assert code == -signal.SIGKILL or (code == OK and after_cases == 3), output
    done = stamps(out)
    assert len(done) >= after_cases and not (out / "summary.csv").exists() or after_cases == 3
    assert main(argv(dataset, out)) == OK
    printed = capsys.readouterr().out
    assert f"({len(done)} finished by an earlier run, not redone)" in printed, printed
    assert {name: stamp for name, stamp in stamps(out).items() if name in done} == done  # skipped: not rewritten
    assert result_bytes(out) == result_bytes(reference)
    assert not leftovers(out)


def test_cancelled_with_sigint_then_rerun(dataset, reference, tmp_path, capsys):
    out = tmp_path / "out"
    with open(tmp_path / "log", "w+") as log:
        child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(argv(dataset, out))], cwd=tmp_path,
                                 stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while complete_records(out) < 1 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=120) == CANCELLED
        log.seek(0)
        assert "cancelled" in log.read()
    assert not (out / "summary.csv").exists() and complete_records(out) >= 1 and not leftovers(out)
    assert main(argv(dataset, out)) == OK
    assert "finished by an earlier run" in capsys.readouterr().out
    assert result_bytes(out) == result_bytes(reference)


def test_the_same_command_again_redoes_nothing(reference, dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(argv(dataset, out)) == OK
    before = stamps(out)
    assert main(argv(dataset, out)) == OK
    assert "(3 finished by an earlier run, not redone)" in capsys.readouterr().out
    assert stamps(out) == before and result_bytes(out) == result_bytes(reference)


def test_a_second_run_into_the_same_folder_is_refused_and_names_the_first(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    with output_lock(out, "crcseg segment (the first run)"):
        assert main(argv(dataset, out)) == BAD_INPUT
    message = capsys.readouterr().err
    assert f"process {os.getpid()}" in message and "the first run" in message, message
    assert not out.exists()


def test_two_runs_started_together_one_is_refused(dataset, tmp_path):
    out = tmp_path / "out"
    logs = [open(tmp_path / f"log{i}", "w+") for i in range(2)]
    children = [subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(argv(dataset, out))], cwd=tmp_path,
                                 stdout=log, stderr=subprocess.STDOUT) for log in logs]
    codes = [child.wait(timeout=600) for child in children]
    texts = [(log.seek(0), log.read())[1] for log in logs]
    assert sorted(codes) == [OK, BAD_INPUT], texts
    refused = texts[codes.index(BAD_INPUT)]
    assert "is being written by process" in refused and "crcseg" in refused, refused
    assert complete_records(out) == 3


def test_overwrite_replaces_the_earlier_result_whole_and_keeps_the_users_files(dataset, reference, tmp_path):
    out = tmp_path / "out"
    assert main(argv(dataset, out)) == OK
    (out / "my_notes.txt").write_text("mine")
    (out / "colon_999_tumor.nii.gz").write_bytes(b"a case of an earlier run that this run does not have")
    assert main(argv(dataset, out, "--overwrite")) == OK
    assert not (out / "colon_999_tumor.nii.gz").exists()
    assert (out / "my_notes.txt").read_text() == "mine"
    assert result_bytes(out) == {**result_bytes(reference), "my_notes.txt": b"mine"}
    assert not leftovers(out)


def test_overwrite_killed_halfway_leaves_the_earlier_result(dataset, tmp_path):
    out = tmp_path / "out"
    assert main(argv(dataset, out, "--min-component-ml", "0.5")) == OK
    earlier = result_bytes(out)
    staging = lambda: [p for p in tmp_path.glob(".tmp-out-*") if p.is_dir()]
    code, _ = run_crcseg(argv(dataset, out, "--overwrite"), tmp_path,
                         kill_when=lambda: any(complete_records(p) >= 2 for p in staging()))
    assert code == -signal.SIGKILL
    assert result_bytes(out) == earlier
    assert main(argv(dataset, out, "--min-component-ml", "0.5")) == OK  # resumes the earlier run: all reused
    assert result_bytes(out) == earlier and not leftovers(out)


def test_other_settings_or_model_are_refused_without_overwrite(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(argv(dataset, out)) == OK
    earlier = result_bytes(out)
    capsys.readouterr()
    assert main(argv(dataset, out, "--min-component-ml", "1")) == BAD_INPUT
    message = capsys.readouterr().err
    assert "made otherwise" in message and "settings" in message and "--overwrite" in message, message
    assert result_bytes(out) == earlier


def test_a_full_disk_fails_the_new_case_and_keeps_the_earlier_ones(dataset, reference, tmp_path):
    """A file-size limit smaller than a tumor mask: the new cases fail (exit 1); the finished one is untouched.

    The summary may not fit either: then the run says so, and the earlier summary stays as it was.
    """
    out = tmp_path / "out"
    first = sorted((dataset / "imagesTr").iterdir())[0]
    assert main(argv(dataset, out)[:1] + [str(first)] + argv(dataset, out)[2:]) == OK
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    limit = min(p.stat().st_size for p in reference.glob("*_tumor.nii.gz")) - 1
    code, output = run_child(argv(dataset, out), f"fsize={limit}", tmp_path)
    assert code == FAILED, output
    assert "no space left" in output or "1 of 3 cases segmented (1 finished by an earlier run" in output, output
    assert "Traceback" not in output
    assert {p: p.read_bytes() for p in before} == before
    assert not list(out.glob("colon_00[23]*")) and not leftovers(out)


def test_guidance_overwrite_leaves_no_stale_files(tmp_path, dataset):
    ct, organs = sorted((dataset / "imagesTr").iterdir())[0], sorted((dataset / "organsTr").iterdir())[0]
    base = ["guidance", str(ct), "--organs", str(organs), "-o", str(tmp_path / "out"), "--no-png"]
    assert main(base + ["--write-cropped"]) == OK
    assert (tmp_path / "out" / "crop_box.json").exists() and (tmp_path / "out" / "cropped").is_dir()
    (tmp_path / "out" / "my_notes.txt").write_text("mine")
    assert main(base + ["--no-crop", "--overwrite"]) == OK
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert left == ["bowel_wall.nii.gz", "guidance.json", "mos.nii.gz", "my_notes.txt", "ooi.nii.gz", "ooi0.nii.gz"]
    assert json.loads((tmp_path / "out" / "guidance.json").read_text())["crop_box"] is None
