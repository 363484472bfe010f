"""Fault catalogue rows: resumable, staged and locked batches (killed, concurrent, disk-full and overwritten runs).

The rule (OrganGuidanceLib/result_folder.py): a run leaves only complete cases, each with a record; the same
command again skips them; results made otherwise are refused unless ``--overwrite``; one run per folder.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import List

from fault_catalogue import BAD_INPUT, FAILED, OK, Fault, Workspace, guidance, segment

from CRCSegmentationLib.demo.ct import demo_model_path
from CRCTraining.cli import main


def make_inputs(folder: Path) -> None:
    """A copy of the demonstration model that is another model (its description differs); a two-case batch."""
    for sub in ("cts", "organs"):
        (folder / "batch" / sub).mkdir(parents=True)
        for case in ("ct", "ct2"):
            shutil.copy(folder / ("ct.nii.gz" if sub == "cts" else "organs.nii.gz"), folder / "batch" / sub / f"{case}.nii.gz")
    other = folder / "batch" / "other_model"
    shutil.copytree(demo_model_path(), other)
    metadata = json.loads((other / "crcseg_model.json").read_text())
    (other / "crcseg_model.json").write_text(json.dumps({**metadata, "description": "another model"}))


def two_cases(w: Workspace, cts: str) -> List[str]:
    return ["segment", w[cts], "-m", "demo_phantom", "-o", w.out(), "--organs", w["batch/organs"], "--no-mirroring",
            "--device", "cpu"]


def earlier_segment(w: Workspace) -> None:
    assert main(segment(w, "demo_phantom")) == OK


def killed_mid_case(w: Workspace) -> None:
    """What a run killed while it moved a case in leaves: a staging folder, an incomplete record, a stray file."""
    out = w.row / "out"
    (out / ".tmp-case-999999999-x").mkdir(parents=True)
    (out / ".tmp-case-999999999-x" / "ct_tumor.nii.gz").write_bytes(b"half written")
    (out / ".crcseg").mkdir()
    (out / ".crcseg" / "ct.json").write_text(json.dumps({"case": "ct", "key": "k", "parts": {}, "outputs": {},
                                                         "result": {}, "complete": False}))
    (out / "ct_tumor.nii.gz").write_bytes(b"moved in before the kill")


def damaged_record(w: Workspace) -> None:
    earlier_segment(w)
    (w.row / "out" / ".crcseg" / "ct.json").write_text('{"case": "ct", "key": ')


def changed_output(w: Workspace) -> None:
    earlier_segment(w)
    (w.row / "out" / "ct_tumor.nii.gz").write_bytes(b"edited by hand")


def summary_without_records(w: Workspace) -> None:
    (w.row / "out").mkdir()
    (w.row / "out" / "summary.csv").write_text("case,status\nct,ok\n")


ROWS: List[Fault] = [
    Fault("batch-rerun-skips-finished-cases", lambda w: segment(w, "demo_phantom"), OK,
          ("1 of 1 cases segmented (1 finished by an earlier run, not redone)",),
          unchanged=("out/ct_tumor.nii.gz", "out/.crcseg"), prepare=earlier_segment),
    Fault("batch-other-settings-refused", lambda w: segment(w, "demo_phantom", "--min-component-ml", "2"), BAD_INPUT,
          ("made otherwise", "settings differ", "--overwrite"), unchanged=("out",), prepare=earlier_segment),
    Fault("batch-other-model-refused", lambda w: segment(w, w["batch/other_model"]), BAD_INPUT,
          ("made otherwise", "model differ", "--overwrite"), unchanged=("out",), prepare=earlier_segment),
    Fault("batch-summary-of-a-run-without-records", lambda w: segment(w, "demo_phantom"), BAD_INPUT,
          ("summary.csv", "not written by a resumable run", "--overwrite"), unchanged=("out",),
          prepare=summary_without_records),
    Fault("batch-killed-mid-case-is-redone", lambda w: segment(w, "demo_phantom"), OK, ("1 of 1 cases segmented;",),
          prepare=killed_mid_case),
    Fault("batch-damaged-record-is-redone", lambda w: segment(w, "demo_phantom"), OK, ("1 of 1 cases segmented;",),
          prepare=damaged_record),
    Fault("batch-edited-output-is-redone", lambda w: segment(w, "demo_phantom"), OK, ("1 of 1 cases segmented;",),
          prepare=changed_output),
    Fault("batch-segment-second-run-refused", lambda w: segment(w, "demo_phantom"), BAD_INPUT,
          ("is being written by process", "a run started earlier", "choose another output folder"),
          unchanged=("out",), prepare=earlier_segment, child="locked=out"),
    Fault("batch-guidance-second-run-refused", guidance, BAD_INPUT,
          ("is being written by process", "a run started earlier"), child="locked=out"),
    Fault("batch-evaluate-second-run-refused", lambda w: ["evaluate", w["cts"], w["cts"], "-o", w.out()], BAD_INPUT,
          ("crcseg evaluate: error", "is being written by process"), child="locked=out"),
    Fault("batch-overwrite-on-a-full-disk-keeps-the-earlier-result",
          lambda w: segment(w, "demo_phantom", "--overwrite"), FAILED, ("no space left",), unchanged=("out",),
          prepare=earlier_segment, child="fsize=200"),
    Fault("batch-new-case-on-a-full-disk-keeps-the-earlier-one", lambda w: two_cases(w, "batch/cts"), FAILED,
          ("no space left",), unchanged=("out/ct_tumor.nii.gz", "out/.crcseg/ct.json", "out/summary.csv"),
          prepare=lambda w: main(two_cases(w, "batch/cts/ct.nii.gz")), child="fsize=200"),
    Fault("batch-segment-read-only-output", lambda w: segment(w, "demo_phantom"), BAD_INPUT, ("permission",),
          unchanged=("out",), prepare=lambda w: (earlier_segment(w), _read_only(w)), child="readonly"),
]


def _read_only(w: Workspace) -> None:
    import os

    os.chmod(w.row / "out", 0o555)
    os.chmod(w.row, 0o555)  # the lock file beside the folder cannot be made either
