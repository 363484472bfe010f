"""``OrganGuidanceLib.atomic.new_folder``: the one atomic write of a whole folder (bundles, unpacked models, results)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from OrganGuidanceLib.atomic import atomic_path, new_folder, recover_interrupted_swaps, remove_dead_temporary_files


def _hidden_leftovers(parent: Path) -> list:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".tmp-"))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_folder_appears_whole_and_shared(tmp_path):
    target = tmp_path / "bundle"
    with new_folder(target) as staging:
        (staging / "weights").mkdir()
        (staging / "weights" / "fold_0.pt").write_bytes(b"w")
        assert not target.exists(), "the target must not exist before the end"
    assert (target / "weights" / "fold_0.pt").read_bytes() == b"w"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0o700
    assert _hidden_leftovers(tmp_path) == []


def test_a_failure_leaves_nothing_and_an_existing_folder_as_it_was(tmp_path):
    target = tmp_path / "bundle"
    with pytest.raises(RuntimeError), new_folder(target) as staging:
        (staging / "half.pt").write_bytes(b"h")
        raise RuntimeError("export failed")
    assert not target.exists() and _hidden_leftovers(tmp_path) == []

    target.mkdir()
    (target / "earlier.pt").write_bytes(b"e")
    with pytest.raises(FileExistsError, match="bundle: exists already"), new_folder(target):
        pass
    with pytest.raises(RuntimeError), new_folder(target, replace=True) as staging:
        (staging / "new.pt").write_bytes(b"n")
        raise RuntimeError("cancelled")
    assert sorted(p.name for p in target.iterdir()) == ["earlier.pt"]
    assert _hidden_leftovers(tmp_path) == []


def test_replace_swaps_the_folder_whole_and_carries_the_kept_entries_over(tmp_path):
    target = tmp_path / "results"
    target.mkdir()
    for name in ("stale_mask.nii.gz", "my_notes.txt", "summary.csv"):
        (target / name).write_text("old")
    with new_folder(target, replace=True, keep=lambda name: name == "my_notes.txt") as staging:
        (staging / "summary.csv").write_text("new")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"summary.csv": "new", "my_notes.txt": "old"}
    assert _hidden_leftovers(tmp_path) == []


def test_a_swap_killed_between_its_two_renames_is_undone_by_the_next_run(tmp_path):
    target = tmp_path / "results"
    old = tmp_path / f".tmp-results-{_dead_pid()}-old-abc123"  # the earlier folder, set aside by a killed run
    old.mkdir()
    (old / "summary.csv").write_text("earlier")
    recover_interrupted_swaps(target, keep=lambda name: True)
    assert (target / "summary.csv").read_text() == "earlier" and not old.exists()

    # a live process's swap is never touched
    live = tmp_path / f".tmp-results-{os.getpid()}-old-def456"
    live.mkdir()
    recover_interrupted_swaps(target, keep=lambda name: True)
    assert live.is_dir()


def test_a_killed_runs_staging_is_removed_by_the_next_write(tmp_path):
    leftover = tmp_path / f".tmp-bundle-{_dead_pid()}-xyz"
    leftover.mkdir()
    (leftover / "half.pt").write_bytes(b"h")
    with new_folder(tmp_path / "bundle") as staging:
        (staging / "whole.pt").write_bytes(b"w")
    assert _hidden_leftovers(tmp_path) == []


def test_a_killed_writers_temporary_file_is_removed_and_a_live_ones_kept(tmp_path):
    with atomic_path(tmp_path / "summary.json") as temporary:
        assert temporary.name.startswith(f".tmp-file-{os.getpid()}-")  # the pid tells a dead writer's file
        temporary.write_text("{}")
        dead = tmp_path / f".tmp-file-{_dead_pid()}-abc"
        dead.write_text("half")
        remove_dead_temporary_files(tmp_path)
        assert temporary.exists() and not dead.exists()
    assert _hidden_leftovers(tmp_path) == [] and (tmp_path / "summary.json").read_text() == "{}"
