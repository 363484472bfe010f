"""``crcseg usam-slices | usam-train | usam-evaluate | usam-ablation``: the 2D point-prompted U-SAM (CARE paper).

    crcseg usam-slices  --phantom 8 -o slices/train          # or --images DIR --labels DIR --rectum-label 1 --tumor-label 2
    crcseg usam-train   slices/train -o runs/usam --sam-checkpoint sam_vit_b_01ec64.pth
    crcseg usam-evaluate runs/usam/usam_final.pt slices/test -o runs/usam/eval
    crcseg usam-ablation runs/usam/usam_final.pt slices/test  # Table 4: 0, 1, 3, 5 points per class
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict

from CRCTraining.cli.arguments import add_device_argument


def _intensity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--intensity", choices=("hu", "unit"), default="hu",
                        help="slice images in HU (ours) or already scaled to [0, 1] (CARE release)")


def _evaluation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slices", type=Path, help="folder of CARE-layout .npz slices (test set)")
    parser.add_argument("--negatives", type=int, default=1, help="background points next to the rectum (default 1)")
    parser.add_argument("--batch-size", type=int, default=8)
    add_device_argument(parser)
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    _intensity(parser)


def add_usam_commands(commands) -> None:
    slices = commands.add_parser("usam-slices", help="3D cases -> 2D rectum slices (CARE npz layout) for U-SAM")
    slices.add_argument("-o", "--output", type=Path, required=True, help="folder for the .npz slices")
    slices.add_argument("--phantom", type=int, metavar="N", help="generate N synthetic phantom cases instead")
    slices.add_argument("--seed", type=int, default=0, help="phantom seed (use another seed for a test set)")
    slices.add_argument("--images", type=Path, help="folder of CT volumes <case>[_0000].nii.gz")
    slices.add_argument("--labels", type=Path, help="folder of label maps <case>.nii.gz")
    slices.add_argument("--rectum-label", type=int, nargs="+", default=[], help="label value(s) of the normal rectum")
    slices.add_argument("--tumor-label", type=int, nargs="+", default=[], help="label value(s) of the tumor")
    slices.set_defaults(run=slices_main)

    train = commands.add_parser("usam-train", help="train U-SAM on 2D slices (resumable)")
    train.add_argument("slices", type=Path, help="folder of CARE-layout .npz slices (training set)")
    train.add_argument("-o", "--output", type=Path, required=True, help="run folder (rerun to resume)")
    train.add_argument("--sam-checkpoint", type=Path, help="SAM ViT-B weights sam_vit_b_01ec64.pth (strongly advised)")
    train.add_argument("--iterations", type=int, help="optimisation steps (default: --epochs passes over the slices)")
    train.add_argument("--epochs", type=int, default=100, help="default 100 (public U-SAM code)")
    train.add_argument("--batch-size", type=int, default=24,
                       help="default 24 (CARE paper); under torchrun the batch of all processes together")
    train.add_argument("--lr-decoder", type=float, default=1e-3)
    train.add_argument("--lr-encoder", type=float, default=1e-4, help="ViT and CNN encoder")
    train.add_argument("--weight-decay", type=float, default=1e-4)
    train.add_argument("--points-per-class", type=int, default=3, help="default 3 (CARE Table 4)")
    train.add_argument("--negatives", type=int, default=1, help="background points next to the rectum (default 1)")
    train.add_argument("--no-augmentation", action="store_true")
    train.add_argument("--image-size", type=int, default=224, help="multiple of 16 (default 224, CARE paper)")
    train.add_argument("--checkpoint-every", type=int, default=500, help="iterations between resumable checkpoints")
    train.add_argument("--seed", type=int, default=0)
    add_device_argument(train)
    train.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    train.add_argument("--workers", type=int, default=0, help="data-loading processes")
    _intensity(train)
    train.set_defaults(run=train_main)

    evaluate = commands.add_parser("usam-evaluate", help="Dice and IoU per class of a U-SAM checkpoint (CARE Table 2)")
    evaluate.add_argument("checkpoint", type=Path, help="U-SAM checkpoint (usam_final.pt)")
    _evaluation_options(evaluate)
    evaluate.add_argument("--points-per-class", type=int, default=3, help="default 3; 0 = no prompt")
    evaluate.add_argument("-o", "--output", type=Path, help="folder for usam_evaluation.csv/.json")
    evaluate.set_defaults(run=evaluate_main)

    ablation = commands.add_parser("usam-ablation", help="prompt ablation: 0, 1, 3, 5 points per class (CARE Table 4)")
    ablation.add_argument("checkpoint", type=Path, help="U-SAM checkpoint used for every point count")
    _evaluation_options(ablation)
    ablation.add_argument("--points", type=int, nargs="+", default=[0, 1, 3, 5], help="point counts (default 0 1 3 5)")
    ablation.add_argument("--model-for", nargs=2, action="append", default=[], metavar=("POINTS", "CHECKPOINT"),
                          help="use another checkpoint for one point count (the paper trains one model per row)")
    ablation.add_argument("-o", "--output", type=Path, help="folder for usam_ablation.csv/.json")
    ablation.set_defaults(run=ablation_main)


def slices_main(args: argparse.Namespace) -> int:
    from CRCTraining.usam.data import extract_phantom_slices, extract_volume_slices
    from OrganGuidanceLib.validation import InputError

    if (args.phantom is None) == (args.labels is None):
        raise InputError("usam-slices: give either --phantom N or --images DIR --labels DIR")
    if args.phantom is not None:
        folder = extract_phantom_slices(args.output, args.phantom, args.seed)
    else:
        if args.images is None:
            raise InputError("usam-slices: --labels needs --images")
        folder = extract_volume_slices(args.output, args.images, args.labels, args.rectum_label, args.tumor_label)
    from OrganGuidanceLib.case_folders import visible_files

    print(f"{len(visible_files(folder, '.npz'))} slices in {folder}")
    return 0


def train_main(args: argparse.Namespace) -> int:
    from CRCSegmentationLib.usam.sam_weights import SAM_VIT_B_URL
    from CRCTraining.engine2d.report import print_training_result
    from CRCTraining.usam.train import USAMTrainingSettings, train_usam
    from OrganGuidanceLib.validation import InputError

    if args.sam_checkpoint is not None and not args.sam_checkpoint.is_file():  # the option named, before any slice
        raise InputError(f"--sam-checkpoint {args.sam_checkpoint}: " + (
            "is a folder; give the file sam_vit_b_01ec64.pth" if args.sam_checkpoint.is_dir() else "no such file")
            + f" (SAM ViT-B: {SAM_VIT_B_URL})")
    settings = USAMTrainingSettings(
        slices=args.slices, output=args.output, iterations=args.iterations, epochs=args.epochs,
        batch_size=args.batch_size, lr_decoder=args.lr_decoder, lr_encoder=args.lr_encoder,
        weight_decay=args.weight_decay, per_class=args.points_per_class, negatives=args.negatives,
        augmentation=not args.no_augmentation, image_size=args.image_size, intensity=args.intensity,
        seed=args.seed, checkpoint_every=args.checkpoint_every, device=args.device, threads=args.threads,
        workers=args.workers, sam_checkpoint=args.sam_checkpoint,
    )
    print_training_result(train_usam(settings))
    return 0


def _setup(args: argparse.Namespace):
    import torch

    from OrganGuidanceLib.device import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    return resolve_device(args.device)


def evaluate_main(args: argparse.Namespace) -> int:
    from CRCTraining.usam.evaluate import format_table, prompt_ablation, write_reports

    device = _setup(args)
    evaluations = prompt_ablation({args.points_per_class: args.checkpoint}, args.slices, args.negatives,
                                  args.batch_size, device, args.intensity)
    print(format_table(evaluations))
    if args.output:
        csv_path, json_path = write_reports(evaluations, args.output, "usam_evaluation")
        print(f"reports: {csv_path}, {json_path}")
    return 0


def ablation_main(args: argparse.Namespace) -> int:
    from CRCTraining.usam.evaluate import format_table, prompt_ablation, write_reports
    from OrganGuidanceLib.validation import InputError

    checkpoints: Dict[int, Path] = {int(k): args.checkpoint for k in args.points}
    for count, path in args.model_for:
        if not count.isdigit():
            raise InputError(f"usam-ablation --model-for: {count!r} is not a point count")
        checkpoints[int(count)] = Path(path)
    device = _setup(args)
    evaluations = prompt_ablation(checkpoints, args.slices, args.negatives, args.batch_size, device, args.intensity)
    print(format_table(evaluations))
    if args.output:
        csv_path, json_path = write_reports(evaluations, args.output, "usam_ablation")
        print(f"reports: {csv_path}, {json_path}")
    return 0
