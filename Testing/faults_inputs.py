"""Fault catalogue rows: input integrity: cut-short images, DICOM series with gaps or mixed series, file names the OS gives.

The reader every command uses (``OrganGuidanceLib.io.read_image``) refuses an image whose data ends early and a
DICOM folder that is not one regular series, naming the file or folder and what is wrong; ``crcseg segment``
fails only that case of a batch. A file name that is not UTF-8 is read (never an abort: such rows run in a
child process). ``crcseg segment`` and ``prepare`` take DICOM series folders as ``guidance`` does.
"""
from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path
from typing import List

import numpy as np
from dicom_writer import small_ct, write_series
from fault_catalogue import BAD_INPUT, FAILED, OK, Argv, Fault, Workspace, guidance, segment

from OrganGuidanceLib.io import read_image, write_image

TOPIC = "inputs"
NOT_UTF8 = b"ct_\xff.nii.gz"


def _cut(source: Path, target: Path, fraction: float = 2 / 3) -> None:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])


def make_inputs(folder: Path) -> None:
    """Cut-short copies of the phantom CT, DICOM series of it (regular, with a gap, ...), odd file names."""
    here = folder / TOPIC
    here.mkdir(exist_ok=True)
    ct = read_image(folder / "ct.nii.gz")
    labels = read_image(folder / "organs.nii.gz")
    _cut(folder / "ct.nii.gz", here / "ct_cut.nii.gz")
    write_image(ct, here / "ct.nii", compress=False)
    _cut(here / "ct.nii", here / "ct_cut.nii")
    (here / "ct_half_stream.nii.gz").write_bytes(gzip.compress((here / "ct.nii").read_bytes()[:1_000_000]))
    for suffix in (".nrrd", ".mha"):
        write_image(ct, here / f"ct{suffix}")
        _cut(here / f"ct{suffix}", here / f"ct_cut{suffix}")
    # DICOM: the whole phantom CT (its organ map fits it), and small blocks for the series that are refused
    write_series(ct, here / "series")
    block = small_ct(ct)
    write_series(block, here / "series_gap", slices=[k for k in range(12) if k != 5])
    write_series(block, here / "series_duplicate")
    shutil.copy(here / "series_duplicate" / "IM01_01_0004.dcm", here / "series_duplicate" / "IM01_01_0004 (1).dcm")
    write_series(block, here / "series_interleaved", slices=range(0, 12, 2))
    write_series(block, here / "series_interleaved", acquisition=2, slices=range(0, 12, 2), z_shift_mm=2.5)
    write_series(block, here / "series_two", series=2, description="arterial")
    write_series(block, here / "series_two", series=3, description="portal venous", slices=range(10))
    write_series(block, here / "series_tilted", tilt_degrees=12.0)
    # batches: two series folders; a mixed folder where one case of three is fine
    for case in ("s1", "s2"):
        write_series(ct, here / "batch_two" / case, series=int(case[1]))
    shutil.copytree(here / "series", here / "batch_mixed" / "good")
    write_series(block, here / "batch_mixed" / "gap", slices=[k for k in range(12) if k != 5])
    shutil.copy(here / "ct_cut.nii.gz", here / "batch_mixed" / "cut.nii.gz")
    (here / "batch_mixed" / "._good").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (here / "batch_mixed" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (here / "organs").mkdir()
    for case in ("s1", "s2", "good", "gap", "cut", "tümor 1"):
        shutil.copy(folder / "organs.nii.gz", here / "organs" / f"{case}.nii.gz")
    # file names: not UTF-8 (bytes as the OS gives them), spaces and non-ASCII letters, a leading dash
    shutil.copy(folder / "ct.nii.gz", os.fsencode(here) + b"/" + NOT_UTF8)
    shutil.copy(folder / "ct.nii.gz", here / "tümor 1.nii.gz")
    shutil.copy(folder / "ct.nii.gz", here / "-ct.nii.gz")
    # prepare: an MSD-style dataset whose image is a DICOM series folder
    dataset = here / "Task99_Dicom"
    shutil.copytree(here / "series", dataset / "imagesTr" / "case_001")
    tumor = np.zeros(labels.shape, np.uint8)
    tumor[30:34, 60:66, 60:66] = 1
    write_image(labels.with_array(tumor), dataset / "labelsTr" / "case_001.nii.gz")
    (dataset / "organsTr").mkdir()
    shutil.copy(folder / "organs.nii.gz", dataset / "organsTr" / "case_001.nii.gz")


def _in(name: str) -> str:
    return f"{TOPIC}/{name}"


def _guidance(name: str):
    return lambda w: guidance(w, _in(name))


def _segment(name: str):
    return lambda w: segment(w, "demo_phantom", ct=_in(name))


def _not_utf8(w: Workspace) -> str:
    return os.fsdecode(os.fsencode(w[TOPIC]) + b"/" + NOT_UTF8)


def _batch(w: Workspace, name: str) -> Argv:
    return ["segment", w[_in(name)], "-m", "demo_phantom", "-o", w.out(), "--organs", w[_in("organs")],
            "--no-mirroring", "--device", "cpu"]


def _prepare(w: Workspace) -> Argv:
    return ["prepare", w[_in("Task99_Dicom")], "-d", "951", "--name", "Dicom", "--workdir", w.out("work"),
            "--organs", w[_in("Task99_Dicom/organsTr")]]


CUT = ("ends early", "cut short")

ROWS: List[Fault] = [
    # images whose data ends early: refused by guidance (exit 2), the case fails in segment (exit 1)
    Fault("input-guidance-cut-short-nii-gz", _guidance("ct_cut.nii.gz"), BAD_INPUT, ("ct_cut.nii.gz", *CUT, "%")),
    Fault("input-guidance-cut-short-nii", _guidance("ct_cut.nii"), BAD_INPUT, ("ct_cut.nii", *CUT, "%")),
    Fault("input-guidance-gzip-of-too-little-data", _guidance("ct_half_stream.nii.gz"), BAD_INPUT,
          ("ct_half_stream.nii.gz", "ends early", "999.6 kb of 2.1 mb")),
    Fault("input-guidance-cut-short-nrrd", _guidance("ct_cut.nrrd"), BAD_INPUT, ("ct_cut.nrrd", *CUT)),
    Fault("input-guidance-cut-short-mha", _guidance("ct_cut.mha"), BAD_INPUT, ("ct_cut.mha", *CUT)),
    Fault("input-segment-cut-short-nii-gz", _segment("ct_cut.nii.gz"), FAILED,
          ("0 of 1 cases segmented", "ct_cut.nii.gz", *CUT)),
    Fault("input-segment-cut-short-nii", _segment("ct_cut.nii"), FAILED, ("0 of 1 cases segmented", "ct_cut.nii", *CUT)),
    # DICOM series folders
    Fault("input-guidance-dicom-series", _guidance("series"), OK, ("organ guidance done",)),
    Fault("input-guidance-dicom-gap", _guidance("series_gap"), BAD_INPUT,
          ("series_gap", "gap between z = 152.5 and 162.5 mm", "spacing 5.0 mm elsewhere", "1 slice missing")),
    Fault("input-guidance-dicom-duplicate-slice", _guidance("series_duplicate"), BAD_INPUT,
          ("series_duplicate", "two slices at the same position: z = 152.5 mm", "IM01_01_0004 (1).dcm")),
    Fault("input-guidance-dicom-interleaved-acquisitions", _guidance("series_interleaved"), BAD_INPUT,
          ("series_interleaved", "two interleaved acquisitions", "acquisition number 1 (6 slices, z = 132.5 to 182.5 mm)",
           "acquisition number 2 (6 slices, z = 135.0 to 185.0 mm)")),
    Fault("input-guidance-dicom-two-series-in-one-folder", _guidance("series_two"), BAD_INPUT,
          ("series_two", "holds 2 dicom series", 'series 2 "arterial" (12 slices)', 'series 3 "portal venous" (10 slices)',
           "one series per folder")),
    Fault("input-guidance-dicom-gantry-tilt", _guidance("series_tilted"), BAD_INPUT,
          ("series_tilted", "tilted by 12.00 degrees", "gantry tilt", "resample")),
    Fault("input-segment-dicom-series", _segment("series"), OK, ("1 of 1 cases segmented",)),
    Fault("input-segment-folder-of-two-series", lambda w: _batch(w, "batch_two"), OK, ("2 of 2 cases segmented",)),
    Fault("input-segment-batch-one-case-of-three-fine", lambda w: _batch(w, "batch_mixed"), FAILED,
          ("1 of 3 cases segmented", "gap: failed", "gap between", "cut: failed", "cut.nii.gz", "ends early")),
    Fault("input-segment-empty-folder-names-dicom", lambda w: ["segment", str(w.row), "-m", "demo_phantom", "-o", w.out()],
          BAD_INPUT, ("no image files", "or dicom series")),
    Fault("input-prepare-dicom-series-as-image", _prepare, OK, ("1 prepared", "0 failed")),
    # file names as the operating system gives them
    Fault("input-guidance-name-not-utf8", lambda w: guidance(w, _not_utf8(w)), OK, ("organ guidance done",),
          child="plain"),
    Fault("input-segment-name-not-utf8", lambda w: segment(w, "demo_phantom", ct=_not_utf8(w)), OK,
          ("1 of 1 cases segmented",), child="plain"),
    Fault("input-guidance-name-with-space-and-umlaut", _guidance("tümor 1.nii.gz"), OK, ("organ guidance done",)),
    Fault("input-guidance-name-with-leading-dash", _guidance("-ct.nii.gz"), OK, ("organ guidance done",)),
]
