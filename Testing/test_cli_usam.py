"""``crcseg usam-slices | usam-train | usam-evaluate | usam-ablation`` through their parsers, on CPU.

Tiny phantom slice sets, a 64 x 64 input and 3 training iterations: the point is that every option
reaches the engine (the final checkpoint stores the settings it was trained with) and that each
command writes what it promises. ``test_usam_training.py`` checks the engines' numbers. The extended
Table 4 (points, box, box + 1 point, one prompt to 3D) runs on slices and on volumes with a random small
bundle (the wiring) and with the ideal ground-truth stand-in (the box and 3D numbers).
"""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from CRCSegmentationLib.networks.usam import USAM, USAMConfig
from CRCSegmentationLib.usam.bundle import write_usam_bundle
from CRCSegmentationLib.usam.checkpoint import read_usam_checkpoint
from CRCTraining.cli import main as crcseg
from CRCTraining.usam.data import INDEX_FILE
from CRCTraining.usam.evaluate import prompt_ablation
from CRCTraining.usam.train import CURVE, FINAL, LATEST, LOG
from OrganGuidanceLib.validation import InputError

SIZE, ITERATIONS = 64, 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Train and test slice sets from `usam-slices`, and a `usam-train` run on the first."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("usam_cli")
    for name, seed in (("train", "0"), ("test", "4")):
        assert crcseg(["usam-slices", "--phantom", "1", "--seed", seed, "-o", str(root / name)]) == 0
    argv = ["usam-train", str(root / "train"), "-o", str(root / "run"), "--iterations", str(ITERATIONS),
            "--batch-size", "2", "--image-size", str(SIZE), "--device", "cpu", "--threads", "2",
            "--no-augmentation", "--lr-decoder", "2e-3", "--points-per-class", "2", "--negatives", "0",
            "--seed", "3", "--checkpoint-every", "50"]  # > iterations: no 1 GB resume state
    assert crcseg(argv) == 0
    return root, argv


def test_usam_slices_writes_care_npz_slices_per_seed(run):
    root, _ = run
    contents = {}
    for name in ("train", "test"):
        files = sorted((root / name).glob("*.npz"))
        index = json.loads((root / name / INDEX_FILE).read_text())
        assert len(files) >= 10 and sum(len(v) for v in index["cases"].values()) == len(files)
        with np.load(files[len(files) // 2]) as npz:
            assert npz["image"].dtype == np.int16 and set(np.unique(npz["label"])) <= {0, 1, 2}
            contents[name] = npz["image"].copy()
    assert not np.array_equal(contents["train"], contents["test"])  # --seed reached the phantom generator


def test_usam_train_passes_every_option_and_skips_a_finished_run(run, capsys):
    root, argv = run
    output = root / "run"
    model, extra = read_usam_checkpoint(output / FINAL)
    assert model.config.image_size == SIZE
    settings = extra["training"]["settings"]
    assert extra["training"]["finished"] and extra["training"]["iteration"] == ITERATIONS
    expected = {"iterations": ITERATIONS, "batch_size": 2, "image_size": SIZE, "device": "cpu", "threads": 2,
                "augmentation": False, "lr_decoder": 2e-3, "lr_encoder": 1e-4, "per_class": 2, "negatives": 0,
                "seed": 3, "checkpoint_every": 50, "epochs": 100, "intensity": "hu", "workers": 0,
                "sam_checkpoint": None, "slices": str(root / "train"), "output": str(output)}
    assert {k: settings[k] for k in expected} == expected
    assert extra["history"].shape[0] == ITERATIONS
    with open(output / LOG) as stream:
        assert [int(row["iteration"]) for row in csv.DictReader(stream)] == list(range(ITERATIONS))
    assert (output / CURVE).stat().st_size > 1000 and not (output / LATEST).exists()
    capsys.readouterr()
    before = (output / FINAL).stat().st_mtime_ns
    assert crcseg(argv) == 0  # rerun: the run is finished, nothing is trained again
    assert "already finished" in capsys.readouterr().out
    assert (output / FINAL).stat().st_mtime_ns == before


def test_usam_evaluate_and_ablation_write_their_reports(run, tmp_path):
    root, _ = run
    checkpoint, test = root / "run" / FINAL, tmp_path / "test"
    test.mkdir()
    for path in sorted((root / "test").glob("*.npz"))[4:8]:  # 4 slices of the test set keep it fast
        shutil.copy(path, test)
    code = crcseg(["usam-evaluate", str(checkpoint), str(test), "--points-per-class", "1", "--negatives", "0",
                   "--batch-size", "4", "--device", "cpu", "-o", str(tmp_path / "evaluation")])
    assert code == 0
    evaluated = json.loads((tmp_path / "evaluation" / "usam_evaluation.json").read_text())
    direct = prompt_ablation({1: checkpoint}, test, negatives=0, batch_size=4, device=torch.device("cpu"),
                             progress=False)
    assert evaluated == [e.to_dict() for e in direct]  # the options reached the evaluator
    assert (evaluated[0]["points_per_class"], evaluated[0]["negatives"]) == (1, 0)
    assert evaluated[0]["slices"] == 4
    with open(tmp_path / "evaluation" / "usam_evaluation.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["class"] for r in rows] == ["normal rectum", "tumor", "mean"]
    assert all(r["points_per_class"] == "1" and r["negatives"] == "0" for r in rows)

    other = tmp_path / "other.pt"  # stands for a model trained with 1 point per class (a link: 400 MB)
    other.symlink_to(checkpoint)
    code = crcseg(["usam-ablation", str(checkpoint), str(test), "--points", "0", "1", "--model-for", "1", str(other),
                   "--negatives", "0", "--batch-size", "4", "--device", "cpu", "--no-box", "--no-3d", "--draws", "0",
                   "-o", str(tmp_path / "ablation")])
    assert code == 0
    ablation = json.loads((tmp_path / "ablation" / "usam_ablation.json").read_text())
    assert [(e["points_per_class"], e["checkpoint"]) for e in ablation] == [(0, str(checkpoint)), (1, str(other))]
    assert {**ablation[1], "checkpoint": ""} == {**evaluated[0], "checkpoint": ""}  # same weights, same numbers
    assert (tmp_path / "ablation" / "usam_ablation.csv").read_text().count("\n") == 1 + 2 * 3


# --- the extended Table 4 (issue 20): points, box, box + 1 point, one prompt to 3D ------------------------------
TABLE4_ROWS = ["no prompt", "1 point +1 neg.", "3 points +1 neg.", "5 points +1 neg.", "box", "box + 1 point +1 neg."]


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    """A random small U-SAM as a bundle folder (a model source like the shipped one; the wiring, not Dice)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("usam_bundle") / "small"
    return write_usam_bundle(folder, USAM(USAMConfig.preset("small")), "small", "0.0.1", "random test model", True)


@pytest.fixture(scope="module")
def phantom_volumes(tmp_path_factory):
    """Two phantom cases as CT + label map files, with label values other than CARE's (rectum 5, tumor 7)."""
    from CRCTraining.data.phantoms_ct import make_phantom_case
    from CRCTraining.usam.data import phantom_care_label
    from OrganGuidanceLib.io import write_image

    root = tmp_path_factory.mktemp("usam_volumes")
    cases = []
    for index in range(2):
        phantom = make_phantom_case(index, seed=9)
        colon = next(v for v, n in phantom.label_names.items() if n == "colon")
        care = phantom_care_label(phantom.labels, phantom.tumor, colon)
        label = np.where(care == 1, 5, np.where(care == 2, 7, 0)).astype(np.uint8)
        write_image(phantom.ct, root / "images" / f"case{index}_0000.nii.gz")
        write_image(phantom.ct.with_array(label), root / "labels" / f"case{index}.nii.gz")
        cases.append(phantom)
    return root, cases


def _markdown_rows(text: str) -> list:
    return [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "---" not in line]


def test_usam_ablation_on_slices_gives_every_row_and_3d_per_case(small_bundle, tmp_path, capsys):
    slices = tmp_path / "slices"
    assert crcseg(["usam-slices", "--phantom", "1", "--seed", "5", "-o", str(slices)]) == 0
    capsys.readouterr()
    code = crcseg(["usam-ablation", str(small_bundle), str(slices), "--device", "cpu", "--threads", "1",
                   "-o", str(tmp_path / "out")])
    assert code == 0
    printed = _markdown_rows(capsys.readouterr().out)
    assert printed[1:7] == TABLE4_ROWS  # after the header; each row once, in Table 4's order
    assert printed[7].startswith("one prompt to 3D (3 points; 3D, mean of 1 cases)")
    rows = json.loads((tmp_path / "out" / "usam_ablation.json").read_text())
    assert [r["prompt"] for r in rows] == TABLE4_ROWS
    assert [(r["points_per_class"], r["negatives"], r["box"]) for r in rows] == [
        (0, 0, False), (1, 1, False), (3, 1, False), (5, 1, False), (0, 0, True), (1, 1, True)]
    three_d = json.loads((tmp_path / "out" / "usam_ablation_3d.json").read_text())
    assert three_d["source"] == str(small_bundle) and len(three_d["cases"]) == 1
    assert three_d["mean_dice"] == pytest.approx(three_d["cases"][0]["dice"])
    with open(tmp_path / "out" / "usam_ablation_3d.csv") as stream:
        case = next(csv.DictReader(stream))
    assert case["case"].startswith("phantom5_") and 0.0 <= float(case["dice"]) <= 1.0
    assert int(case["reference_slices"]) >= 3
    assert (tmp_path / "out" / "usam_ablation.md").read_text().startswith("| Prompt | Normal rectum Dice (%)")


def test_usam_ablation_on_volumes_reads_the_named_labels(small_bundle, phantom_volumes, tmp_path, capsys):
    root, cases = phantom_volumes
    code = crcseg(["usam-ablation", str(small_bundle), "--images", str(root / "images"), "--labels",
                   str(root / "labels"), "--rectum-label", "5", "--tumor-label", "7", "--points", "1", "3",
                   "--negatives", "0", "--device", "cpu", "-o", str(tmp_path / "out")])
    assert code == 0
    capsys.readouterr()
    rows = json.loads((tmp_path / "out" / "usam_ablation.json").read_text())
    assert [r["prompt"] for r in rows] == ["1 point", "3 points", "box", "box + 1 point"]
    tumor_slices = sum(int((c.tumor.array > 0).any(axis=(1, 2)).sum()) for c in cases)
    three_d = json.loads((tmp_path / "out" / "usam_ablation_3d.json").read_text())["cases"]
    assert [c["case"] for c in three_d] == ["case0", "case1"]
    assert sum(c["reference_slices"] for c in three_d) == tumor_slices  # --tumor-label 7 was read as the tumor
    tumor_pixels = sum(int((c.tumor.array > 0).sum()) for c in cases)
    assert all(r["classes"]["tumor"]["reference"] > 0 for r in rows) and tumor_pixels > 0
    code = crcseg(["usam-ablation", str(small_bundle), "--images", str(root / "images"), "--labels",
                   str(root / "labels"), "--device", "cpu"])
    assert code != 0 and "--tumor-label" in capsys.readouterr().err


def test_box_rows_and_3d_with_an_ideal_segmenter(phantom_volumes, tmp_path):
    """The ground-truth stand-in answers the tumor under a point or in the box: tumor Dice ~ 1 in every prompted row."""
    from usam_stand_ins import GroundTruthSliceModel

    from CRCTraining.usam.data import extract_volume_slices
    from CRCTraining.usam.evaluate import PromptSetting, evaluate_prompts, evaluation_dataset
    from CRCTraining.usam.evaluate_3d import evaluate_prompt_to_3d, volume_cases

    root, cases = phantom_volumes
    phantom = cases[0]
    model = GroundTruthSliceModel(phantom.ct.array, phantom.tumor.array)
    (tmp_path / "labels").mkdir()
    (tmp_path / "images").mkdir()
    for sub, name in (("images", "case0_0000.nii.gz"), ("labels", "case0.nii.gz")):
        (tmp_path / sub / name).symlink_to(root / sub / name)
    slices = extract_volume_slices(tmp_path / "slices", tmp_path / "images", tmp_path / "labels", [5], [7])
    settings = [PromptSetting(0), PromptSetting(1), PromptSetting(0, 0, box=True), PromptSetting(1, 0, box=True)]
    rows = evaluate_prompts(model, evaluation_dataset(slices, model), settings, batch_size=1,
                            device=torch.device("cpu"), progress=False)
    tumor = model.config.class_names.index("tumor")
    assert rows[0].dice[tumor] == 0.0  # no prompt: the stand-in answers nothing
    assert all(row.dice[tumor] > 0.97 for row in rows[1:]), [row.dice[tumor] for row in rows]
    # Points drawn at random as CARE evaluates, 3 draws per slice: the prompted rows still find the tumor
    drawn = evaluate_prompts(model, evaluation_dataset(slices, model), settings, batch_size=1,
                             device=torch.device("cpu"), progress=False, draws=3)
    assert all(row.dice[tumor] > 0.97 for row in drawn[1:]), [row.dice[tumor] for row in drawn]
    with pytest.raises(InputError, match="draws"):
        evaluate_prompts(model, evaluation_dataset(slices, model), settings, progress=False, draws=-1)
    results = evaluate_prompt_to_3d(model, volume_cases(tmp_path / "images", tmp_path / "labels", [7]), progress=False)
    assert len(results) == 1 and results[0].dice > 0.9 and results[0].case == "case0"
