"""The fault catalogue: every bad input and fault, its exit code, its message, and what stays as it was.

One row per fault. A command row runs ``crcseg`` through its parser (``CRCTraining.cli.main``, in
this process, or in a child process where the fault needs one: a file-size limit, a dropped
capability, a kill); a call row runs the console/MRML API and expects a user error (``InputError``,
a file that exists, ...). After each row the files it names are byte-for-byte as before, and no command printed a Python traceback (only ``--debug``
does). The exit-code rule (``CRCTraining.cli``): 0 done, 1 the run failed, 2 bad input, 130 cancelled.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List

import faults_batch
import faults_inputs
import faults_model_fit
import faults_training
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from crcseg_child import run_crcseg
from fault_catalogue import BAD_INPUT, FAILED, OK, Argv, Call, Fault, Workspace, guidance, run_child, segment, snapshot

from CRCSegmentationLib.demo.ct import demo_model_path
from CRCTraining.cli import main, user_error_types
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import write_image
from OrganGuidanceLib.phantom import make_abdominal_phantom

REPO = Path(__file__).resolve().parents[1]
# Topic files: each adds the rows (and writes the inputs) of one class of fault.
TOPICS = (faults_inputs, faults_batch, faults_training, faults_model_fit)


# --- inputs, made once ---------------------------------------------------------------------------
def _write(image: Image, path: Path) -> str:
    write_image(image, path)
    return str(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fault_inputs")
    phantom = make_abdominal_phantom()
    ct, labels = phantom.ct, phantom.labels
    _write(ct, folder / "ct.nii.gz")
    _write(labels, folder / "organs.nii.gz")
    (folder / "cts").mkdir()
    for case in ("case_a", "case_b"):
        _write(ct, folder / "cts" / f"{case}.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(ct.array[0]), str(folder / "ct_2d.nii.gz"))
    four = sitk.JoinSeries([sitk.GetImageFromArray(ct.array[:8]), sitk.GetImageFromArray(ct.array[:8])])
    sitk.WriteImage(four, str(folder / "ct_4d.nii.gz"))
    (folder / "notes.nii.gz").write_text("these are my notes, not an image\n")
    (folder / "empty.nii.gz").write_bytes(b"")
    # MHA: ITK's NIfTI reader gives NaN and Inf back as finite numbers, so a NaN CT must come in another format.
    nan = ct.array.astype(np.float32)
    nan[10:12, 40:50, 40:50] = np.nan
    _write(ct.with_array(nan), folder / "ct_nan.mha")
    inf = ct.array.astype(np.float32)
    inf[10, 40, 40] = np.inf
    _write(ct.with_array(inf), folder / "ct_inf.mha")
    mr = (ct.array.astype(np.float32) + 1024.0) / 4.0  # an MR-like 0..~1000 intensity range
    _write(ct.with_array(mr), folder / "mr.nii.gz")
    negative = labels.array.astype(np.int16)
    negative[0, 0, 0] = -3
    _write(labels.with_array(negative), folder / "organs_negative.nii.gz")
    _write(labels.with_array(labels.array.astype(np.float32) + 0.5), folder / "organs_float.nii.gz")
    _write(Image(labels.array, labels.spacing, tuple(o + 5000.0 for o in labels.origin), labels.direction),
           folder / "organs_elsewhere.nii.gz")
    no_gi = np.where(np.isin(labels.array, [6, 18, 19, 20]), 0, labels.array).astype(labels.array.dtype)
    _write(labels.with_array(no_gi), folder / "organs_no_gi.nii.gz")
    (folder / "convention_list.json").write_text(json.dumps(["liver", "colon"]))
    (folder / "convention_broken.json").write_text('{"1": "liver",')
    (folder / "a_file").write_text("a file, not a folder\n")
    rows, cols = np.ogrid[: ct.shape[1], : ct.shape[2]]  # a scanner's circular field of view, -3024 outside it
    outside = (rows - ct.shape[1] / 2) ** 2 + (cols - ct.shape[2] / 2) ** 2 > (0.47 * ct.shape[1]) ** 2
    _write(ct.with_array(np.where(outside[None], np.int16(-3024), ct.array).astype(np.int16)), folder / "ct_padded.nii.gz")
    _bundles(folder)
    _sam_files(folder)
    for topic in TOPICS:
        topic.make_inputs(folder)
    return folder


def _bundles(folder: Path) -> None:
    demo = demo_model_path()
    checkpoint = "fold_all/checkpoint_final.pth"

    def copy(name: str, **metadata) -> Path:
        target = folder / name
        shutil.copytree(demo, target)
        if metadata:
            path = target / "crcseg_model.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), **metadata}))
        return target

    tampered = copy("bundle_tampered")
    with open(tampered / checkpoint, "r+b") as stream:
        stream.seek(2000)
        stream.write(b"\x00" * 64)
    copy("bundle_newer", format_version=99)
    copy("bundle_hcf", kind="hcf")
    results = folder / "results" / "nnUNetTrainerAGCRC__nnUNetPlans__3d_fullres"
    shutil.copytree(demo, results, ignore=shutil.ignore_patterns("crcseg_model.json"))
    truncated = folder / "results_truncated" / results.name
    shutil.copytree(results, truncated)
    data = (truncated / checkpoint).read_bytes()
    (truncated / checkpoint).write_bytes(data[: len(data) // 3])
    foreign = folder / "results_foreign" / results.name
    shutil.copytree(results, foreign)
    torch.save({"state_dict": {"w": torch.zeros(3)}}, foreign / checkpoint)
    channels = folder / "results_channels" / results.name
    shutil.copytree(results, channels)
    dataset = json.loads((channels / "dataset.json").read_text())
    dataset["channel_names"] = {"0": "CT"}
    dataset.pop("channel_descriptions", None)
    (channels / "dataset.json").write_text(json.dumps(dataset))
    badly_named = folder / "not_a_results_folder"
    shutil.copytree(results, badly_named)


def _sam_files(folder: Path) -> None:
    """A ViT-L-shaped SAM state dict (width 1024, 24 blocks) and a truncated U-SAM checkpoint."""
    fake = {"image_encoder.pos_embed": torch.zeros(1, 4, 4, 1024)}
    fake.update({f"image_encoder.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(24)})
    torch.save(fake, folder / "sam_vit_l.pth")
    (folder / "usam_truncated.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    from CRCTraining.usam.data import extract_phantom_slices

    extract_phantom_slices(folder / "slices", 2, seed=0)


# --- the rows ------------------------------------------------------------------------------------
def earlier_guidance(w: Workspace) -> None:
    assert main(guidance(w)) == OK


def read_only_output(w: Workspace) -> None:
    (w.row / "out").mkdir()
    os.chmod(w.row / "out", 0o555)
    os.chmod(w.row, 0o555)  # the staging folder beside it cannot be made either


def earlier_tumor(w: Workspace) -> None:
    (w.row / "out").mkdir()
    (w.row / "out" / "ct_tumor.nii.gz").write_bytes(b"an earlier result")


def _usam_checkpoint_from_nnunet(w: Workspace) -> Argv:
    return ["usam-evaluate", str(demo_model_path() / "fold_all" / "checkpoint_final.pth"), w["slices"],
            "-o", w.out(), "--device", "cpu"]


def _refine_outside(w: Workspace) -> Call:
    from CRCSegmentationLib.logic import PointRefinementLogic
    from CRCSegmentationLib.mrml_points import point_list_node
    from CRCSegmentationLib.networks.usam import USAMConfig, build_usam
    from OrganGuidanceLib.io import read_image
    from OrganGuidanceLib.mrml import add_volume_node, new_scene

    scene = new_scene()
    ct_node = add_volume_node(scene, read_image(w["ct.nii.gz"]), "CT")
    logic = PointRefinementLogic(scene)
    logic.set_model(build_usam(USAMConfig(image_size=32)), "cpu")
    positive = point_list_node(scene, "positive", create=True)
    positive.AddControlPoint([5000.0, 5000.0, 5000.0])
    return lambda: logic.refine(ct_node, None, positive, None)


def _labelmap_as_ct(w: Workspace) -> Call:
    from CRCSegmentationLib.logic import CRCSegmentationLogic, CRCSegmentationSettings
    from OrganGuidanceLib.io import read_image
    from OrganGuidanceLib.mrml import add_volume_node, new_scene

    scene = new_scene()
    node = add_volume_node(scene, read_image(w["organs.nii.gz"]), "organs", labelmap=True)
    return lambda: CRCSegmentationLogic(scene).process(node, CRCSegmentationSettings(model="demo_phantom"))


def _export_into_existing(w: Workspace) -> Call:
    from CRCTraining.nnunet.export import export_bundle

    folder = Path(w["results/nnUNetTrainerAGCRC__nnUNetPlans__3d_fullres"])
    return lambda: export_bundle(folder, w.row / "taken", folds=("all",))


def _export_badly_named(w: Workspace) -> Call:
    from CRCTraining.nnunet.export import export_bundle

    return lambda: export_bundle(Path(w["not_a_results_folder"]), Path(w.out("bundle")), folds=("all",))


def _guidance_mismatched_geometry(w: Workspace) -> Call:
    """The MRML logic: an organ label map on another grid that does not overlap the CT."""
    from OrganGuidanceLib.io import read_image
    from OrganGuidanceLib.logic import OrganGuidanceLogic, OrganGuidanceSettings, OrganSourceChoice
    from OrganGuidanceLib.mrml import add_volume_node, new_scene

    scene = new_scene()
    ct_node = add_volume_node(scene, read_image(w["ct.nii.gz"]), "CT")
    organs = add_volume_node(scene, read_image(w["organs_elsewhere.nii.gz"]), "organs", labelmap=True)
    settings = OrganGuidanceSettings(primary=OrganSourceChoice(kind="node", node=organs))
    return lambda: OrganGuidanceLogic(scene).process(ct_node, settings)


BASE_ROWS: List[Fault] = [
    # guidance: the image
    Fault("guidance-2d-image", lambda w: guidance(w, "ct_2d.nii.gz"), BAD_INPUT, ("2d",)),
    Fault("guidance-4d-image", lambda w: guidance(w, "ct_4d.nii.gz"), BAD_INPUT, ("4d",)),
    Fault("guidance-not-an-image", lambda w: guidance(w, "notes.nii.gz"), BAD_INPUT, ("notes.nii.gz", "cannot")),
    Fault("guidance-empty-file", lambda w: guidance(w, "empty.nii.gz"), BAD_INPUT, ("empty.nii.gz",)),
    Fault("guidance-missing-file", lambda w: guidance(w, "no_such_ct.nii.gz"), BAD_INPUT, ("no_such_ct.nii.gz",)),
    Fault("guidance-nan-voxels", lambda w: guidance(w, "ct_nan.mha"), BAD_INPUT, ("nan",)),
    Fault("guidance-inf-voxels", lambda w: guidance(w, "ct_inf.mha"), BAD_INPUT, ("inf",)),
    Fault("guidance-mr-not-ct", lambda w: guidance(w, "mr.nii.gz"), BAD_INPUT, ("not a ct",)),
    # guidance: the organ masks
    Fault("guidance-negative-labels", lambda w: guidance(w, organs="organs_negative.nii.gz"), BAD_INPUT, ("negative",)),
    Fault("guidance-float-labels", lambda w: guidance(w, organs="organs_float.nii.gz"), BAD_INPUT, ("integer",)),
    Fault("guidance-no-overlap", lambda w: guidance(w, organs="organs_elsewhere.nii.gz"), BAD_INPUT, ("overlap",)),
    Fault("guidance-empty-ooi", lambda w: guidance(w, organs="organs_no_gi.nii.gz"), BAD_INPUT, ("organ",)),
    Fault("guidance-convention-list", lambda w: guidance(w, "ct.nii.gz", "organs.nii.gz", "--convention",
                                                         w["convention_list.json"]),
          BAD_INPUT, ("json object", "list")),
    Fault("guidance-convention-broken-json", lambda w: guidance(w, "ct.nii.gz", "organs.nii.gz", "--convention",
                                                                w["convention_broken.json"]),
          BAD_INPUT, ("not valid json",)),
    Fault("guidance-convention-unknown", lambda w: guidance(w, "ct.nii.gz", "organs.nii.gz", "--convention", "wrod"),
          BAD_INPUT, ("wrod",)),
    Fault("guidance-totalsegmentator-not-installed", guidance, BAD_INPUT, ("totalsegmentator is not installed",),
          hidden=("totalsegmentator", "totalsegmentator.map_to_binary")),
    Fault("guidance-ct-padded-outside-the-field-of-view", lambda w: guidance(w, "ct_padded.nii.gz"), OK,
          ("organ guidance done",)),
    Fault("guidance-convention-count", lambda w: guidance(w, "ct.nii.gz", "organs.nii.gz", "--convention", "word",
                                                          "totalsegmentator"),
          BAD_INPUT, ("--convention", "one per --organs")),
    # guidance: the output
    Fault("guidance-output-is-a-file", lambda w: ["guidance", w["ct.nii.gz"], "--organs", w["organs.nii.gz"],
                                                  "-o", w["a_file"]], BAD_INPUT, ("is a file",)),
    Fault("guidance-existing-results", guidance, BAD_INPUT, ("--overwrite",), unchanged=("out",),
          prepare=earlier_guidance),
    Fault("guidance-read-only-output", guidance, BAD_INPUT, ("permission",), unchanged=("out",),
          prepare=read_only_output, child="readonly"),
    Fault("guidance-disk-full", lambda w: guidance(w, "ct.nii.gz", "organs.nii.gz", "--write-cropped", "--overwrite"),
          FAILED, ("incomplete", "disk full"), unchanged=("out",), prepare=earlier_guidance, child="fsize"),
    Fault("guidance-mrml-mismatched-geometry", _guidance_mismatched_geometry, BAD_INPUT, ("overlap",)),
    # segmentation: inputs and models
    Fault("segment-one-ct-one-organ-file", lambda w: segment(w, "demo_phantom"), OK, ("1 of 1 cases segmented",)),
    Fault("segment-organ-file-for-a-folder", lambda w: segment(w, "demo_phantom", ct=w["cts"]), BAD_INPUT,
          ("is a file", "2 cts")),
    Fault("segment-existing-result", lambda w: segment(w, "demo_phantom"), BAD_INPUT, ("--overwrite",),
          unchanged=("out",), prepare=earlier_tumor),
    Fault("segment-no-such-model", lambda w: segment(w, "demo_phantomm"), BAD_INPUT,
          ("demo_phantomm", "neither a model folder nor a catalogue model")),
    Fault("segment-tampered-checkpoint", lambda w: segment(w, w["bundle_tampered"]), BAD_INPUT,
          ("sha-256", "corrupt or were changed")),
    Fault("segment-truncated-checkpoint", lambda w: segment(w, w["results_truncated/nnUNetTrainerAGCRC__nnUNetPlans__3d_fullres"]),
          BAD_INPUT, ("cannot be loaded",)),
    Fault("segment-foreign-checkpoint", lambda w: segment(w, w["results_foreign/nnUNetTrainerAGCRC__nnUNetPlans__3d_fullres"]),
          BAD_INPUT, ("not an nnu-net checkpoint",)),
    Fault("segment-channel-count-differs", lambda w: segment(w, w["results_channels/nnUNetTrainerAGCRC__nnUNetPlans__3d_fullres"]),
          BAD_INPUT, ("input channels",)),
    Fault("segment-newer-bundle-format", lambda w: segment(w, w["bundle_newer"]), BAD_INPUT, ("format 99", "newer")),
    Fault("segment-kind-not-supported", lambda w: segment(w, w["bundle_hcf"]), BAD_INPUT, ("kind 'hcf'",)),
    Fault("segment-cuda-without-gpu", lambda w: segment(w, "demo_phantom")[:-2] + ["--device", "cuda"], BAD_INPUT,
          ("no cuda gpu",)),
    Fault("segment-mps-without-gpu", lambda w: segment(w, "demo_phantom")[:-2] + ["--device", "mps"], BAD_INPUT,
          ("no apple gpu (mps)",)),
    Fault("segment-empty-input-folder", lambda w: ["segment", str(w.row), "-m", "demo_phantom", "-o", w.out()],
          BAD_INPUT, ("no image files",)),
    Fault("segment-2d-case-in-batch", lambda w: segment(w, "demo_phantom", ct="ct_2d.nii.gz"), FAILED,
          ("0 of 1 cases segmented", "failed", "2d")),
    Fault("segment-output-is-a-file", lambda w: segment(w, "demo_phantom")[:4] + ["-o", w["a_file"]], BAD_INPUT,
          ("is a file",)),
    Fault("segment-mrml-labelmap-as-ct", _labelmap_as_ct, BAD_INPUT, ("not an image volume",)),
    # training
    Fault("plan-without-workdir", lambda w: ["plan", "-d", "950"], BAD_INPUT, ("nnu-net folders are not set",)),
    Fault("train-pretrained-missing", lambda w: ["train", "-d", "950", "--workdir", w.out("work"), "--pretrained",
                                                 w.out("no_such.pth")], BAD_INPUT, ("pretrained weights", "no such file")),
    Fault("train-cuda-without-gpu", lambda w: ["train", "-d", "950", "--workdir", w.out("work"), "--device", "cuda"],
          BAD_INPUT, ("no cuda gpu",)),
    Fault("prepare-missing-source", lambda w: ["prepare", w.out("no_such_dataset"), "-d", "950", "--name", "X",
                                               "--workdir", w.out("work"), "--organs", w["cts"]],
          BAD_INPUT, ("no_such_dataset",)),
    Fault("export-unknown-dataset", lambda w: ["export", "-d", "950", "--workdir", w.out("work"), "-o", w.out("b")],
          BAD_INPUT, ("dataset id 950", "no such nnu-net dataset")),
    Fault("export-into-an-existing-folder", _export_into_existing, BAD_INPUT, ("exists already",), unchanged=("taken",),
          prepare=lambda w: (w.row / "taken").mkdir() or (w.row / "taken" / "mine.txt").write_text("keep me")),
    Fault("export-badly-named-folder", _export_badly_named, BAD_INPUT, ("<trainer>__<plans>__<configuration>",)),
    Fault("evaluate-missing-folders", lambda w: ["evaluate", w.out("no_pred"), w.out("no_ref"), "-o", w.out()],
          BAD_INPUT, ("no_ref", "does not exist")),
    # U-SAM
    Fault("usam-train-vit-l-checkpoint", lambda w: ["usam-train", w["slices"], "-o", w.out(), "--sam-checkpoint",
                                                    w["sam_vit_l.pth"], "--iterations", "1", "--device", "cpu"],
          BAD_INPUT, ("vit-l", "vit-b")),
    Fault("usam-evaluate-truncated-checkpoint", lambda w: ["usam-evaluate", w["usam_truncated.pt"], w["slices"],
                                                           "-o", w.out(), "--device", "cpu"],
          BAD_INPUT, ("usam_truncated.pt",)),
    Fault("usam-evaluate-nnunet-checkpoint", _usam_checkpoint_from_nnunet, BAD_INPUT, ("checkpoint_final.pth",)),
    Fault("usam-point-outside-volume", _refine_outside, BAD_INPUT, ("outside",)),
]


FAULTS: List[Fault] = BASE_ROWS + [row for topic in TOPICS for row in topic.ROWS]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_fault(fault: Fault, inputs: Path, tmp_path: Path, capsys, monkeypatch):
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(name, raising=False)
    workspace = Workspace(inputs, tmp_path)
    if fault.prepare is not None:
        fault.prepare(workspace)
        capsys.readouterr()
    before = snapshot(tmp_path, fault.unchanged)
    for name in fault.hidden:
        monkeypatch.setitem(sys.modules, name, None)  # "import name" now raises ImportError
    made = fault.make(workspace)
    if callable(made):
        with pytest.raises(user_error_types()) as raised:
            made()
        code, output = BAD_INPUT, str(raised.value)
    elif fault.child:
        code, output = run_child(made, fault.child, tmp_path)
    else:
        code = main(made)
        captured = capsys.readouterr()
        output = captured.out + captured.err
    assert code == fault.code, output
    assert all(word.lower() in output.lower() for word in fault.words), output
    assert "Traceback (most recent call last)" not in output, output
    assert snapshot(tmp_path, fault.unchanged) == before


def test_the_catalogue_has_eighty_rows_with_unique_names():
    assert len(FAULTS) >= 80 and len({f.id for f in FAULTS}) == len(FAULTS)


def test_debug_shows_the_traceback(inputs, tmp_path, capsys):
    assert main(["--debug", "guidance", str(inputs / "ct_2d.nii.gz"), "--organs", str(inputs / "organs.nii.gz"),
                 "-o", str(tmp_path / "out")]) == BAD_INPUT
    assert "Traceback (most recent call last)" in capsys.readouterr().err


# --- a killed run, then rerun, gives the uninterrupted result ---------------------------------------
def _arrays(folder: Path) -> Dict[str, np.ndarray]:
    from OrganGuidanceLib.io import read_image

    return {p.name: read_image(p).array for p in sorted(folder.glob("*.nii.gz"))}


@pytest.mark.parametrize("delay_s", [0.5, 2.0, 3.5])
def test_guidance_killed_then_rerun_equals_an_uninterrupted_run(inputs, tmp_path, delay_s):
    argv = ["guidance", str(inputs / "ct.nii.gz"), "--organs", str(inputs / "organs.nii.gz"), "--no-png"]
    assert main(argv + ["-o", str(tmp_path / "reference")]) == OK
    target = tmp_path / "killed"
    started = time.monotonic()
    run_crcseg(argv + ["-o", str(target)], tmp_path, kill_when=lambda: time.monotonic() - started > delay_s)
    # Either nothing of the killed run is in place, or all of it; never a mixture.
    present = sorted(p.name for p in target.glob("*")) if target.exists() else []
    assert present in ([], sorted(p.name for p in (tmp_path / "reference").glob("*"))), present
    assert main(argv + ["-o", str(target), "--overwrite"]) == OK
    reference, rerun = _arrays(tmp_path / "reference"), _arrays(target)
    assert reference.keys() == rerun.keys() and all(np.array_equal(reference[k], rerun[k]) for k in reference)
    assert not list(tmp_path.glob(".tmp-*"))  # the rerun removed the killed run's staging folder
