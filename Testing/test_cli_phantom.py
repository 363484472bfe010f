"""``crcseg guidance``, ``segment`` and ``prepare`` through their parsers, on phantoms written to disk.

``test_cli_guidance.py`` runs ``guidance`` on the real CT (skipped without the shared data) and
``test_inference.py`` runs ``segment`` with a freshly trained bundle; here the same commands run on
the generated abdominal phantom and with the shipped demonstration model by its catalogue name.
Also the exit codes of two training-command failures: a failed case in ``prepare`` (1) and a usage
error in ``train`` (2). The whole recipe runs in ``test_training_end_to_end.py``.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from CRCTraining.cli import main as crcseg
from OrganGuidanceLib.guidance import GuidanceParameters, MOSSource, run_guidance
from OrganGuidanceLib.io import read_image, write_image
from OrganGuidanceLib.labels import load_convention
from OrganGuidanceLib.phantom import make_abdominal_phantom

MIN_DICE = 0.75  # test_tumor_demo.py: the demo model finds this phantom's tumor with Dice 0.93


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory):
    """The demo phantom (seed 0) as files: images/demo.nii.gz, organs/demo.nii.gz, references/demo.nii.gz."""
    root = tmp_path_factory.mktemp("phantom_cli")
    phantom = make_abdominal_phantom()
    write_image(phantom.ct, root / "images" / "demo.nii.gz")
    write_image(phantom.labels, root / "organs" / "demo.nii.gz")
    write_image(phantom.tumor, root / "references" / "demo.nii.gz")
    return root, phantom


def test_guidance_command_on_the_phantom_matches_run_guidance(phantom_files, tmp_path):
    root, phantom = phantom_files
    out = tmp_path / "guidance"
    code = crcseg(["guidance", str(root / "images" / "demo.nii.gz"), "--organs", str(root / "organs" / "demo.nii.gz"),
                   "-o", str(out), "--dilation-mm", "8", "--wall-mm", "2", "--no-png"])
    assert code == 0
    # the options reach the engine: the files are what run_guidance gives with the same parameters
    parameters = GuidanceParameters(dilation_mm=8.0, wall_width_mm=2.0)
    expected = run_guidance(phantom.ct, [MOSSource(phantom.labels, load_convention("totalsegmentator"))], parameters)
    for name in ("mos", "ooi", "ooi0", "bowel_wall"):
        written = read_image(out / f"{name}.nii.gz")
        assert written.same_grid(phantom.ct) and written.array.any(), name
        np.testing.assert_array_equal(written.array, getattr(expected, name).array, err_msg=name)
    ooi, ooi0 = read_image(out / "ooi.nii.gz").array > 0, read_image(out / "ooi0.nii.gz").array > 0
    assert ooi[ooi0].all() and ooi.sum() > ooi0.sum()
    assert ooi[phantom.tumor.array > 0].mean() > 0.95  # the tumor lies in the organs of interest
    summary = json.loads((out / "guidance.json").read_text())
    assert summary["parameters"]["dilation_mm"] == 8.0 and summary["parameters"]["wall_width_mm"] == 2.0
    assert set(summary["organs_present"].values()) >= {"colon", "small_bowel", "stomach", "duodenum"}
    assert (out / "crop_box.json").is_file()  # the body crop is on by default
    assert not (out / "guidance_overlay.png").exists()  # --no-png


def test_segment_command_with_the_catalogue_demo_model(phantom_files, tmp_path):
    root, phantom = phantom_files
    out = tmp_path / "segment"
    code = crcseg(["segment", str(root / "images"), "-m", "demo_phantom", "-o", str(out), "--organs",
                   str(root / "organs"), "--references", str(root / "references"), "--device", "cpu",
                   "--no-mirroring"])
    assert code == 0
    with open(out / "summary.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["case"], r["status"]) for r in rows] == [("demo", "ok")]
    predicted = read_image(out / "demo_tumor.nii.gz")
    assert predicted.same_grid(phantom.ct) and set(np.unique(predicted.array)) <= {0, 1}
    reference = phantom.tumor.array > 0
    mask = predicted.array > 0
    dice = 2 * (mask & reference).sum() / (mask.sum() + reference.sum())
    assert dice >= MIN_DICE
    assert float(rows[0]["dice"]) == pytest.approx(dice, abs=1e-4)  # --references reached the metrics
    voxel_ml = np.prod(phantom.ct.spacing_zyx) / 1000.0
    assert float(rows[0]["volume_ml"]) == pytest.approx(mask.sum() * voxel_ml, rel=1e-3)
    # a second run with other settings into the same folder is refused (exit code 2: bad input) unless --overwrite
    # (the same command again resumes: Testing/test_resumable_batches.py)
    assert crcseg(["segment", str(root / "images"), "-m", "demo_phantom", "-o", str(out), "--organs",
                   str(root / "organs"), "--device", "cpu", "--no-mirroring", "--min-component-ml", "1"]) == 2
    assert crcseg(["segment", str(root / "images"), "-m", "demo_phantom", "-o", str(out), "--organs",
                   str(root / "organs"), "--device", "cpu", "--no-mirroring", "--overwrite"]) == 0
    with open(out / "summary.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["case"], r["status"], r["dice"]) for r in rows] == [("demo", "ok", "")]  # no --references this time


def test_prepare_command_reports_a_failed_case_in_its_exit_code(tmp_path):
    from CRCTraining.data.phantoms_ct import make_phantom_dataset

    source = make_phantom_dataset(tmp_path / "source", num_cases=2, seed=5)
    organs = sorted((source / "organsTr").glob("*.nii.gz"))
    organs[1].unlink()  # the second case has no organ map
    argv = ["prepare", str(source), "--workdir", str(tmp_path / "work"), "-d", "613", "--name", "PhantomCLI",
            "--organs", str(source / "organsTr"), "--device", "cpu", "--dilation-mm", "4"]
    assert crcseg(argv) == 1  # one case of the batch failed
    folder = tmp_path / "work" / "nnUNet_raw" / "Dataset613_PhantomCLI"
    good = organs[0].name[: -len(".nii.gz")]
    assert sorted(p.name for p in (folder / "labelsTr").glob("*.nii.gz")) == [f"{good}.nii.gz"]
    assert len(list((folder / "imagesTr").glob(f"{good}_000?.nii.gz"))) == 3
    report = json.loads((folder / "prepare_report.json").read_text())
    assert list(report["failed"]) == [organs[1].name[: -len(".nii.gz")]] and report["num_training"] == 1
    description = json.loads((folder / "dataset.json").read_text())
    assert description["numTraining"] == 1 and description["agcrc"]["ooi"]["dilation_mm"] == 4.0
    assert description["labels"] == {"background": 0, "tumor": 1}  # no --ssl


def test_train_command_refuses_trainer_and_sampling_together(tmp_path, capsys):
    code = crcseg(["train", "--workdir", str(tmp_path / "work"), "-d", "613", "--trainer", "nnUNetTrainerAGCRC",
                   "--sampling", "uniform"])
    assert code == 2  # bad usage, reported in one line before anything runs
    assert "give --trainer or --sampling, not both" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()
