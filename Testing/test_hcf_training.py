"""HCF training: both stages on the 2D engine, balance sampling, resume, early stopping, torchrun, export, Table 3.

Phantom CT (``phantom_dataset``, 40 x 96 x 96 voxels, 14 tumor slices per case) at a 64 x 64 input, a
few iterations each on the CPU: the figures of a trained model are not the point, the machinery is.
"""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from CRCSegmentationLib.hcf.preprocessing import to_network_input
from CRCSegmentationLib.networks.hcf import build_slice_classifier
from CRCTraining.cli import main as crcseg
from CRCTraining.engine2d import train
from CRCTraining.engine2d.engine import CURVE, LOG
from CRCTraining.hcf.augment import AugmentationSettings, augment_slice
from CRCTraining.hcf.data import fold_cases, load_slices, split_cases
from CRCTraining.hcf.export import export_hcf_bundle
from CRCTraining.hcf.settings import FINAL_FILES, HCFTrainingSettings
from CRCTraining.hcf.tasks import SANetTask, SliceClassifierTask, classification_metrics
from CRCTraining.hcf.train import engine_settings, train_stage
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.validation import InputError

SIZE = 64  # a multiple of SANet's stride 16; the paper's is 512


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """Training cases (3, seed 0) and one test case (seed 5) in the MSD layout."""
    from CRCTraining.data.phantoms_ct import make_phantom_dataset

    root = tmp_path_factory.mktemp("hcf_phantoms")
    return make_phantom_dataset(root / "train", num_cases=3, seed=0), make_phantom_dataset(root / "test", 1, seed=5)


@pytest.fixture(scope="module")
def settings(phantoms, tmp_path_factory):
    train_folder, _ = phantoms
    torch.set_num_threads(1)  # robust on a shared 2-core machine (2 threads stall when a core is busy)
    return HCFTrainingSettings(output=tmp_path_factory.mktemp("runs"), images=train_folder / "imagesTr",
                               labels=train_folder / "labelsTr", fold=0, folds=3, size=SIZE, device="cpu",
                               validation_batch_size=20)


@pytest.fixture(scope="module")
def data(settings):
    return load_slices(settings)


def weights(path) -> dict:
    return torch.load(str(path), map_location="cpu", weights_only=True)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


# --- data, folds, augmentation ---------------------------------------------------------------
def test_cases_are_split_into_disjoint_deterministic_folds():
    cases = [f"case_{k}" for k in range(7)]
    folds = split_cases(cases, 3, seed=0)
    assert sorted(sum(folds, [])) == sorted(cases) and sorted(len(f) for f in folds) == [2, 2, 3]
    assert split_cases(list(reversed(cases)), 3, seed=0) == folds  # the order given does not matter
    assert split_cases(cases, 3, seed=1) != folds
    training, validation = fold_cases(cases, 1, 3)
    assert validation == folds[1] and not set(training) & set(validation) and len(training) + len(validation) == 7
    assert fold_cases(cases, None, 3) == (sorted(cases), [])
    with pytest.raises(InputError, match="cannot be split into 8 folds"):
        split_cases(cases, 8)
    with pytest.raises(InputError, match="not in 0..2"):
        fold_cases(cases, 3, 3)


def test_augmentation_moves_image_and_label_together_and_follows_the_seed():
    image = np.zeros((1, SIZE, SIZE), np.float32)
    label = np.zeros((SIZE, SIZE), np.int64)
    image[0, 10:30, 20:28], label[10:30, 20:28] = 0.9, 1  # an asymmetric block: flips and turns show
    geometric = AugmentationSettings(erase_probability=0.0, noise_probability=0.0)
    seen = set()
    for seed in range(12):
        moved_image, moved_label = augment_slice(image, label, np.random.default_rng(seed), geometric)
        bright, tumor = moved_image[0] > 0.45, moved_label > 0
        assert moved_image.shape == image.shape and moved_label.dtype == label.dtype
        assert (bright & tumor).sum() / (bright | tumor).sum() > 0.85
        seen.add(moved_label.tobytes())
    assert len(seen) > 4
    again = [augment_slice(image, label, np.random.default_rng(3))[0] for _ in range(2)]
    np.testing.assert_array_equal(again[0], again[1])
    erased, kept = augment_slice(image, label, np.random.default_rng(0),
                                 AugmentationSettings(0.0, 0.0, erase_probability=1.0, noise_probability=0.0))
    assert (erased != image).any() and (kept == label).all()  # erasing touches the image only


def test_classification_metrics():
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    called = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])
    metrics = classification_metrics(truth, called)
    assert metrics["recall"] == 0.75 and metrics["precision"] == 0.75
    assert metrics["specificity"] == pytest.approx(5 / 6) and metrics["accuracy"] == 0.8
    assert metrics["balanced_accuracy"] == pytest.approx((0.75 + 5 / 6) / 2)
    assert classification_metrics(truth, np.ones(10))["balanced_accuracy"] == 0.5  # "all abnormal" earns nothing


# --- the two tasks on the engine --------------------------------------------------------------
class Recording(torch.utils.data.Dataset):
    """The task's training slices, remembering which keys the engine asked for."""

    def __init__(self, inner) -> None:
        self.inner, self.keys = inner, []

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, key):
        self.keys.append(key)
        return self.inner[key]


def recording(task_class):
    class RecordingTask(task_class):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.recorder = Recording(self._train)

        def dataset(self):
            return self.recorder

    return RecordingTask


@pytest.fixture(scope="module", params=["classifier", "sanet"])
def resumed(request, settings, data):
    """Each stage: 8 iterations uninterrupted, and stopped after 3 then resumed; validation after epoch 1."""
    stage = request.param
    task_class = recording(SliceClassifierTask if stage == "classifier" else SANetTask)
    batch = 8 if stage == "classifier" else 4
    base = replace(settings, output=settings.output / f"{stage}_whole", batch_size=batch, iterations=8,
                   checkpoint_every=100)
    whole_task = task_class(base, data)
    whole = train(whole_task, engine_settings(base, stage), progress=False)
    parts = replace(base, output=settings.output / f"{stage}_parts")
    first = train(task_class(parts, data), engine_settings(parts, stage), stop_after=3, progress=False)
    rest = train(task_class(parts, data), engine_settings(parts, stage), progress=False)
    return stage, whole_task, whole, first, rest


def test_both_stages_train_resume_identically_and_validate(resumed):
    stage, task, whole, first, rest = resumed
    assert first.iterations == 3 and rest.resumed_from == 3 and rest.iterations == whole.iterations == 8
    assert np.isfinite(whole.history[:, 1]).all()
    np.testing.assert_array_equal(rest.history, whole.history)
    assert max_difference(weights(rest.final)["state_dict"], weights(whole.final)["state_dict"]) == 0.0
    final = weights(whole.final)
    assert whole.final.name == FINAL_FILES[stage] and final["hcf"]["stage"] == stage
    assert final["hcf"]["slice_config"]["size"] == SIZE and final["hcf"]["validation_cases"] == task.validation_cases
    # one epoch = the BSS epoch cut into batches; validated at its end on the held-out case
    per_epoch = math.ceil(len(task.epoch_indices(0)) / (8 if stage == "classifier" else 4))
    assert [v["iteration"] for v in whole.validation] == [float(per_epoch)]
    score = whole.validation[0][task.score_name]
    assert 0.0 <= score <= 1.0
    if stage == "classifier":
        assert {"recall", "precision", "accuracy", "specificity"} <= set(whole.validation[0])


def test_balance_sampling_makes_the_epochs_the_engine_trains_on(resumed):
    stage, task, _, _, _ = resumed
    records = task._train.records
    abnormal = sum(r.abnormal for r in records)
    epoch = task.epoch_indices(0)
    chosen = [records[i].abnormal for i in epoch]
    assert sum(chosen) == abnormal  # every abnormal slice, once
    if stage == "sanet":  # theta_0: nothing else, and the engine asked for nothing else
        assert all(chosen) and len(epoch) == abnormal
        assert task.recorder.keys and all(records[index].abnormal for index, _ in task.recorder.keys)
    else:  # theta_1: as many normal slices as abnormal ones
        assert len(epoch) == 2 * abnormal
        assert {index for index, _ in task.recorder.keys} <= set(epoch)
    assert len({seed for _, seed in task.recorder.keys}) > 1  # every sample has its own augmentation seed


def test_early_stopping_keeps_the_best_epoch(settings, data):
    class NeverBetter(SliceClassifierTask):
        """A validation score that cannot improve; the weights seen at each validation are kept."""

        snapshots: list = []

        def validate(self, model, device):
            self.snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            return {"balanced_accuracy": 0.5}

    run = replace(settings, output=settings.output / "early", batch_size=16, epochs=6, patience=1,
                  augmentation=False)
    task = NeverBetter(run, data)
    result = train(task, engine_settings(run, "classifier"), progress=False)
    per_epoch = math.ceil(len(task.epoch_indices(0)) / 16)
    assert result.stopped_early and result.iterations == 2 * per_epoch and len(task.snapshots) == 2
    final = weights(result.final)["state_dict"]
    assert max_difference(final, task.snapshots[0]) == 0.0  # epoch 1's weights, the best
    assert max_difference(final, task.snapshots[1]) > 0.0


def test_bad_settings_are_refused(settings, data):
    with pytest.raises(InputError, match="theta_0 holds no normal slice"):
        SliceClassifierTask(replace(settings, ratio=0), data)
    with pytest.raises(InputError, match="multiple of 16"):
        SANetTask(replace(settings, size=40), data)
    with pytest.raises(InputError, match="fewer than 2 slices per process"):
        train_stage("sanet", replace(settings, batch_size=1), data=data)


# --- command line ------------------------------------------------------------------------------
def _train_arguments(stage, train_folder, output, *extra):
    return ["hcf-train", stage, "--images", str(train_folder / "imagesTr"), "--labels", str(train_folder / "labelsTr"),
            "-o", str(output), "--size", str(SIZE), "--device", "cpu", *extra]


def test_hcf_train_runs_under_torchrun_with_two_gloo_processes(phantoms, tmp_path):
    from CRCTraining.data.phantoms_ct import make_phantom_dataset

    two_cases = make_phantom_dataset(tmp_path / "two", num_cases=2, seed=0)  # fold 0 of 2: 28 slices, 4 iterations
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "CRCTraining.cli", *_train_arguments("classifier", two_cases, tmp_path / "run", "--folds", "2",
                                                          "--iterations", "4", "--batch-size", "8", "--threads", "1")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("HCF classifier: 4 iterations (from 0) on 2 process(es)") == 1  # rank 0 only
    final = weights(tmp_path / "run" / FINAL_FILES["classifier"])
    assert final["training"]["world_size"] == 2 and len(final["validation"]) == 1  # rank 0 validated epoch 1
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted([CURVE, LOG, FINAL_FILES["classifier"]])


@pytest.fixture(scope="module")
def cli_runs(phantoms, tmp_path_factory):
    train_folder, _ = phantoms
    root = tmp_path_factory.mktemp("cli_runs")
    common = ("--fold", "all", "--iterations", "4", "--threads", "1")
    assert crcseg(_train_arguments("classifier", train_folder, root / "classifier", *common, "--batch-size", "8")) == 0
    assert crcseg(_train_arguments("sanet", train_folder, root / "sanet", *common, "--batch-size", "4")) == 0
    return root


def _direct_probabilities(classifier_final, ct, config):
    """p(abnormal) of every axial slice, computed here from the training file (not by the segmenter)."""
    network = build_slice_classifier(1, 2)
    network.load_state_dict(weights(classifier_final)["state_dict"])
    network.eval()
    volume = np.moveaxis(ct.array, ct.axial_axis, 0)
    images = np.stack([to_network_input(volume[k], config)[0] for k in range(volume.shape[0])])[:, None]
    with torch.inference_mode():
        return torch.softmax(network(torch.from_numpy(images)), dim=1)[:, 1].numpy()


def test_exported_bundle_segments_only_the_slices_the_classifier_passes(phantoms, cli_runs, tmp_path):
    from CRCSegmentationLib.core.segmentation import SegmentationParameters
    from CRCSegmentationLib.models.open import open_model
    from CRCTraining.hcf.export import read_hcf_run

    _, test_folder = phantoms
    ct = read_image(test_folder / "imagesTr" / "colon_001.nii.gz")
    config = HCFTrainingSettings(output=tmp_path, size=SIZE).slice_config()
    assert read_hcf_run(cli_runs / "classifier").slice_config == {**config.__dict__, "hu_window": [-160.0, 240.0]}
    probabilities = _direct_probabilities(cli_runs / "classifier" / FINAL_FILES["classifier"], ct, config)
    p = np.sort(probabilities)
    middle = len(p) // 2
    k = max(range(middle - 5, middle + 5), key=lambda i: p[i + 1] - p[i])  # the widest gap near the median
    threshold = float((p[k] + p[k + 1]) / 2)
    assert 0 < threshold < 1 and p[k + 1] - p[k] > 1e-6
    code = crcseg(["hcf-export", "--classifier", str(cli_runs / "classifier"), "--sanet", str(cli_runs / "sanet"),
                   "-o", str(tmp_path / "bundle"), "--name", "HCF phantom", "--threshold", f"{threshold:.9g}",
                   "--keep-components", "0"])
    assert code == 0
    model = open_model(tmp_path / "bundle")
    assert model.kind == "hcf" and model.hcf.slice_config.size == SIZE
    result = model.segmenter(SegmentationParameters(device="cpu")).segment(ct)
    passed = probabilities >= threshold
    assert result.slice_counts == {"slices": ct.shape[0], "abnormal": int(passed.sum())}
    assert 0 < passed.sum() < len(passed)
    mask, probability = result.mask.array, result.probabilities.array
    assert not mask[~passed].any() and not probability[~passed].any()  # rejected slices: all zero
    assert all(probability[k].max() > 0 for k in np.flatnonzero(passed))  # SANet ran on every passed slice


def test_export_refuses_mixed_slice_settings_and_unfinished_runs(cli_runs, tmp_path):
    data = weights(cli_runs / "sanet" / FINAL_FILES["sanet"])
    data["hcf"]["slice_config"]["size"] = 128
    torch.save(data, str(tmp_path / "sanet_128.pt"))
    with pytest.raises(InputError, match="different slice preprocessing"):
        export_hcf_bundle([cli_runs / "classifier"], [tmp_path / "sanet_128.pt"], tmp_path / "mixed", "mixed")
    with pytest.raises(InputError, match="a classifier run, given as a sanet run"):
        export_hcf_bundle([cli_runs / "classifier"], [cli_runs / "classifier" / FINAL_FILES["classifier"]],
                          tmp_path / "swapped", "swapped")
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "checkpoint_latest.pt").write_bytes(b"")
    code = crcseg(["hcf-export", "--classifier", str(tmp_path / "unfinished"), "-o", str(tmp_path / "b"),
                   "--name", "x"])
    assert code == 2 and not (tmp_path / "b").exists()


def test_table3_on_a_tiny_grid_writes_recall_dsc_ji_hd95(phantoms, tmp_path, capsys):
    train_folder, test_folder = phantoms
    code = crcseg(["hcf-table3", "--train-images", str(train_folder / "imagesTr"),
                   "--train-labels", str(train_folder / "labelsTr"), "--test-images", str(test_folder / "imagesTr"),
                   "--test-labels", str(test_folder / "labelsTr"), "--classifier-ratios", "1",
                   "--sanet-ratios", "0", "n",
                   "--iterations", "2", "--classifier-batch-size", "8", "--sanet-batch-size", "4", "--size", str(SIZE),
                   "--device", "cpu", "--threads", "1", "-o", str(tmp_path / "table3")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "HCF Table 3, DSC (%)" in printed and "theta_n" in printed and "HD95 (mm)" in printed
    with open(tmp_path / "table3" / "table3.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["classifier_ratio"], r["sanet_ratio"]) for r in rows] == [("theta_1", "theta_0"), ("theta_1", "theta_n")]
    for row in rows:
        assert 0 <= float(row["recall"]) <= 1 and 0 <= float(row["dsc"]) <= 1 and 0 <= float(row["ji"]) <= 1
        assert float(row["hd95"]) >= 0 and row["cases"] == "1"
        assert float(row["ji"]) <= float(row["dsc"]) + 1e-9  # JI = DSC / (2 - DSC)
    assert rows[0]["recall"] == rows[1]["recall"]  # one classifier per row
    report = json.loads((tmp_path / "table3" / "table3.json").read_text())
    assert len(report["cells"]) == 2 and report["cells"][0]["per_case"][0]["case"] == "colon_001"
    assert not list((tmp_path / "table3").glob(".bundles-*"))  # temporary bundles removed
    assert (tmp_path / "table3" / "sanet_theta_n" / FINAL_FILES["sanet"]).exists()


def test_hcf_phantoms_writes_the_folders_hcf_train_reads(tmp_path, capsys):
    assert crcseg(["hcf-phantoms", "-o", str(tmp_path / "data"), "-n", "1", "--seed", "3"]) == 0
    assert "--images" in capsys.readouterr().out
    assert len(list((tmp_path / "data" / "labelsTr").glob("*.nii.gz"))) == 1
    assert crcseg(["hcf-phantoms", "-o", str(tmp_path / "data"), "-n", "1"]) == 2  # not empty: refused
