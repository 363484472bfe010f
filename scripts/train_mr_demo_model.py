"""Train the shipped MR demonstration model (RCSegNeXt: rectum + tumor on sagittal T2) on phantoms, on CPU.

    .venv/bin/python scripts/train_mr_demo_model.py --force --threads 2   # replaces Resources/Models/demo_mr_phantom
    .venv/bin/python scripts/train_mr_demo_model.py --force --export-only # re-export + evaluate, no training

The RCSegNeXt recipe of the README on a small scale, through ``CRCTraining``: sagittal T2 phantoms
(``CRCTraining.data.phantoms_mr``, fixed seed) -> ``prepare_mr_dataset`` (one z-scored channel, labels
rectum + tumor) -> nnU-Net planning -> the ``3d_fullres_rcsegnext`` configuration (the paper's network at
width 16 so that the weights stay small; patch fitted to its poolings) -> ``nnUNetTrainerRCSegNeXt`` on fold
"all" -> bundle (optimizer state stripped, SHA-256 recomputed, catalogue entry updated; the training images'
thick axis, which ``prepare_mr_dataset`` records in dataset.json, goes into the bundle's ``thick_axis``: left-right,
4 mm) -> Dice of rectum and tumor on held-out phantoms through the inference engine the module uses.

Seeded as ``train_demo_model.py`` (augmentation in the main process). A demonstration model trained on
synthetic phantoms; it is not for clinical use.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_demo_model import add_run_arguments, seed_everything, start_run, write_bundle

REPOSITORY = Path(__file__).resolve().parents[1]
RESOURCES = REPOSITORY / "CRCSegmentation" / "Resources"
NAME = "demo_mr_phantom"
BUNDLE = RESOURCES / "Models" / NAME
TRAIN_ID = 903
TRAIN_SEED, HELD_OUT_SEED = 3031, 9191  # the MR demo itself uses CRCSegmentationLib.demo.mr.MR_DEMO_SEED
TRAINER = "nnUNetTrainerRCSegNeXt"
PATCH_SIZE = (8, 96, 128)  # nnU-Net's own 3d_fullres patch for these phantoms (84 x 112 mm in-plane)
WIDTH = 16  # the paper's 32 gives 2.3 M parameters (9 MB); 16 keeps the shipped file small
SOURCE_NOTE = f"sagittal T2 phantoms of CRCTraining.data.phantoms_mr, seed {TRAIN_SEED}, made by " \
              "scripts/train_mr_demo_model.py"
DESCRIPTION = ("Demonstration model trained on synthetic phantoms; not for clinical use. Rectum and rectal tumor on "
               f"sagittal T2 MRI: RCSegNeXt (AniNeXt + IsoNeXt/SAIM, width {WIDTH}), {TRAINER}, trained by "
               "scripts/train_mr_demo_model.py.")


def train_model(args: argparse.Namespace, paths, timings: Dict[str, float]) -> None:
    from CRCTraining.data.phantoms_mr import make_mr_phantom_dataset
    from CRCTraining.data.prepare_mr import prepare_mr_dataset
    from CRCTraining.nnunet.planning import plan_and_preprocess
    from CRCTraining.nnunet.train import train
    from CRCTraining.rcsegnext.configuration import RCSegNeXtPlan, add_rcsegnext_configuration, plans_file

    start = time.perf_counter()
    source = make_mr_phantom_dataset(args.workdir / "source", cases=args.cases, seed=TRAIN_SEED)
    prepare_mr_dataset(source, TRAIN_ID, "PhantomMRDemo", paths.raw)
    os.environ["nnUNet_n_proc_DA"] = "1"  # 0 breaks nnU-Net's planner
    if not plans_file(TRAIN_ID).is_file():
        plan_and_preprocess(TRAIN_ID, gpu_memory_gb=args.gpu_memory_gb, num_processes=1)
    configuration = add_rcsegnext_configuration(plans_file(TRAIN_ID), RCSegNeXtPlan(
        network={"width": WIDTH}, patch_size=tuple(args.patch_size) if args.patch_size else None))
    timings["data + planning"] = time.perf_counter() - start
    print(f"3d_fullres_rcsegnext: patch {configuration['patch_size']}, batch {configuration['batch_size']}, "
          f"spacing {configuration['spacing']}")

    start = time.perf_counter()
    os.environ["nnUNet_n_proc_DA"] = "0"  # augmentation in this process: seeded, reproducible
    seed_everything(args.seed)
    train(TRAIN_ID, TRAINER, fold="all", configuration="3d_fullres_rcsegnext", device="cpu", epochs=args.epochs,
          iterations=args.iterations, val_iterations=1)
    timings["training"] = time.perf_counter() - start


def check_thick_axis(bundle: Path) -> None:
    """The bundle must record its training images' thick axis (sagittal: left-right), or inputs sliced in
    another plane get no warning (CRCSegmentationLib.core.model_fit)."""
    from CRCSegmentationLib.core.bundle import read_metadata

    recorded = read_metadata(bundle).thick_axis
    if recorded.get("runs") != "L-R":
        raise SystemExit(f"{bundle}: thick_axis {recorded or 'not recorded'}, expected the sagittal phantoms' "
                         "left-right axis; a work folder prepared by an older version lacks it: rerun without "
                         "--export-only")


def update_catalogue(bundle: Path) -> None:
    """The catalogue entry of the MR demo model, with the shipped checkpoint's SHA-256."""
    from CRCSegmentationLib.core.bundle import read_metadata

    catalogue_file = RESOURCES / "models.json"
    catalogue = json.loads(catalogue_file.read_text())
    metadata = read_metadata(bundle)
    entry = {"name": NAME, "version": "0.1.0", "path": f"Models/{NAME}", "input_channels": metadata.input_channels,
             "modality": "MR", "description": DESCRIPTION, "demonstration": True,
             "checkpoint_sha256": dict(metadata.checkpoint_sha256), "trained_by": "scripts/train_mr_demo_model.py"}
    catalogue["models"] = [m for m in catalogue["models"] if m["name"] != NAME] + [entry]
    catalogue_file.write_text(json.dumps(catalogue, indent=2) + "\n")


def held_out_dice(bundle: Path, cases: int) -> Dict[str, float]:
    """Rectum and tumor Dice on fresh phantoms through ``open_model(...).segmenter(...).segment``."""
    from CRCSegmentationLib.batch import model_label_map
    from CRCSegmentationLib.core.segmentation import SegmentationParameters
    from CRCSegmentationLib.demo.mr_phantom import make_sagittal_t2_phantom
    from CRCSegmentationLib.measurement.metrics import compute_metrics
    from CRCSegmentationLib.models.open import open_model

    source = open_model(bundle)
    segmenter = source.segmenter(SegmentationParameters(device="cpu", mirroring=False))
    dice: Dict[str, List[float]] = {"rectum": [], "tumor": []}
    for index in range(cases):
        phantom = make_sagittal_t2_phantom(seed=HELD_OUT_SEED + index)
        labels = model_label_map(segmenter.segment(phantom.image), source).array
        for name, value in (("rectum", 1), ("tumor", 2)):
            metrics = compute_metrics(labels == value, phantom.labels.array == value, phantom.image.spacing_zyx)
            dice[name].append(metrics.dice)
        print(f"held-out phantom {index}: rectum {dice['rectum'][-1]:.3f}, tumor {dice['tumor'][-1]:.3f}")
    return {name: float(np.mean(values)) for name, values in dice.items()}


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPOSITORY / "build" / "mr_demo_model")
    parser.add_argument("--output", type=Path, default=BUNDLE)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--held-out-cases", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--gpu-memory-gb", type=float, default=0.5, help="nnU-Net's memory target: the patch size")
    parser.add_argument("--patch-size", type=int, nargs=3, default=PATCH_SIZE, metavar=("Z", "Y", "X"),
                        help="patch of the 3d_fullres_rcsegnext configuration (default %(default)s; 8 x 64 x 64 "
                        "trains 2x faster but sees too little around the rectum: false positives in the perineum)")
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
    model = trained_model_folder(paths.results, dataset_name(TRAIN_ID), TRAINER, "3d_fullres_rcsegnext")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    bundle = write_bundle(model, args.output, NAME, DESCRIPTION, SOURCE_NOTE)
    check_thick_axis(bundle)
    if args.output == BUNDLE:
        update_catalogue(bundle)
    size_mb = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) / 1e6
    start = time.perf_counter()
    metrics = held_out_dice(bundle, args.held_out_cases)
    timings["held-out evaluation"] = time.perf_counter() - start
    print(f"bundle {bundle}: {size_mb:.2f} MB")
    print("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print("held-out phantoms (mean Dice): " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
