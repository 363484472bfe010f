"""``crcseg hcf-phantoms | hcf-train | hcf-export | hcf-table3``: HCF, slice classifier + SANet (Shi et al.).

    crcseg hcf-phantoms -o data -n 10 --seed 0                    # data/imagesTr, data/labelsTr (+ organsTr)
    crcseg hcf-train classifier --images data/imagesTr --labels data/labelsTr -o runs/classifier_f0 --fold 0 --folds 5
    crcseg hcf-train sanet      --images data/imagesTr --labels data/labelsTr -o runs/sanet_f0 --fold 0 --folds 5
    torchrun --standalone --nproc_per_node 2 -m CRCTraining.cli hcf-train classifier ...   # DDP (NCCL / gloo)
    crcseg hcf-export --classifier runs/classifier_f0 runs/classifier_f1 --sanet runs/sanet_f0 -o models/hcf --name HCF
    crcseg hcf-table3 --train-images ... --train-labels ... --test-images ... --test-labels ... -o table3
"""
from __future__ import annotations

import argparse
from pathlib import Path

from CRCTraining.cli.arguments import add_device_argument


def _fold(value: str):
    if str(value).lower() == "all":
        return None
    if not str(value).isdigit():
        raise argparse.ArgumentTypeError(f"fold {value!r}: a fold number 0..K-1 or 'all'")
    return int(value)


def _ratio(value: str):
    from CRCTraining.hcf.settings import parse_ratio
    from OrganGuidanceLib.validation import InputError

    try:
        return parse_ratio(value)
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _training_options(parser: argparse.ArgumentParser, batch: bool = True) -> None:
    """Options shared by ``hcf-train`` and ``hcf-table3`` (defaults: paper Sec. 4.2)."""
    parser.add_argument("--tumor-label", type=int, help="label value of the tumor (default: every label > 0)")
    parser.add_argument("--iterations", type=int, help="optimisation steps (default: --epochs epochs)")
    parser.add_argument("--epochs", type=int, default=120, help="default 120 (paper Sec. 4.2)")
    if batch:
        parser.add_argument("--batch-size", type=int, help="global batch (all processes together); default 128 "
                            "classifier, 64 SANet (paper Sec. 4.2)")
    parser.add_argument("--size", type=int, default=512, help="slice input size, a multiple of 16 (default 512)")
    parser.add_argument("--hu-window", type=float, nargs=2, default=(-160.0, 240.0), metavar=("LOW", "HIGH"),
                        help="CT window in HU (default -160 240, abdominal soft tissue)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    parser.add_argument("--cycle-epochs", type=int, default=20, help="first cosine warm-restart cycle (default 20)")
    parser.add_argument("--patience", type=int, default=30, help="early stopping: epochs without a better "
                        "validation score (default 30; 0 = off)")
    parser.add_argument("--per-epoch", action="store_true", help="redraw the balance-sampling normal slices "
                        "every epoch (default: once, as the public code)")
    parser.add_argument("--no-augmentation", action="store_true")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the case split into folds (default 0)")
    parser.add_argument("--checkpoint-every", type=int, default=500, help="iterations between resumable checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--amp", choices=("auto", "on", "off"), default="auto", help="float16 autocast (CUDA)")
    add_device_argument(parser)
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch (per process)")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes (per process)")


def add_hcf_commands(commands) -> None:
    phantoms = commands.add_parser("hcf-phantoms", help="synthetic CT phantoms with tumor labels (imagesTr, labelsTr) "
                                   "for trying the HCF recipe")
    phantoms.add_argument("-o", "--output", type=Path, required=True, help="new dataset folder")
    phantoms.add_argument("-n", "--cases", type=int, default=6, help="cases with a tumor (default 6)")
    phantoms.add_argument("--tumor-free", type=int, default=0, help="more cases without tumor (default 0)")
    phantoms.add_argument("--seed", type=int, default=0, help="use another seed for a test set")
    phantoms.add_argument("--shape", type=int, nargs=3, default=(40, 96, 96), metavar=("Z", "Y", "X"),
                          help="voxels per case (default 40 96 96)")
    phantoms.set_defaults(run=phantoms_main)

    train = commands.add_parser("hcf-train", help="train the HCF slice classifier or SANet on axial slices "
                                "(resumable; torchrun for several processes)")
    train.add_argument("stage", choices=("classifier", "sanet"))
    train.add_argument("--images", type=Path, help="folder of CT volumes <case>[_0000].nii.gz")
    train.add_argument("--labels", type=Path, help="folder of label maps <case>.nii.gz")
    train.add_argument("--npz", type=Path, help="instead: folder of CARE .npz slices (crcseg usam-slices)")
    train.add_argument("-o", "--output", type=Path, required=True, help="run folder (rerun to resume)")
    train.add_argument("--fold", type=_fold, default=0, help="validation fold 0..K-1, or 'all' (train on every "
                       "case, no validation; default 0)")
    train.add_argument("--folds", type=int, default=5, help="folds of the case split (default 5, paper Sec. 4.1)")
    train.add_argument("--ratio", type=_ratio, help="balance sampling: 0, 1, 2, 4 normal slices per abnormal one, "
                       "or n (all); default 1 classifier, 0 SANet")
    _training_options(train)
    train.set_defaults(run=train_main)

    export = commands.add_parser("hcf-export", help="finished HCF runs (one per fold) -> HCF model bundle")
    export.add_argument("--classifier", type=Path, nargs="+", required=True, help="classifier run folders or files")
    export.add_argument("--sanet", type=Path, nargs="+", default=[], help="SANet run folders or files "
                        "(none: a classifier-only bundle, a slice filter)")
    export.add_argument("-o", "--output", type=Path, required=True, help="new bundle folder")
    export.add_argument("--name", required=True, help="model name shown to users")
    export.add_argument("--description", default="")
    export.add_argument("--version", default="1")
    export.add_argument("--threshold", type=float, default=0.5, help="a fold votes abnormal at p >= this (0.5)")
    export.add_argument("--keep-components", type=int, default=1,
                        help="largest 3D components kept (default 1; 0 keeps all)")
    export.set_defaults(run=export_main)

    table3 = commands.add_parser("hcf-table3", help="HCF Table 3: train classifier x SANet balance-sampling ratios, "
                                 "evaluate each cascade (recall, DSC, JI, HD95)")
    table3.add_argument("--train-images", type=Path, required=True)
    table3.add_argument("--train-labels", type=Path, required=True)
    table3.add_argument("--test-images", type=Path, required=True)
    table3.add_argument("--test-labels", type=Path, required=True)
    table3.add_argument("-o", "--output", type=Path, required=True, help="folder of the runs and the table")
    table3.add_argument("--classifier-ratios", type=_ratio, nargs="+", default=[1, 2, 4, "n"])
    table3.add_argument("--sanet-ratios", type=_ratio, nargs="+", default=[0, 1, 2, 4, "n"])
    table3.add_argument("--classifier-batch-size", type=int, help="default 128 (paper)")
    table3.add_argument("--sanet-batch-size", type=int, help="default 64 (paper)")
    table3.add_argument("--fold", type=_fold, default=None, help="validate on this fold with early stopping "
                        "(default: 'all', every training case trains)")
    table3.add_argument("--folds", type=int, default=5)
    table3.add_argument("--keep-bundles", action="store_true", help="keep each cell's model bundle")
    _training_options(table3, batch=False)
    table3.set_defaults(run=table3_main)


def _settings(args: argparse.Namespace, **fields):
    from CRCTraining.hcf.settings import HCFTrainingSettings

    values = dict(
        output=args.output, tumor_label=args.tumor_label, fold=args.fold, folds=args.folds,
        split_seed=args.split_seed, per_epoch=args.per_epoch, iterations=args.iterations, epochs=args.epochs,
        lr=args.lr, weight_decay=args.weight_decay, cycle_epochs=args.cycle_epochs,
        patience=args.patience if args.patience and args.patience > 0 else None, size=args.size,
        hu_window=tuple(args.hu_window), augmentation=not args.no_augmentation, seed=args.seed,
        checkpoint_every=args.checkpoint_every, amp=args.amp, device=args.device, threads=args.threads,
        workers=args.workers)
    values.update(fields)
    return HCFTrainingSettings(**values)


def phantoms_main(args: argparse.Namespace) -> int:
    from CRCTraining.data.phantoms_ct import make_phantom_dataset
    from OrganGuidanceLib.case_folders import is_empty_of_visible
    from OrganGuidanceLib.validation import InputError

    if args.output.exists() and not args.output.is_dir():
        raise InputError(f"-o/--output {args.output}: is a file; give a new folder")
    if not is_empty_of_visible(args.output):  # a Finder's .DS_Store does not count
        raise InputError(f"-o/--output {args.output}: not empty; give a new folder")
    folder = make_phantom_dataset(args.output, args.cases, args.seed, tuple(args.shape),
                                  tumor_free_cases=args.tumor_free)
    print(f"{args.cases + args.tumor_free} phantom cases: --images {folder / 'imagesTr'} "
          f"--labels {folder / 'labelsTr'}")
    return 0


def train_main(args: argparse.Namespace) -> int:
    from CRCTraining.engine2d.report import print_training_result
    from CRCTraining.hcf.train import train_stage

    settings = _settings(args, images=args.images, labels=args.labels, npz=args.npz, ratio=args.ratio,
                         batch_size=args.batch_size)
    result = train_stage(args.stage, settings)
    best = "" if result.best_score is None else f", best validation score {result.best_score:.4f}"
    early = ", stopped early" if result.stopped_early else ""
    print_training_result(result, f"HCF {args.stage}: ", f" on {result.world_size} process(es){early}{best}")
    return 0


def export_main(args: argparse.Namespace) -> int:
    from CRCTraining.hcf.export import export_hcf_bundle

    folder = export_hcf_bundle(args.classifier, args.sanet, args.output, args.name, args.description, args.version,
                               args.threshold, args.keep_components)
    print(f"HCF bundle ({len(args.classifier)} classifier, {len(args.sanet)} SANet fold(s)): {folder}")
    return 0


def table3_main(args: argparse.Namespace) -> int:
    from CRCTraining.hcf.table3 import format_table3, run_table3

    template = _settings(args)
    result = run_table3(args.train_images, args.train_labels, args.test_images, args.test_labels, args.output,
                        template, args.classifier_ratios, args.sanet_ratios, args.classifier_batch_size,
                        args.sanet_batch_size, args.keep_bundles)
    print(format_table3(result), end="")
    print(f"tables: {result.csv_path}, {result.json_path}")
    return 0
