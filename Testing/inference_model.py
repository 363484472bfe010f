"""A small tumor model for the inference tests: the shipped demo bundle (verified), else trained here.

Training follows ``test_training_end_to_end.py`` (phantoms -> prepare -> tiny plan -> nnU-Net
training of ``nnUNetTrainerAGCRC`` on CPU, a few iterations). The tests check the engine, not
the model's quality: the restricted inference runs the full-volume tiles, so it agrees with
the full-volume result even for a barely trained network.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

DATASET_ID = 631
TRAINER = "nnUNetTrainerAGCRC"
ENV_TEST_MODEL = "CRCSEG_TEST_MODEL"  # a bundle to test with instead (a quicker edit-test loop)
ITERATIONS = 3  # training takes about 30 s of the fixture's ~1.5 min on 2 CPU cores


def train_tiny_model(root: Path) -> Dict[str, Path]:
    """{"results": nnU-Net results folder, "bundle": exported bundle, "source": phantom dataset}."""
    from CRCTraining.data.phantoms_ct import make_phantom_dataset
    from CRCTraining.data.prepare_ct import prepare_dataset
    from CRCTraining.nnunet.env import configure
    from CRCTraining.nnunet.export import export_bundle, trained_model_folder
    from CRCTraining.nnunet.mixins import ENV_FINAL_VALIDATION
    from CRCTraining.nnunet.planning import plan_and_preprocess
    from CRCTraining.nnunet.train import train

    saved = dict(os.environ)
    try:
        paths = configure(root / "work")
        os.environ[ENV_FINAL_VALIDATION] = "0"
        source = make_phantom_dataset(root / "source", num_cases=3, seed=3)
        prepare_dataset(source, DATASET_ID, "PhantomInference", paths.raw, organs=source / "organsTr")
        plan_and_preprocess(DATASET_ID, gpu_memory_gb=0.5, num_processes=1)
        train(DATASET_ID, TRAINER, epochs=1, iterations=ITERATIONS, val_iterations=1, device="cpu", fold="all")
        results = trained_model_folder(paths.results, f"Dataset{DATASET_ID}_PhantomInference", TRAINER)
        bundle = export_bundle(results, root / "bundle", folds=("all",), name="inference test model")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {"results": results, "bundle": bundle, "source": source}


def results_folder_from_bundle(bundle: Path, root: Path) -> Path:
    """A plain nnU-Net results folder (no ``crcseg_model.json``) with the bundle's files."""
    import shutil

    from CRCSegmentationLib.core.bundle import METADATA_FILE, read_metadata

    metadata = read_metadata(bundle)
    target = root / "results" / f"{metadata.trainer}__{metadata.plans}__{metadata.configuration}"
    shutil.copytree(bundle, target, ignore=shutil.ignore_patterns(METADATA_FILE))
    return target


def load_or_train_model(root: Path) -> Dict[str, Path]:
    """``CRCSEG_TEST_MODEL`` (a bundle, or "train"), else the shipped demo bundle, else (none shipped) train one.

    A shipped demo bundle that fails verification fails the test: a corrupt model is a defect to report,
    not a reason to test with another one.
    """
    from CRCSegmentationLib.core.bundle import verify_bundle
    from CRCSegmentationLib.core.errors import BundleError, ModelError

    given = os.environ.get(ENV_TEST_MODEL)
    if given == "train":
        return train_tiny_model(root)
    if given:
        return {"results": results_folder_from_bundle(Path(given), root), "bundle": Path(given)}
    from CRCSegmentationLib.demo.ct import demo_model_path

    try:
        demo = demo_model_path()
    except ModelError:
        return train_tiny_model(root)  # no demo bundle shipped in this installation: train our own
    try:
        verify_bundle(demo)
    except BundleError as error:
        raise AssertionError(
            f"the shipped demo bundle {demo} fails verification: {error}; restore it (scripts/train_demo_model.py "
            f"makes it), or set {ENV_TEST_MODEL}=train to test with a model trained here"
        ) from error
    return {"results": results_folder_from_bundle(demo, root), "bundle": demo}
