"""The whole AG-CRC training recipe on a small phantom dataset, on CPU, through ``crcseg`` and nnU-Net v2.

``crcseg prepare`` (+ ``--ssl``) -> ``plan`` (preprocessing, sampling maps, the AG-SSL dataset with the
same plans) -> ``pretrain`` (AG-SSL) -> ``train --pretrained`` (AG-sampling + AF-loss) -> ``predict`` ->
``evaluate`` -> ``export``: every step goes through the command's parser (``CRCTraining.cli.main``), so
a broken argument or default fails here. Tiny plans (``--gpu-memory-gb 0.5``) and a few iterations per stage.
"""
from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
import torch

from CRCSegmentationLib.core.bundle import verify_bundle
from CRCSegmentationLib.core.errors import BundleError
from CRCTraining.agcrc.psm import SamplingMap
from CRCTraining.agcrc.sampling_maps import psm_path
from CRCTraining.cli import main as crcseg
from CRCTraining.data.phantoms_ct import make_phantom_dataset
from CRCTraining.nnunet.env import NNUNetPaths
from CRCTraining.nnunet.export import export_bundle, trained_model_folder
from CRCTraining.nnunet.planning import patch_size, preprocessed_folder
from OrganGuidanceLib.io import read_image

pytestmark = pytest.mark.slow
SUPERVISED, SSL = 611, 612
SUPERVISED_NAME, SSL_NAME = f"Dataset{SUPERVISED}_PhantomAGCRC", f"Dataset{SSL}_PhantomAGSSL"
CASES = ("colon_001", "colon_002", "colon_003", "colon_004")
SCHEDULE = ["--epochs", "1", "--iterations", "2", "--val-iterations", "1", "--device", "cpu", "--no-final-validation"]
FOLD = ["--fold", "all"]  # `crcseg pretrain` defaults to it, `crcseg train` to fold 0


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    saved = dict(os.environ)
    root = tmp_path_factory.mktemp("agcrc")
    workdir = root / "work"
    source = make_phantom_dataset(root / "source", num_cases=4, seed=3)
    state = {"root": root, "workdir": workdir, "paths": NNUNetPaths.under(workdir), "source": source}
    yield state
    os.environ.clear()  # the commands export nnU-Net's folders and the schedule into this process
    os.environ.update(saved)


def _run(pipeline, command, *arguments, dataset=SUPERVISED):
    argv = [command, "--workdir", str(pipeline["workdir"]), "-d", str(dataset), *map(str, arguments)]
    assert crcseg(argv) == 0, argv


def _printed_checkpoint(capsys, trainer):
    """The checkpoint path the training command prints last (``<trainer>: <path>``)."""
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"{trainer}: ")]
    assert lines, f"no '{trainer}: <checkpoint>' line printed"
    return lines[-1][len(trainer) + 2:]


def test_1_prepare(pipeline):
    paths, source = pipeline["paths"], pipeline["source"]
    _run(pipeline, "prepare", source, "--name", "PhantomAGCRC", "--organs", source / "organsTr", "--device", "cpu")
    _run(pipeline, "prepare", source, "--name", "PhantomAGSSL", "--organs", source / "organsTr", "--device", "cpu",
         "--ssl", dataset=SSL)
    for name in (SUPERVISED_NAME, SSL_NAME):
        folder = paths.raw / name
        assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 4, name
        for channel in ("0000", "0001", "0002"):
            assert len(list((folder / "imagesTr").glob(f"*_{channel}.nii.gz"))) == 4, (name, channel)
        assert sorted(p.name for p in (folder / "labelsTr").glob("*.nii.gz")) == [f"{c}.nii.gz" for c in CASES]
    # --ssl: the label is the bowel wall, not the tumor
    tumor = read_image(paths.raw / SUPERVISED_NAME / "labelsTr" / "colon_001.nii.gz").array > 0
    wall = read_image(paths.raw / SSL_NAME / "labelsTr" / "colon_001.nii.gz").array > 0
    assert wall.sum() > tumor.sum() > 0 and not np.array_equal(wall, tumor)


def test_2_plan_preprocess_and_sampling_maps(pipeline):
    _run(pipeline, "plan", "--gpu-memory-gb", "0.5", "--processes", "1", "--ssl-dataset-id", SSL)
    plans = json.loads((pipeline["paths"].preprocessed / SUPERVISED_NAME / "nnUNetPlans.json").read_text())
    configuration = plans["configurations"]["3d_fullres"]
    assert configuration["normalization_schemes"] == ["CTNormalization", "NoNormalization", "NoNormalization"]
    patch = patch_size(SUPERVISED)
    assert np.prod(patch) <= 32 * 64 * 64  # a tiny plan keeps CPU training fast
    folder = preprocessed_folder(SUPERVISED)
    for case in CASES:  # the command computed the AG-sampling maps
        psm = SamplingMap.load(psm_path(folder, case))
        assert psm.tumor_total > 0 and psm.organ_total > 0
    assert any(preprocessed_folder(SSL).glob("*.b2nd"))  # --ssl-dataset-id: preprocessed with the same plans
    assert (pipeline["paths"].preprocessed / SSL_NAME / "nnUNetPlans.json").is_file()


def _log(checkpoint_path) -> dict:
    return torch.load(checkpoint_path, map_location="cpu", weights_only=False)


def _fold(pipeline, dataset_name, trainer):
    return trained_model_folder(pipeline["paths"].results, dataset_name, trainer) / "fold_all"


def test_3_ag_ssl_pretraining(pipeline, capsys):
    _run(pipeline, "pretrain", *SCHEDULE, dataset=SSL)  # defaults: --masking bowel_wall (AG-SSL), --fold all
    checkpoint = _fold(pipeline, SSL_NAME, "nnUNetTrainerAGSSL") / "checkpoint_final.pth"
    assert _printed_checkpoint(capsys, "nnUNetTrainerAGSSL") == str(checkpoint)
    saved = _log(checkpoint)
    losses = saved["logging"]["train_losses"]
    assert len(losses) == 1 and all(math.isfinite(v) for v in losses)  # --epochs 1
    heads = [v for k, v in saved["network_weights"].items() if "seg_layers" in k and k.endswith("weight")]
    assert heads and all(h.shape[0] == 1 for h in heads)  # one output: the reconstructed CT
    logs = "".join(p.read_text() for p in checkpoint.parent.glob("training_log_*.txt"))
    assert "final validation skipped" in logs  # --no-final-validation reached the trainer
    pipeline["pretrained"] = checkpoint


def test_4_supervised_training_starts_from_the_pretrained_weights(pipeline, capsys):
    _run(pipeline, "train", "--pretrained", pipeline["pretrained"], *FOLD, *SCHEDULE)  # default: nnUNetTrainerAGCRC
    checkpoint = _fold(pipeline, SUPERVISED_NAME, "nnUNetTrainerAGCRC") / "checkpoint_final.pth"
    assert _printed_checkpoint(capsys, "nnUNetTrainerAGCRC") == str(checkpoint)
    trained = _log(checkpoint)
    assert len(trained["logging"]["train_losses"]) == 1
    assert all(math.isfinite(v) for v in trained["logging"]["train_losses"])
    pretrained = _log(pipeline["pretrained"])["network_weights"]
    # Two SGD steps move the weights little: a model initialised from the pretrained ones stays
    # almost parallel to them, while an independent initialisation would be orthogonal (cosine ~ 0).
    for key in ("encoder.stages.0.0.convs.0.conv.weight", "decoder.stages.0.convs.0.conv.weight"):
        a, b = trained["network_weights"][key].flatten(), pretrained[key].flatten()
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.9, key
    assert trained["network_weights"]["decoder.seg_layers.3.weight"].shape[0] == 2  # tumor head, not carried over
    assert trained["init_args"]["fold"] == "all"
    # a second call resumes nothing: the fold is finished, the checkpoint stays as it is
    before = checkpoint.read_bytes()
    _run(pipeline, "train", *FOLD, *SCHEDULE)
    assert "already trained" in capsys.readouterr().out
    assert checkpoint.read_bytes() == before


def test_5_predict_evaluate_export(pipeline):
    paths, root = pipeline["paths"], pipeline["root"]
    raw = paths.raw / SUPERVISED_NAME
    _run(pipeline, "predict", "-i", raw / "imagesTr", "-o", root / "predictions", "--folds", "all",
         "--device", "cpu", "--no-mirroring", "--step-size", "1.0")
    assert sorted(p.name for p in (root / "predictions").glob("*.nii.gz")) == [f"{c}.nii.gz" for c in CASES]
    reference = read_image(raw / "labelsTr" / "colon_001.nii.gz")
    predicted = read_image(root / "predictions" / "colon_001.nii.gz")
    assert predicted.same_grid(reference) and set(np.unique(predicted.array)) <= {0, 1}

    evaluation = root / "evaluation"
    assert crcseg(["evaluate", str(root / "predictions"), str(raw / "labelsTr"), "-o", str(evaluation)]) == 0
    with open(evaluation / "metrics.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["case"], r["label"]) for r in rows] == [(c, "1") for c in CASES]  # --labels 1 is the default
    for row in rows:  # each Dice equals one computed here from the written files
        truth = read_image(raw / "labelsTr" / f"{row['case']}.nii.gz").array == 1
        guess = read_image(root / "predictions" / f"{row['case']}.nii.gz").array == 1
        expected = 2.0 * np.sum(truth & guess) / max(1, truth.sum() + guess.sum()) if truth.any() or guess.any() else 1.0
        assert float(row["dice"]) == pytest.approx(expected, abs=1e-4), row
    assert (evaluation / "metrics_boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = json.loads((evaluation / "summary.json").read_text())

    def numbers(value):
        if isinstance(value, dict):
            return [n for v in value.values() for n in numbers(v)]
        if isinstance(value, list):
            return [n for v in value for n in numbers(v)]
        return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []

    found = numbers(stats)  # metrics of a 2-iteration model are low, but they exist and are finite
    assert found and all(np.isfinite(found)), stats

    bundle = root / "bundle"
    _run(pipeline, "export", "-o", bundle, "--folds", "all", "--name", "phantom demo")
    metadata = verify_bundle(bundle)
    assert metadata.name == "phantom demo"
    assert metadata.input_channels == ["CT", "MOS", "OOI"] and metadata.labels["tumor"] == 1
    assert metadata.guidance["mos_codes"]["4"] == "colon"
    # Format 2: what the bundle is, so it predicts without CRCTraining (networks.nnunet_architectures).
    assert (metadata.format_version, metadata.kind, metadata.modality) == (2, "nnunet", "CT")
    assert (metadata.tumor_labels, metadata.network) == (["tumor"], "nnunet_default")
    checkpoint = bundle / "fold_all" / "checkpoint_final.pth"
    with open(checkpoint, "ab") as stream:
        stream.write(b"tampered")
    with pytest.raises(BundleError, match="SHA-256"):
        verify_bundle(bundle)
    model = trained_model_folder(paths.results, SUPERVISED_NAME, "nnUNetTrainerAGCRC")
    with pytest.raises(FileExistsError):
        export_bundle(model, bundle, folds=("all",))


def test_6_train_killed_then_rerun_continues_from_its_last_checkpoint(pipeline):
    """SIGKILL right after a resumable checkpoint; the rerun continues from it to the full schedule.

    nnU-Net's data loading is not seeded, so two uninterrupted runs already differ in their weights:
    what a killed run must give is the same schedule, continued (not restarted), from an intact file.
    """
    import signal

    from crcseg_child import files_at_least, run_crcseg

    from CRCSegmentationLib.core.checkpoints import load_checkpoint

    trainer = "nnUNetTrainerBaseline"
    argv = ["train", "--workdir", str(pipeline["workdir"]), "-d", str(SUPERVISED), "--trainer", trainer, *FOLD,
            "--epochs", "4", "--iterations", "2", "--val-iterations", "1", "--device", "cpu", "--no-final-validation"]
    folder = _fold(pipeline, SUPERVISED_NAME, trainer)
    latest = folder / "checkpoint_latest.pth"
    code, _ = run_crcseg(argv, pipeline["root"], env={**os.environ, "CRCSEG_SAVE_EVERY": "1"},
                         kill_when=files_at_least(folder, latest.name, 1))
    assert code == -signal.SIGKILL and not (folder / "checkpoint_final.pth").exists()
    saved_epoch = load_checkpoint(latest)["current_epoch"]  # intact: written to a temporary file, then renamed
    assert 1 <= saved_epoch < 4
    assert crcseg(argv) == 0
    final = load_checkpoint(folder / "checkpoint_final.pth")
    assert final["current_epoch"] == 4
    assert len(final["logging"]["train_losses"]) == 4  # the killed run's epochs were kept, not redone
    assert len(list(folder.glob("training_log_*.txt"))) == 2  # the rerun continued in a second log
