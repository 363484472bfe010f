"""Train the shipped demonstration tumor model on generated phantoms, reproducibly, on CPU.

    .venv/bin/python scripts/train_demo_model.py --force --threads 1   # replaces Resources/models/demo_phantom
    .venv/bin/python scripts/train_demo_model.py --force --export-only  # re-export + evaluate, no training

Measured on a shared 2-core CPU (--threads 1): data + planning 36 s, training 570 s (40 x 20 iterations),
held-out evaluation 43 s; bundle 3.8 MB; held-out phantoms (seed 7777) mean Dice 0.917 (0.86-0.95).

The whole AG-CRC recipe on a small scale, through the ``CRCTraining`` package:
phantom dataset (fixed seed) -> CT + MOS + OOI preparation -> nnU-Net planning with a
small memory target -> the network shrunk in the plans (``features_per_stage``) so the
weights are a few MB -> ``nnUNetTrainerAGCRC`` (AG-sampling + AF-loss) on fold "all"
-> bundle export, optimizer state stripped, SHA-256 recomputed -> Dice on fresh phantoms.

Reproducible: numpy, torch and Python are seeded and nnU-Net's augmentation runs in the
main process (``nnUNet_n_proc_DA=0`` while training: its worker processes are not seeded).
Checked: two runs on the same machine and thread count give bit-identical weights; other
CPUs or thread counts may differ in the last bits of floating-point sums.
This is a demonstration model trained on synthetic phantoms; it is not for clinical use.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

REPOSITORY = Path(__file__).resolve().parents[1]
BUNDLE = REPOSITORY / "CRCSegmentation" / "Resources" / "Models" / "demo_phantom"
DESCRIPTION = (
    "Demonstration model trained on synthetic phantoms; not for clinical use. "
    "Rectal tumor on CT + MOS + OOI (AG-CRC Table V), nnUNetTrainerAGCRC (AG-sampling + AF-loss), "
    "trained by scripts/train_demo_model.py."
)
TRAIN_ID, HELD_OUT_ID = 901, 902
TRAIN_SEED, HELD_OUT_SEED = 2024, 7777  # phantom dataset seeds; the tumor demo uses yet another
# Fields of view of 256 x 325 x 325 mm (z, y, x): the pelvis up to the stomach, as in the demo's phantom,
# so the model also sees the upper GI tract it must leave alone (the default 40 x 96 x 96 stops below it).
SHAPE_ZYX = (64, 112, 112)
SOURCE_NOTE = f"phantoms of CRCTraining.data.phantoms_ct, seed {TRAIN_SEED}, made by scripts/train_demo_model.py"
FEATURES_PER_STAGE = (8, 16, 32, 64, 64, 64, 64)  # cut to the plan's number of stages
# Keys nnUNetPredictor.initialize_from_trained_model_folder reads (+ the epoch, for the record).
CHECKPOINT_KEYS = ("network_weights", "init_args", "trainer_name", "inference_allowed_mirroring_axes", "current_epoch")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def limit_torch_threads(threads: int) -> None:
    """Cap PyTorch's CPU threads; nnU-Net's ``run_training`` asks for every core, which stalls on a shared CPU."""
    set_num_threads = torch.set_num_threads
    set_num_threads(threads)
    torch.set_num_threads = lambda n: set_num_threads(min(int(n), threads))  # type: ignore[assignment]


def shrink_network(plans_file: Path) -> List[int]:
    """Narrow the 3d_fullres UNet in nnU-Net's plans; stages and strides stay as planned."""
    plans = json.loads(plans_file.read_text())
    kwargs = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    features = list(FEATURES_PER_STAGE[: kwargs["n_stages"]])
    if len(features) != kwargs["n_stages"]:
        raise ValueError(f"plans have {kwargs['n_stages']} stages; FEATURES_PER_STAGE covers {len(FEATURES_PER_STAGE)}")
    kwargs["features_per_stage"] = features
    plans_file.write_text(json.dumps(plans, indent=4))
    return features


def portable_dataset_json(dataset_json: dict, note: str = SOURCE_NOTE) -> dict:
    """The same description without this machine's work folder (prepare records the source folder)."""
    for block in ("agcrc", "crcseg"):  # CT (prepare.py) and MR (prepare_mr.py) datasets
        source = (dataset_json.get(block) or {}).get("source")
        if isinstance(source, dict) and "folder" in source:
            source["folder"] = note
        elif isinstance(source, str):
            dataset_json[block]["source"] = note
    return dataset_json


def strip_checkpoint(path: Path, note: str = SOURCE_NOTE) -> None:
    """Keep what inference needs: no optimizer state, grad scaler or training log."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    kept = {key: checkpoint[key] for key in CHECKPOINT_KEYS if key in checkpoint}
    init_args = dict(kept["init_args"])
    init_args["device"] = "cpu"  # a plain string: loadable with weights_only=True anywhere
    init_args["dataset_json"] = portable_dataset_json(dict(init_args["dataset_json"]), note)
    kept["init_args"] = init_args
    temporary = path.with_suffix(".tmp")
    torch.save(kept, temporary)
    os.replace(temporary, path)
    torch.load(path, map_location="cpu", weights_only=True)  # what the inference engine does


def write_bundle(model_folder: Path, destination: Path, name: str = "demo_phantom", description: str = DESCRIPTION,
                 note: str = SOURCE_NOTE) -> Path:
    """Export, strip the checkpoint, rewrite the metadata's SHA-256 through ``CRCSegmentationLib.core.bundle``."""
    from CRCSegmentationLib.core.bundle import METADATA_FILE, read_metadata, verify_bundle
    from CRCTraining.nnunet.export import export_bundle
    from OrganGuidanceLib.atomic import new_folder
    from OrganGuidanceLib.checksum import sha256_of

    with new_folder(destination, replace=True) as staging:  # the earlier model stays until the new one is whole
        exported = export_bundle(model_folder, staging / "export", folds=("all",), name=name, description=description)
        for entry in list(exported.iterdir()):
            os.replace(entry, staging / entry.name)
        exported.rmdir()
        dataset_file = staging / "dataset.json"
        dataset_file.write_text(json.dumps(portable_dataset_json(json.loads(dataset_file.read_text()), note),
                                           indent=4) + "\n")
        metadata = read_metadata(staging)
        metadata.guidance = portable_dataset_json({"agcrc": metadata.guidance}, note)["agcrc"]
        for relative in metadata.checkpoint_sha256:
            strip_checkpoint(staging / relative, note)
            metadata.checkpoint_sha256[relative] = sha256_of(staging / relative)
        (staging / METADATA_FILE).write_text(metadata.to_json() + "\n")
        verify_bundle(staging)
    return destination


def held_out_dice(bundle: Path, workdir: Path, num_cases: int) -> Dict[str, float]:
    """Predict fresh phantoms (prepared like the training ones) with the bundle; mean metrics."""
    from CRCTraining.data.phantoms_ct import make_phantom_dataset
    from CRCTraining.data.prepare_ct import prepare_dataset
    from CRCTraining.evaluate import evaluate_folder
    from CRCTraining.nnunet.predict import predict_folder
    from OrganGuidanceLib.io import read_image, write_image

    source = make_phantom_dataset(workdir / "held_out_source", num_cases=num_cases, seed=HELD_OUT_SEED,
                                  shape_zyx=SHAPE_ZYX)
    report = prepare_dataset(source, HELD_OUT_ID, "PhantomDemoHeldOut", Path(os.environ["nnUNet_raw"]),
                             organs=source / "organsTr")
    raw = report.dataset_folder
    predictions = workdir / "held_out_predictions"
    predict_folder(bundle, raw / "imagesTr", predictions, folds=("all",), device=torch.device("cpu"),
                   mirroring=False, step_size=0.5)
    # As the inference engine does (keep_within_ooi): AF-loss trains prediction x OOI (AG-CRC Eq. 8),
    # so the network's output outside the OOI is untrained and is discarded.
    within = workdir / "held_out_predictions_in_ooi"
    for path in sorted(predictions.glob("*.nii.gz")):
        prediction = read_image(path)
        ooi = read_image(raw / "imagesTr" / path.name.replace(".nii.gz", "_0002.nii.gz")).array > 0
        write_image(prediction.with_array(((prediction.array > 0) & ooi).astype(np.uint8)), within / path.name)
    summary = evaluate_folder(within, raw / "labelsTr", workdir / "held_out_evaluation")
    print(summary.metrics_csv.read_text())
    return {name: stats.mean for name, stats in summary.statistics[1].items()}


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPOSITORY / "build" / "demo_model",
                        help="nnU-Net raw/preprocessed/results and phantoms (default: build/demo_model)")
    parser.add_argument("--output", type=Path, default=BUNDLE)
    parser.add_argument("--cases", type=int, default=14)
    parser.add_argument("--held-out-cases", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--iterations", type=int, default=20, help="training iterations per epoch")
    add_run_arguments(parser)
    args = parser.parse_args(argv)

    from CRCTraining.nnunet.env import dataset_name
    from CRCTraining.nnunet.export import trained_model_folder

    paths = start_run(args)
    if paths is None:
        return 2
    timings: Dict[str, float] = {}

    if not args.export_only:
        train_model(args, paths, timings)
    model = trained_model_folder(paths.results, dataset_name(TRAIN_ID), "nnUNetTrainerAGCRC")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    bundle = write_bundle(model, args.output)
    size_mb = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) / 1e6

    start = time.perf_counter()
    metrics = held_out_dice(bundle, args.workdir, args.held_out_cases)
    timings["held-out evaluation"] = time.perf_counter() - start
    print(f"bundle {bundle}: {size_mb:.2f} MB")
    print("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print("held-out phantoms (mean): " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return 0


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Seed, threads, --force and --export-only: the same for both demonstration-model scripts."""
    parser.add_argument("--seed", type=int, default=0, help="torch/numpy seed of the training run")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for PyTorch (default: nnU-Net's choice, every core); 1 on a busy machine")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle and work folder")
    parser.add_argument("--export-only", action="store_true",
                        help="skip data and training: export (and evaluate) the model already trained in --workdir")


def start_run(args: argparse.Namespace):
    """nnU-Net folders under ``--workdir`` (emptied by ``--force``), threads, no final validation; None if
    the bundle exists and ``--force`` is not given. Shared with ``train_mr_demo_model.py``."""
    from CRCTraining.nnunet.env import configure
    from CRCTraining.nnunet.mixins import ENV_FINAL_VALIDATION

    if args.output.exists() and not args.force:
        print(f"{args.output} exists; pass --force to replace it", file=sys.stderr)
        return None
    if args.workdir.exists() and args.force and not args.export_only:
        shutil.rmtree(args.workdir)
    args.workdir.mkdir(parents=True, exist_ok=True)
    paths = configure(args.workdir)
    if args.threads:
        limit_torch_threads(args.threads)
    os.environ[ENV_FINAL_VALIDATION] = "0"
    return paths


def train_model(args: argparse.Namespace, paths, timings: Dict[str, float]) -> None:
    """Phantoms -> CT + MOS + OOI dataset -> plans (network shrunk) -> nnUNetTrainerAGCRC on fold "all"."""
    from CRCTraining.data.phantoms_ct import make_phantom_dataset
    from CRCTraining.data.prepare_ct import prepare_dataset
    from CRCTraining.nnunet.env import dataset_name
    from CRCTraining.nnunet.planning import PLANS, plan_and_preprocess
    from CRCTraining.nnunet.train import train

    start = time.perf_counter()
    source = make_phantom_dataset(args.workdir / "source", num_cases=args.cases, seed=TRAIN_SEED, shape_zyx=SHAPE_ZYX)
    prepare_dataset(source, TRAIN_ID, "PhantomDemo", paths.raw, organs=source / "organsTr")
    os.environ["nnUNet_n_proc_DA"] = "1"  # 0 breaks nnU-Net's planner
    plans_file = paths.preprocessed / dataset_name(TRAIN_ID) / f"{PLANS}.json"
    if not plans_file.is_file():  # planned in an earlier, interrupted run of the same workdir
        plan_and_preprocess(TRAIN_ID, gpu_memory_gb=0.5, num_processes=1)
    features = shrink_network(plans_file)
    timings["data + planning"] = time.perf_counter() - start
    print(f"network features per stage: {features}")

    start = time.perf_counter()
    os.environ["nnUNet_n_proc_DA"] = "0"  # augmentation in this process: seeded, reproducible
    seed_everything(args.seed)
    train(TRAIN_ID, "nnUNetTrainerAGCRC", fold="all", device="cpu", epochs=args.epochs,
          iterations=args.iterations, val_iterations=1)
    timings["training"] = time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
