"""``crcseg usam-slices | usam-train | usam-evaluate | usam-ablation`` through their parsers, on CPU.

Tiny phantom slice sets, a 64 x 64 input and 3 training iterations: the point is that every option
reaches the engine (the final checkpoint stores the settings it was trained with) and that each
command writes what it promises. ``test_usam_training.py`` checks the engines' numbers.
"""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from CRCSegmentationLib.usam.checkpoint import read_usam_checkpoint
from CRCTraining.cli import main as crcseg
from CRCTraining.usam.data import INDEX_FILE
from CRCTraining.usam.evaluate import prompt_ablation
from CRCTraining.usam.train import CURVE, FINAL, LATEST, LOG

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
                   "--negatives", "0", "--batch-size", "4", "--device", "cpu", "-o", str(tmp_path / "ablation")])
    assert code == 0
    ablation = json.loads((tmp_path / "ablation" / "usam_ablation.json").read_text())
    assert [(e["points_per_class"], e["checkpoint"]) for e in ablation] == [(0, str(checkpoint)), (1, str(other))]
    assert {**ablation[1], "checkpoint": ""} == {**evaluated[0], "checkpoint": ""}  # same weights, same numbers
    assert (tmp_path / "ablation" / "usam_ablation.csv").read_text().count("\n") == 1 + 2 * 3
