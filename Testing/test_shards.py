"""``--shard I/N``: a cohort split over processes or machines into one output folder (OrganGuidanceLib/shards.py).

Three shards of a 6-case phantom folder must give the masks and (the timing columns aside) the summary of one
run; a shard rerun resumes; ``crcseg summarize`` names a missing shard; the same shard twice is refused.
"""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
from crcseg_child import CHILD
from fault_catalogue import BAD_INPUT, FAILED, OK

from CRCTraining.cli import main
from CRCTraining.data.phantoms_ct import make_phantom_dataset
from OrganGuidanceLib.run_lock import output_lock
from OrganGuidanceLib.shards import Shard, merge_shard_summaries
from OrganGuidanceLib.validation import InputError

# Columns that measure the run, not the result (as in test_resumable_batches.py)
TIMING_COLUMNS = ("seconds", "wall_s", "peak_rss_mb", "gpu_peak_mb", "gpu_memory_time_mb_s")
SHARD_ENVIRONMENT = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX",
                     "RANK", "WORLD_SIZE", "LOCAL_RANK")


# --- the shard: parsing, the environment, the share --------------------------------------------------
@pytest.mark.parametrize("text", ["0/3", "4/3", "a/b", "3", "1/0", "-1/3", ""])
def test_a_bad_shard_names_the_option(text):
    with pytest.raises(InputError, match="--shard"):
        Shard.parse(text)


def test_parse():
    assert (Shard.parse("2/8").index, Shard.parse("2/8").count) == (2, 8)
    assert Shard.parse(" 3 / 3 ").label == "shard-3-of-3"


def test_slurm_array_ids_count_from_the_arrays_first_id():
    shard = Shard.from_environment({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "8",
                                    "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "8"})
    assert (shard.index, shard.count) == (1, 8)
    shard = Shard.from_environment({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"})  # --array=0-3
    assert (shard.index, shard.count) == (1, 4)
    shard = Shard.from_environment({"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10",
                                    "SLURM_ARRAY_TASK_MAX": "13"})  # no COUNT: MAX - MIN + 1
    assert (shard.index, shard.count) == (3, 4)
    with pytest.raises(InputError, match="SLURM_ARRAY_TASK_ID"):
        Shard.from_environment({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"})


def test_torchrun_rank_and_world_size_with_the_local_gpu():
    shard = Shard.from_environment({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (shard.index, shard.count, shard.gpu) == (6, 8, 1)
    assert Shard.from_environment({}) is None
    assert Shard.from_environment({"RANK": "0"}) is None  # no WORLD_SIZE: not a torchrun group


def test_an_explicit_shard_wins_over_the_environment(monkeypatch):
    for name in SHARD_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    assert Shard.resolve(None) is None
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    assert Shard.resolve(None).index == 3  # MIN absent: ids from 0
    assert (Shard.resolve("1/2").index, Shard.resolve("1/2").count) == (1, 2)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "1")
    assert Shard.resolve(None) is None  # an array of one task is the whole run


def test_round_robin_over_the_sorted_names_covers_every_case_once():
    names = ["c", "a", "e", "b", "f", "d", "g"]
    shares = [Shard(i, 3).select(names, name=str) for i in (1, 2, 3)]
    assert shares == [["a", "d", "g"], ["b", "e"], ["c", "f"]]
    assert Shard(5, 9).select(["a", "b"], name=str) == []
    assert "nothing to do" in Shard(5, 9).describe(0, 2)


# --- sharded crcseg segment on phantoms ------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_phantom_dataset(tmp_path_factory.mktemp("shards") / "source", num_cases=6, seed=11)


def argv(dataset: Path, out: Path, *extra: str) -> List[str]:
    return ["segment", str(dataset / "imagesTr"), "-m", "demo_phantom", "-o", str(out), "--organs",
            str(dataset / "organsTr"), "--no-mirroring", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def single_run(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "out"
    assert main(argv(dataset, out)) == OK
    return out


def summary_rows(path: Path) -> List[Dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def masks(folder: Path) -> Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*_tumor.nii.gz"))}


@pytest.fixture(scope="module")
def sharded_run(dataset, tmp_path_factory, single_run) -> Path:
    out = tmp_path_factory.mktemp("sharded") / "out"
    for index in (3, 1, 2):  # any order: the last to finish merges
        assert main(argv(dataset, out, "--shard", f"{index}/3")) == OK
        assert (out / "summary.csv").exists() == (index == 2)
    return out


def test_three_shards_equal_one_run(single_run, sharded_run):
    assert len(masks(single_run)) == 6
    assert masks(sharded_run) == masks(single_run)  # byte-equal NIfTI files, so voxel-equal
    rows = summary_rows(sharded_run / "summary.csv")
    assert rows == summary_rows(single_run / "summary.csv")
    assert [r["case"] for r in rows] == sorted(r["case"] for r in rows)
    assert sum(float(r["volume_ml"]) > 0 for r in rows) >= 3, rows  # the demonstration model finds tumors
    shard_rows = [summary_rows(sharded_run / f"summary.shard-{i}-of-3.csv") for i in (1, 2, 3)]
    assert [len(r) for r in shard_rows] == [2, 2, 2]
    assert shard_rows[0][0]["case"] == rows[0]["case"] and shard_rows[1][0]["case"] == rows[1]["case"]


def test_three_shards_at_once_into_one_folder(dataset, single_run, tmp_path):
    out = tmp_path / "out"
    logs = [open(tmp_path / f"log{i}", "w+") for i in range(3)]
    children = [subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(argv(dataset, out, "--shard", f"{i}/3"))],
                                 cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT) for i, log in enumerate(logs, 1)]
    codes = [child.wait(timeout=600) for child in children]
    texts = [(log.seek(0), log.read())[1] for log in logs]
    assert codes == [OK, OK, OK], texts
    assert sum("merged 3 of 3 shard summaries" in text for text in texts) >= 1, texts
    assert masks(out) == masks(single_run)
    assert summary_rows(out / "summary.csv") == summary_rows(single_run / "summary.csv")
    assert not list(out.glob(".tmp-*")) and not list(tmp_path.glob(".out.crcseg-lock*"))


def test_a_shard_rerun_resumes(dataset, sharded_run, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in sharded_run.glob("*_tumor.nii.gz")}
    assert main(argv(dataset, sharded_run, "--shard", "2/3")) == OK
    out = capsys.readouterr().out
    assert "shard 2 of 3" in out and "2 of 6 cases" in out, out
    assert "(2 finished by an earlier run, not redone)" in out, out
    assert {p.name: p.stat().st_mtime_ns for p in sharded_run.glob("*_tumor.nii.gz")} == before


def test_a_shard_from_the_slurm_environment(dataset, tmp_path, monkeypatch, capsys):
    for name in SHARD_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "8")  # more shards than cases: shard 7 of 8 has 0 cases
    out = tmp_path / "out"
    assert main(argv(dataset, out)) == OK
    printed = capsys.readouterr().out
    assert "shard 7 of 8" in printed and "0 of 6 cases" in printed and "nothing to do" in printed, printed
    assert summary_rows(out / "summary.shard-7-of-8.csv") == []


def test_summarize_names_a_missing_shard(sharded_run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for index in (1, 3):
        (out / f"summary.shard-{index}-of-3.csv").write_bytes((sharded_run / f"summary.shard-{index}-of-3.csv")
                                                              .read_bytes())
    assert main(["summarize", str(out)]) == FAILED
    assert "missing: shard 2/3" in capsys.readouterr().err
    assert not (out / "summary.csv").exists()
    assert main(["summarize", str(out), "--partial"]) == OK
    assert len(summary_rows(out / "summary.csv")) == 4
    (out / "summary.shard-2-of-3.csv").write_bytes((sharded_run / "summary.shard-2-of-3.csv").read_bytes())
    assert main(["summarize", str(out)]) == OK
    assert summary_rows(out / "summary.csv") == summary_rows(sharded_run / "summary.csv")
    (out / "summary.shard-1-of-4.csv").write_text("case,status\n")
    with pytest.raises(InputError, match="different splits"):
        merge_shard_summaries(out)
    assert main(["summarize", str(tmp_path / "nothing")]) == BAD_INPUT


# --- the lock: shards side by side, never the same shard twice --------------------------------------
def test_the_same_shard_twice_at_once_is_refused(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    with output_lock(out, "crcseg segment (shard 2 already running)", Shard(2, 3)):
        assert main(argv(dataset, out, "--shard", "2/3")) == BAD_INPUT
        message = capsys.readouterr().err
        assert "shard 2/3" in message and f"process {os.getpid()}" in message, message
        assert main(argv(dataset, out, "--shard", "3/3")) == OK  # another shard runs beside it
        assert main(argv(dataset, out)) == BAD_INPUT  # a whole run while shards run
        assert "shard-2-of-3" in capsys.readouterr().err
    with output_lock(out, "crcseg segment (a whole run)"):
        assert main(argv(dataset, out, "--shard", "1/3")) == BAD_INPUT
        assert "a whole run" in capsys.readouterr().err
    assert main(argv(dataset, out, "--shard", "1/3", "--overwrite")) == BAD_INPUT
    assert "drop the other shards' results" in capsys.readouterr().err
    assert not list(out.parent.glob(".out.crcseg-lock*"))  # every lock file gone with its holder


# --- crcseg prepare --shard --------------------------------------------------------------------------
def dataset_files(folder: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.nii.gz"))}


def test_three_prepare_shards_equal_one_prepare(dataset, tmp_path, capsys):
    from CRCTraining.data.prepare_ct import prepare_dataset

    single = prepare_dataset(dataset, 501, "Phantom", tmp_path / "single", organs=dataset / "organsTr")
    for index in (2, 3, 1):
        report = prepare_dataset(dataset, 501, "Phantom", tmp_path / "sharded", organs=dataset / "organsTr",
                                 shard=Shard(index, 3))
        assert len(report.done) == 2 and not report.removed  # no shard removes another's cases
    assert "shard 1 of 3 (--shard): 2 of 6 cases" in capsys.readouterr().out
    sharded = tmp_path / "sharded" / single.dataset_folder.name
    assert len(dataset_files(single.dataset_folder)) == 6 * 6
    assert dataset_files(sharded) == dataset_files(single.dataset_folder)
    assert (sharded / "dataset.json").read_text() == (single.dataset_folder / "dataset.json").read_text()
    assert sorted(p.name for p in sharded.glob("prepare_report.shard-*.json")) == [
        f"prepare_report.shard-{i}-of-3.json" for i in (1, 2, 3)]
    again = prepare_dataset(dataset, 501, "Phantom", tmp_path / "sharded", organs=dataset / "organsTr",
                            shard=Shard(2, 3))
    assert len(again.cached) == 2 and not again.done  # a shard rerun resumes


# --- crcseg guidance on a cohort, sharded -------------------------------------------------------------
def guidance_argv(source: Path, out: Path, *extra: str) -> List[str]:
    return ["guidance", str(source / "imagesTr"), "--organs", str(source / "organsTr"), "-o", str(out), "--no-png",
            *extra]


def guidance_masks(folder: Path) -> Dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.glob("*/*.nii.gz"))}


def test_guidance_on_a_cohort_in_two_shards_equals_one_run_and_resumes(dataset, tmp_path, capsys):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert main(guidance_argv(dataset, single)) == OK
    assert "organ guidance: 6 of 6 cases done" in capsys.readouterr().out
    assert sorted(p.name for p in single.iterdir() if p.is_dir()) == [f"colon_{k:03d}" for k in range(1, 7)]
    assert all((single / f"colon_{k:03d}" / "guidance.json").is_file() for k in range(1, 7))
    for index in (2, 1):
        assert main(guidance_argv(dataset, sharded, "--shard", f"{index}/2")) == OK
    printed = capsys.readouterr().out
    assert "shard 1 of 2 (--shard): 3 of 6 cases" in printed and "merged 2 of 2 shard summaries" in printed
    assert guidance_masks(sharded) == guidance_masks(single) and len(guidance_masks(single)) == 6 * 4
    rows = summary_rows(sharded / "guidance_summary.csv")
    assert rows == summary_rows(single / "guidance_summary.csv") and {r["status"] for r in rows} == {"ok"}
    assert all(float(r["ooi_ml"]) > 0 for r in rows)
    # a shard rerun resumes: its cases are finished
    assert main(guidance_argv(dataset, sharded, "--shard", "1/2")) == OK
    assert "(3 finished by an earlier run, not redone)" in capsys.readouterr().out
    # other parameters over finished cases: refused per case, nothing replaced
    assert main(guidance_argv(dataset, sharded, "--shard", "1/2", "--dilation-mm", "9")) == FAILED
    assert "holds organ guidance made with other parameters" in capsys.readouterr().out
    assert guidance_masks(sharded) == guidance_masks(single)


def test_guidance_cohort_fails_only_the_case_without_organs_and_one_ct_takes_no_shard(dataset, tmp_path, capsys):
    organs = tmp_path / "organs"
    organs.mkdir()
    for k in (1, 2):
        (organs / f"colon_{k:03d}.nii.gz").write_bytes((dataset / "organsTr" / f"colon_{k:03d}.nii.gz").read_bytes())
    images = tmp_path / "images"
    images.mkdir()
    for k in (1, 2, 3):
        (images / f"colon_{k:03d}.nii.gz").write_bytes((dataset / "imagesTr" / f"colon_{k:03d}.nii.gz").read_bytes())
    code = main(["guidance", str(images), "--organs", str(organs), "-o", str(tmp_path / "out"), "--no-png"])
    printed = capsys.readouterr().out
    assert code == FAILED and "organ guidance: 2 of 3 cases done" in printed
    assert "colon_003: FAILED: colon_003: no organ label map colon_003.nii.gz in" in printed
    assert not (tmp_path / "out" / "colon_003").exists()
    code = main(["guidance", str(images / "colon_001.nii.gz"), "--organs", str(organs / "colon_001.nii.gz"),
                 "-o", str(tmp_path / "one"), "--shard", "1/2"])
    assert code == BAD_INPUT and "shards split a cohort" in capsys.readouterr().err
