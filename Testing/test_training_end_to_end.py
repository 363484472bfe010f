"""The whole AG-CRC training pipeline on a small phantom dataset, on CPU, through nnU-Net v2.

prepare -> plan/preprocess (+ sampling maps) -> AG-SSL pretraining -> training with
AG-sampling + AF-loss from the pretrained weights -> predict -> evaluate -> export.
Tiny plans (nnU-Net's planner with a small memory target) and a few iterations per stage.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from CRCSegmentationLib.bundle import BundleError, verify_bundle
from CRCTraining.evaluate import evaluate_folder
from CRCTraining.export import export_bundle, trained_model_folder
from CRCTraining.nnunet_env import configure
from OrganGuidanceLib.device import resolve_device
from CRCTraining.phantom_dataset import make_phantom_dataset
from CRCTraining.planning import patch_size, plan_and_preprocess, preprocess_with_plans_of, preprocessed_folder
from CRCTraining.predict import predict_folder
from CRCTraining.prepare import prepare_dataset
from CRCTraining.psm import SamplingMap
from CRCTraining.sampling import psm_path
from CRCTraining.train import train
from CRCTraining.trainer_mixins import ENV_FINAL_VALIDATION
from OrganGuidanceLib.io import read_image

pytestmark = pytest.mark.slow
SUPERVISED, SSL = 611, 612
SCHEDULE = dict(epochs=1, iterations=2, val_iterations=1, device="cpu", fold="all")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    saved = dict(os.environ)
    root = tmp_path_factory.mktemp("agcrc")
    paths = configure(root / "work")
    os.environ[ENV_FINAL_VALIDATION] = "0"
    source = make_phantom_dataset(root / "source", num_cases=4, seed=3)
    state = {"root": root, "paths": paths, "source": source}
    yield state
    os.environ.clear()
    os.environ.update(saved)


def test_1_prepare(pipeline):
    paths, source = pipeline["paths"], pipeline["source"]
    report = prepare_dataset(source, SUPERVISED, "PhantomAGCRC", paths.raw, organs=source / "organsTr")
    assert report.num_training == 4 and not report.failed
    ssl = prepare_dataset(source, SSL, "PhantomAGSSL", paths.raw, organs=source / "organsTr", ssl=True)
    assert ssl.num_training == 4 and not ssl.failed
    images = sorted((report.dataset_folder / "imagesTr").glob("*_0002.nii.gz"))
    assert len(images) == 4


def test_2_plan_preprocess_and_sampling_maps(pipeline):
    from CRCTraining.sampling import precompute_sampling_maps

    plans = plan_and_preprocess(SUPERVISED, gpu_memory_gb=0.5, num_processes=1)
    configuration = plans["configurations"]["3d_fullres"]
    assert configuration["normalization_schemes"] == ["CTNormalization", "NoNormalization", "NoNormalization"]
    patch = patch_size(SUPERVISED)
    assert np.prod(patch) <= 32 * 64 * 64  # a tiny plan keeps CPU training fast
    folder = preprocessed_folder(SUPERVISED)
    precompute_sampling_maps(folder, patch)
    for case in ("colon_001", "colon_002", "colon_003", "colon_004"):
        psm = SamplingMap.load(psm_path(folder, case))
        assert psm.tumor_total > 0 and psm.organ_total > 0
    preprocess_with_plans_of(SUPERVISED, SSL, num_processes=1)
    assert any(preprocessed_folder(SSL).glob("*.b2nd"))


def _log(checkpoint_path) -> dict:
    return torch.load(checkpoint_path, map_location="cpu", weights_only=False)


def test_3_ag_ssl_pretraining(pipeline):
    checkpoint = train(SSL, "nnUNetTrainerAGSSL", **SCHEDULE)
    saved = _log(checkpoint)
    losses = saved["logging"]["train_losses"]
    assert len(losses) == 1 and all(math.isfinite(v) for v in losses)
    heads = [v for k, v in saved["network_weights"].items() if "seg_layers" in k and k.endswith("weight")]
    assert heads and all(h.shape[0] == 1 for h in heads)  # one output: the reconstructed CT
    pipeline["pretrained"] = checkpoint


def test_4_supervised_training_starts_from_the_pretrained_weights(pipeline):
    checkpoint = train(SUPERVISED, "nnUNetTrainerAGCRC", pretrained_weights=pipeline["pretrained"], **SCHEDULE)
    trained = _log(checkpoint)
    assert all(math.isfinite(v) for v in trained["logging"]["train_losses"])
    pretrained = _log(pipeline["pretrained"])["network_weights"]
    # Two SGD steps move the weights little: a model initialised from the pretrained ones stays
    # almost parallel to them, while an independent initialisation would be orthogonal (cosine ~ 0).
    for key in ("encoder.stages.0.0.convs.0.conv.weight", "decoder.stages.0.convs.0.conv.weight"):
        a, b = trained["network_weights"][key].flatten(), pretrained[key].flatten()
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.9, key
    assert trained["network_weights"]["decoder.seg_layers.3.weight"].shape[0] == 2  # tumor head, not carried over
    assert trained["init_args"]["fold"] == "all"
    # a second call resumes nothing: the fold is finished
    assert train(SUPERVISED, "nnUNetTrainerAGCRC", **SCHEDULE) == checkpoint


def test_5_predict_evaluate_export(pipeline):
    paths, root = pipeline["paths"], pipeline["root"]
    model = trained_model_folder(paths.results, f"Dataset{SUPERVISED}_PhantomAGCRC", "nnUNetTrainerAGCRC")
    raw = paths.raw / f"Dataset{SUPERVISED}_PhantomAGCRC"
    predictions = predict_folder(model, raw / "imagesTr", root / "predictions", folds=("all",),
                                 device=resolve_device("cpu"), mirroring=False, step_size=1.0)
    assert len(predictions) == 4
    reference = read_image(raw / "labelsTr" / "colon_001.nii.gz")
    predicted = read_image(root / "predictions" / "colon_001.nii.gz")
    assert predicted.same_grid(reference) and set(np.unique(predicted.array)) <= {0, 1}

    summary = evaluate_folder(root / "predictions", raw / "labelsTr", root / "evaluation")
    assert summary.n_cases == 4 and summary.metrics_csv.is_file() and summary.boxplot_png.is_file()
    stats = json.loads(summary.summary_json.read_text())
    assert stats  # metrics of a 2-iteration model are low, but they exist and are finite

    bundle = export_bundle(model, root / "bundle", folds=("all",), name="phantom demo")
    metadata = verify_bundle(bundle)
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
    with pytest.raises(FileExistsError):
        export_bundle(model, bundle, folds=("all",))
