"""``crcseg prepare | plan | pretrain | train | predict | export``: thin wrappers over the training steps.

Every step is resumable and takes ``--workdir DIR`` (nnU-Net's raw, preprocessed and
results folders under DIR) or uses nnU-Net's own environment variables.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from CRCTraining.cli.arguments import (
    add_device_argument,
    add_schedule_arguments,
    add_shard_argument,
    add_workdir_arguments,
    shard_from_arguments,
)
from CRCTraining.nnunet.planning import PAPER_TARGET_SPACING

SAMPLING_TRAINERS = {  # AG-CRC Table VI, by the strategy names of sampling.py
    "ag": "nnUNetTrainerAGSampling",
    "uniform": "nnUNetTrainerSamplingUniform",
    "uniform_ooi": "nnUNetTrainerSamplingUniformOOI",
    "uniform_colon": "nnUNetTrainerSamplingUniformColon",
    "hybrid": "nnUNetTrainerBaseline",
    "hybrid_ooi": "nnUNetTrainerSamplingHybridOOI",
    "hybrid_colon": "nnUNetTrainerSamplingHybridColon",
}
SSL_TRAINERS = {"bowel_wall": "nnUNetTrainerAGSSL", "inpaint": "nnUNetTrainerSSLInpaint", "mae": "nnUNetTrainerSSLMAE"}


def _configuration(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configuration", help="nnU-Net configuration (default: 3d_fullres; 3d_fullres_rcsegnext "
                        "for the RCSegNeXt trainers, written by `crcseg rcsegnext-plans`)")


def configuration_of(args: argparse.Namespace, trainer: str) -> str:
    """``--configuration``, else the one the trainer's network needs."""
    from CRCSegmentationLib.networks.nnunet_architectures import RCSEGNEXT, TRAINER_ARCHITECTURES
    from CRCTraining.nnunet.planning import CONFIGURATION
    from CRCTraining.rcsegnext.configuration import RCSEGNEXT_CONFIGURATION

    if getattr(args, "configuration", None):
        return args.configuration
    return RCSEGNEXT_CONFIGURATION if TRAINER_ARCHITECTURES.get(trainer) == RCSEGNEXT else CONFIGURATION


def add_training_commands(commands) -> None:
    prepare = commands.add_parser("prepare", help="dataset -> nnU-Net raw dataset: CT + MOS + OOI channels, "
                                  "or with --modality mr one T2 MRI channel and rectum + tumor labels")
    add_workdir_arguments(prepare)
    prepare.add_argument("source", type=Path, help="MSD (e.g. Task10_Colon) or nnU-Net raw dataset folder")
    prepare.add_argument("--name", required=True, help="dataset name, e.g. ColonAGCRC")
    prepare.add_argument("--modality", choices=("ct", "mr"), default="ct",
                         help="ct: AG-CRC's CT + MOS + OOI (default); mr: sagittal T2 MRI with rectum + tumor "
                         "labels, no organ guidance (RCSegNeXt)")
    prepare.add_argument("--rectum-label", help="--modality mr: the source's rectum label (name or value; "
                         "default: the label named rectum)")
    prepare.add_argument("--tumor-label", help="--modality mr: the source's tumor label (name or value; "
                         "default: the label named tumor, tumour, cancer or carcinoma)")
    prepare.add_argument("--organs", default="totalsegmentator",
                         help="'totalsegmentator' (needs its weights) or a folder of organ label maps <case>.nii.gz")
    prepare.add_argument("--convention", default="totalsegmentator", help="label convention of --organs")
    prepare.add_argument("--second-organs", type=Path, help="folder of a second MOS source (Algorithm 1, WORD)")
    prepare.add_argument("--second-convention", default="word")
    prepare.add_argument("--dilation-mm", type=float, default=5.0)
    prepare.add_argument("--wall-mm", type=float, default=3.0)
    prepare.add_argument("--ssl", action="store_true", help="AG-SSL dataset: the bowel wall becomes the label")
    prepare.add_argument("--labels", choices=("tumor", "organ-interference"), default="tumor",
                         help="tumor: 0/1 (AG-CRC); organ-interference: organs 1..K from the MOS, tumor K+1 "
                         "painted over them (FLARE24 §2.2)")
    prepare.add_argument("--interference-organs", nargs="+", metavar="NAME",
                         help="organs of --labels organ-interference, matched by name in the MOS convention "
                         "(default: FLARE22's 13 abdominal organs)")
    add_device_argument(prepare)
    prepare.add_argument("--full", action="store_true", help="TotalSegmentator's 1.5 mm models instead of --fast")
    add_shard_argument(prepare)
    prepare.set_defaults(run=prepare_main)

    plan = commands.add_parser("plan", help="nnU-Net planning + preprocessing (+ AG-sampling maps)")
    add_workdir_arguments(plan)
    plan.add_argument("--paper-spacing", action="store_true", help="target spacing 5.0 x 0.78 x 0.78 mm (AG-CRC)")
    plan.add_argument("--target-spacing", type=float, nargs=3, metavar=("Z", "Y", "X"))
    plan.add_argument("--gpu-memory-gb", type=float, help="nnU-Net's VRAM target (smaller: smaller patches)")
    plan.add_argument("--processes", type=int, default=2)
    plan.add_argument("--ssl-dataset-id", type=int, help="also preprocess this AG-SSL dataset with the same plans")
    plan.add_argument("--no-verify", action="store_true", help="skip nnU-Net's dataset integrity check")
    plan.add_argument("--rcsegnext", action="store_true",
                      help="also write the 3d_fullres_rcsegnext configuration (as `crcseg rcsegnext-plans` does)")
    plan.set_defaults(run=plan_main)

    pretrain = commands.add_parser("pretrain", help="self-supervised pretraining (AG-SSL, Eq. 7)")
    add_workdir_arguments(pretrain)
    pretrain.add_argument("--masking", choices=sorted(SSL_TRAINERS), default="bowel_wall")
    add_schedule_arguments(pretrain, fold="all")  # pretraining uses every case
    pretrain.set_defaults(run=pretrain_main)

    train = commands.add_parser("train", help="supervised training (AG-sampling + AF-loss by default)")
    add_workdir_arguments(train)
    train.add_argument("--trainer", help="nnU-Net trainer class (default nnUNetTrainerAGCRC)")
    train.add_argument("--sampling", choices=sorted(SAMPLING_TRAINERS),
                       help="Table VI ablation: sampling strategy alone (without AF-loss)")
    train.add_argument("--pretrained", type=Path, help="checkpoint from `crcseg pretrain` to initialise from")
    _configuration(train)
    add_schedule_arguments(train)
    train.set_defaults(run=train_main)

    predict = commands.add_parser("predict", help="predict a folder of prepared cases with a trained fold")
    add_workdir_arguments(predict)
    predict.add_argument("-i", "--input", type=Path, required=True, help="folder of <case>_0000/1/2 files")
    predict.add_argument("-o", "--output", type=Path, required=True)
    predict.add_argument("--trainer", default="nnUNetTrainerAGCRC")
    _configuration(predict)
    predict.add_argument("--folds", nargs="+", default=["0"])
    predict.add_argument("--checkpoint", default="checkpoint_final.pth")
    add_device_argument(predict)
    predict.add_argument("--no-mirroring", action="store_true", help="no test-time mirroring (8x faster)")
    predict.add_argument("--step-size", type=float, default=0.5, help="sliding-window step (fraction of a patch)")
    predict.set_defaults(run=predict_main)

    export = commands.add_parser("export", help="trained model -> model bundle for the CRCSegmentation module")
    add_workdir_arguments(export)
    export.add_argument("-o", "--output", type=Path, required=True, help="bundle folder to create")
    export.add_argument("--trainer", default="nnUNetTrainerAGCRC")
    _configuration(export)
    export.add_argument("--folds", nargs="+", default=["0"])
    export.add_argument("--checkpoint", default="checkpoint_final.pth")
    export.add_argument("--name", help="model name (default: the dataset name)")
    export.add_argument("--description", default="")
    export.set_defaults(run=export_main)


def prepare_main(args: argparse.Namespace) -> int:
    from CRCTraining.data.prepare_ct import prepare_dataset
    from CRCTraining.flare24.labels import FLARE22_ORGANS
    from CRCTraining.nnunet.env import configure
    from OrganGuidanceLib.guidance import GuidanceParameters
    from OrganGuidanceLib.json_files import json_field, read_json
    from OrganGuidanceLib.validation import InputError

    if args.interference_organs and args.labels != "organ-interference":  # a usage error: exit code 2
        raise InputError("--interference-organs needs --labels organ-interference")
    shard = shard_from_arguments(args)
    if args.modality == "mr":
        if shard is not None:
            raise InputError("--shard: not with --modality mr (an MR dataset is prepared in seconds per case)")
        return _prepare_mr(args)
    if args.rectum_label or args.tumor_label:
        raise InputError("--rectum-label and --tumor-label need --modality mr")
    paths = configure(args.workdir)
    organs = args.organs if args.organs == "totalsegmentator" else Path(args.organs)
    report = prepare_dataset(
        args.source, args.dataset_id, args.name, paths.raw, organs=organs, convention=args.convention,
        second_organs=args.second_organs, second_convention=args.second_convention,
        parameters=GuidanceParameters(dilation_mm=args.dilation_mm, wall_width_mm=args.wall_mm, body_crop=False),
        device=args.device, fast=not args.full, ssl=args.ssl,
        labels=args.labels, interference_organs=args.interference_organs or FLARE22_ORGANS, shard=shard,
    )
    print(report.summary())
    if args.labels == "organ-interference":
        path = report.dataset_folder / "dataset.json"
        block = json_field(json_field(read_json(path), "agcrc", path), "organ_interference", path, where="agcrc.")
        print(f"labels: {block['label_values']}" + (f"; no label in the MOS convention (absent in every case): "
                                                     f"{', '.join(block['absent_in_convention'])}"
                                                     if block["absent_in_convention"] else ""))
    return 1 if report.failed else 0  # like `crcseg segment`: some cases of the batch failed


def _prepare_mr(args: argparse.Namespace) -> int:
    from CRCTraining.data.prepare_mr import prepare_mr_dataset
    from CRCTraining.nnunet.env import configure
    from OrganGuidanceLib.validation import InputError

    ct_only = [flag for flag, used in (("--ssl", args.ssl), ("--labels organ-interference", args.labels != "tumor"),
                                       ("--second-organs", args.second_organs is not None)) if used]
    if ct_only:
        raise InputError(f"{', '.join(ct_only)}: CT options; --modality mr takes no organ guidance")
    paths = configure(args.workdir)
    report = prepare_mr_dataset(args.source, args.dataset_id, args.name, paths.raw,
                                rectum_label=args.rectum_label, tumor_label=args.tumor_label)
    print(report.summary())
    return 1 if report.failed else 0


def plan_main(args: argparse.Namespace) -> int:
    from CRCTraining.agcrc.sampling_maps import precompute_sampling_maps
    from CRCTraining.nnunet.env import configure
    from CRCTraining.nnunet.planning import (
        patch_size,
        plan_and_preprocess,
        preprocess_with_plans_of,
        preprocessed_folder,
    )

    configure(args.workdir)
    spacing = PAPER_TARGET_SPACING if args.paper_spacing else args.target_spacing
    plans = plan_and_preprocess(args.dataset_id, spacing, args.gpu_memory_gb, args.processes, verify=not args.no_verify)
    configuration = plans["configurations"]["3d_fullres"]
    print(f"3d_fullres: spacing {configuration['spacing']} mm, patch {configuration['patch_size']}, "
          f"batch {configuration['batch_size']}")
    if _has_ooi_channel(args.dataset_id):  # AG-sampling's maps come from the OOI; MR datasets have none
        precompute_sampling_maps(preprocessed_folder(args.dataset_id), patch_size(args.dataset_id))
    if args.rcsegnext:
        from CRCTraining.rcsegnext.configuration import RCSegNeXtPlan, add_rcsegnext_configuration, plans_file

        written = add_rcsegnext_configuration(plans_file(args.dataset_id), RCSegNeXtPlan())
        print(f"3d_fullres_rcsegnext: patch {written['patch_size']}, batch {written['batch_size']}")
    if args.ssl_dataset_id is not None:
        preprocess_with_plans_of(args.dataset_id, args.ssl_dataset_id, args.processes)
    return 0


def _has_ooi_channel(dataset_id: int) -> bool:
    """False for the MR datasets of ``prepare --modality mr`` (one T2 channel), True for every CT one."""
    from CRCSegmentationLib.core.model import dataset_modality
    from CRCTraining.nnunet.planning import raw_dataset_json

    return dataset_modality(raw_dataset_json(dataset_id)) != "MR"


def _check_pretrained(path) -> None:
    from OrganGuidanceLib.validation import InputError

    if path is not None and not Path(path).is_file():
        problem = ("is a folder; give the checkpoint file (checkpoint_final.pth of `crcseg pretrain`)"
                   if Path(path).is_dir() else "no such file (run `crcseg pretrain` first)")
        raise InputError(f"--pretrained: pretrained weights {path}: {problem}")


def _run_training(args: argparse.Namespace, trainer: str, pretrained=None) -> int:
    import os

    from CRCTraining.nnunet.env import configure
    from CRCTraining.nnunet.mixins import ENV_FINAL_VALIDATION
    from CRCTraining.nnunet.planning import check_training_files
    from CRCTraining.nnunet.train import train
    from OrganGuidanceLib.device import resolve_device

    _check_pretrained(pretrained)  # the options first: a wrong path or device costs no dataset lookup
    resolve_device(args.device)
    configure(args.workdir)
    check_training_files(args.dataset_id, configuration_of(args, trainer))
    if args.no_final_validation:
        os.environ[ENV_FINAL_VALIDATION] = "0"
    checkpoint = train(
        args.dataset_id, trainer, args.fold, configuration=configuration_of(args, trainer),
        pretrained_weights=pretrained, device=args.device,
        num_gpus=args.num_gpus, epochs=args.epochs, iterations=args.iterations, val_iterations=args.val_iterations,
    )
    print(f"{trainer}: {checkpoint}")
    return 0


def pretrain_main(args: argparse.Namespace) -> int:
    return _run_training(args, SSL_TRAINERS[args.masking])


def train_main(args: argparse.Namespace) -> int:
    from OrganGuidanceLib.validation import InputError

    if args.trainer and args.sampling:  # a usage error: exit code 2 like the others, not SystemExit's 1
        raise InputError("give --trainer or --sampling, not both")
    trainer = args.trainer or (SAMPLING_TRAINERS[args.sampling] if args.sampling else "nnUNetTrainerAGCRC")
    return _run_training(args, trainer, args.pretrained)


def predict_main(args: argparse.Namespace) -> int:
    from CRCTraining.nnunet.env import configure, dataset_name
    from CRCTraining.nnunet.export import trained_model_folder
    from CRCTraining.nnunet.predict import predict_folder
    from OrganGuidanceLib.device import resolve_device
    from OrganGuidanceLib.json_files import read_json

    paths = configure(args.workdir)
    model = trained_model_folder(paths.results, dataset_name(args.dataset_id), args.trainer,
                                 configuration_of(args, args.trainer))
    for name in ("plans.json", "dataset.json"):  # nnU-Net's predictor reads them with a bare json.load
        read_json(model / name)
    written = predict_folder(model, args.input, args.output, args.folds, args.checkpoint,
                             resolve_device(args.device), not args.no_mirroring, args.step_size)
    print(f"{len(written)} predictions in {args.output}")
    return 0


def export_main(args: argparse.Namespace) -> int:
    from CRCTraining.nnunet.env import configure, dataset_name
    from CRCTraining.nnunet.export import export_bundle, trained_model_folder

    paths = configure(args.workdir)
    model = trained_model_folder(paths.results, dataset_name(args.dataset_id), args.trainer,
                                 configuration_of(args, args.trainer))
    bundle = export_bundle(model, args.output, args.folds, args.checkpoint, args.name, args.description)
    print(f"model bundle: {bundle}")
    return 0
