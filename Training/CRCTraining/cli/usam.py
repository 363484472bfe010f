"""``crcseg usam-slices | usam-train | usam-evaluate | usam-ablation``: the 2D point-prompted U-SAM (CARE paper).

    crcseg usam-slices  --phantom 8 -o slices/train          # or --images DIR --labels DIR --rectum-label 1 --tumor-label 2
    crcseg usam-train   slices/train -o runs/usam --sam-checkpoint sam_vit_b_01ec64.pth
    crcseg usam-evaluate runs/usam/usam_final.pt slices/test -o runs/usam/eval
    crcseg usam-ablation demo_usam_phantom slices/test -o ablation   # Table 4 extended: points, box, 3D
    crcseg usam-ablation runs/usam/usam_final.pt --images CT/ --labels LABELS/ --rectum-label 1 --tumor-label 2
"""
from __future__ import annotations

import argparse
from pathlib import Path

from CRCTraining.cli.arguments import add_device_argument


def _intensity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--intensity", choices=("hu", "unit"), default="hu",
                        help="slice images in HU (ours) or already scaled to [0, 1] (CARE release)")


def _evaluation_options(parser: argparse.ArgumentParser) -> None:
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
    slices.add_argument("--lookalikes", action="store_true",
                        help="phantoms: paint look-alikes (tumor-like blobs that are not tumor) for prompt training")
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
    train.add_argument("--image-size", type=int,
                       help="multiple of 16 (default: the preset's; vit-b 224, CARE paper; small 128)")
    train.add_argument("--preset", choices=("vit-b", "small"), default="vit-b",
                       help="network size: vit-b (default; the paper's, SAM weights map in) or small (CPU demo size)")
    mix = train.add_argument_group(
        "SAM's prompt mix (CRCTraining.usam.prompt_mix; on when --box-fraction, --no-prompt-fraction or "
        "--min-points is given, else CARE's points): per sample points, a jittered tumor box, both, or nothing")
    mix.add_argument("--box-fraction", type=float, default=0.0,
                     help="share of samples with a tumor that get its box, noise 10%% of its side, <= 20 px "
                     "(default 0: CARE trains with points only; the demonstration model uses 0.35)")
    mix.add_argument("--box-points-fraction", type=float, default=0.5,
                     help="of the box samples, the share that also get points (default 0.5)")
    mix.add_argument("--no-prompt-fraction", type=float, default=0.0,
                     help="share of samples with no prompt at all (default 0; the demonstration model uses 0.1)")
    mix.add_argument("--min-points", type=int,
                     help="fewest positive points; a sample gets min..--points-per-class (default: exactly that)")
    mix.add_argument("--lookalike-negative-fraction", type=float, default=0.7,
                     help="a negative point goes on a look-alike (slices from usam-slices --lookalikes) (default 0.7)")
    mix.add_argument("--fallback-fraction", type=float, default=0.5,
                     help="slices without tumor: share prompted on the normal rectum (target: no tumor) (default 0.5)")
    mix.add_argument("--object-fraction", type=float, default=0.25,
                     help="share prompted on a look-alike blob that is then the target (default 0.25)")
    mix.add_argument("--correction-fraction", type=float, default=0.3,
                     help="share with a look-alike next to the tumor prompted as a correction: points or a box "
                     "around both, and negatives on the look-alike (default 0.3)")
    mix.add_argument("--correction-clicks", type=float, default=0.0,
                     help="share of prompted samples that get one more click in the largest error of the "
                     "network's own answer, as SAM trains (default 0: off; the demonstration model uses 0.5)")
    train.add_argument("--checkpoint-every", type=int, default=500, help="iterations between resumable checkpoints")
    train.add_argument("--seed", type=int, default=0)
    add_device_argument(train)
    train.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    train.add_argument("--workers", type=int, default=0, help="data-loading processes")
    _intensity(train)
    train.set_defaults(run=train_main)

    evaluate = commands.add_parser("usam-evaluate", help="Dice and IoU per class of a U-SAM checkpoint (CARE Table 2)")
    evaluate.add_argument("checkpoint", type=Path, help="U-SAM checkpoint (usam_final.pt)")
    evaluate.add_argument("slices", type=Path, help="folder of CARE-layout .npz slices (test set)")
    _evaluation_options(evaluate)
    evaluate.add_argument("--points-per-class", type=int, default=3, help="default 3; 0 = no prompt")
    evaluate.add_argument("-o", "--output", type=Path, help="folder for usam_evaluation.csv/.json")
    evaluate.set_defaults(run=evaluate_main)

    ablation = commands.add_parser(
        "usam-ablation", help="CARE Table 4 extended: 0/1/3/5 points, box, box + 1 point, one prompt to 3D")
    ablation.add_argument("checkpoint", metavar="MODEL",
                          help="U-SAM model of every row: a .pt checkpoint, a U-SAM bundle folder or a catalogue name "
                          "(e.g. demo_usam_phantom)")
    ablation.add_argument("slices", type=Path, nargs="?",
                          help="folder of CARE-layout .npz slices (test set); or give volumes with --images/--labels")
    ablation.add_argument("--images", type=Path, help="folder of CT volumes <case>[_0000].nii.gz (instead of slices)")
    ablation.add_argument("--labels", type=Path, help="folder of label maps <case>.nii.gz (with --images)")
    ablation.add_argument("--rectum-label", type=int, nargs="+", default=[],
                          help="label value(s) of the normal rectum in --labels")
    ablation.add_argument("--tumor-label", type=int, nargs="+", default=[], help="label value(s) of the tumor in --labels")
    _evaluation_options(ablation)
    ablation.add_argument("--points", type=int, nargs="+", default=[0, 1, 3, 5],
                          help="point counts per class (default 0 1 3 5; 0 = no prompt)")
    ablation.add_argument("--draws", type=int, default=4,
                          help="random point draws per slice, as CARE samples points (default 4; 0: deterministic)")
    ablation.add_argument("--no-box", action="store_true", help="leave out the box rows (box alone, box + 1 point)")
    ablation.add_argument("--no-3d", action="store_true", help="leave out one prompt to 3D")
    ablation.add_argument("--model-for", nargs=2, action="append", default=[], metavar=("POINTS", "MODEL"),
                          help="use another model for one point count (the paper trains one model per row)")
    ablation.add_argument("-o", "--output", type=Path,
                          help="folder for usam_ablation.csv/.json (2D rows), _3d.csv/_3d.json (3D), .md (table)")
    ablation.set_defaults(run=ablation_main)


def slices_main(args: argparse.Namespace) -> int:
    from CRCTraining.usam.data import extract_phantom_slices, extract_volume_slices
    from OrganGuidanceLib.validation import InputError

    if (args.phantom is None) == (args.labels is None):
        raise InputError("usam-slices: give either --phantom N or --images DIR --labels DIR")
    if args.phantom is not None and args.lookalikes:
        from CRCTraining.usam.phantom_prompts import extract_lookalike_slices

        folder = extract_lookalike_slices(args.output, args.phantom, args.seed)
    elif args.phantom is not None:
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
        workers=args.workers, sam_checkpoint=args.sam_checkpoint, preset=args.preset,
        box_fraction=args.box_fraction, box_points_fraction=args.box_points_fraction,
        no_prompt_fraction=args.no_prompt_fraction, min_points=args.min_points,
        lookalike_negative_fraction=args.lookalike_negative_fraction, fallback_fraction=args.fallback_fraction,
        object_fraction=args.object_fraction, correction_fraction=args.correction_fraction,
        correction_clicks=args.correction_clicks,
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
    from CRCTraining.usam.ablation import (
        AblationData,
        format_markdown,
        run_ablation,
        table4_settings,
        write_ablation_reports,
    )
    from CRCTraining.usam.evaluate import PromptSetting
    from OrganGuidanceLib.validation import InputError

    data = AblationData(args.slices, args.images, args.labels, args.rectum_label, args.tumor_label, args.intensity)
    if any(k < 0 for k in args.points):
        raise InputError(f"usam-ablation --points: {args.points} must be counts >= 0")
    settings = table4_settings(args.negatives, args.points, boxes=not args.no_box)
    model_for = {}
    for count, source in args.model_for:
        if not count.isdigit():
            raise InputError(f"usam-ablation --model-for: {count!r} is not a point count")
        if int(count) not in args.points:
            raise InputError(f"usam-ablation --model-for: {count} is not one of the --points {args.points}")
        model_for[PromptSetting(int(count), args.negatives if int(count) else 0)] = source
    device = _setup(args)
    result = run_ablation(args.checkpoint, data, settings, model_for, args.batch_size, device, not args.no_3d,
                          draws=args.draws)
    print(format_markdown(result), end="")
    if args.output:
        print("reports: " + ", ".join(str(p) for p in write_ablation_reports(result, args.output)))
    return 0
