"""``crcseg rcsegnext-plans | rcsegnext-table3 | rcsegnext-compare``: RCSegNeXt's plans, sizes and comparison."""
from __future__ import annotations

import argparse
from pathlib import Path

from CRCTraining.rcsegnext.configuration import RCSEGNEXT_CONFIGURATION


def _network_options(parser: argparse.ArgumentParser) -> None:
    from CRCSegmentationLib.networks.rcsegnext import ANISOTROPIC_BLOCKS, ISOTROPIC_BLOCKS

    parser.add_argument("--anisotropic-block", choices=ANISOTROPIC_BLOCKS,
                        help="Table 3 'Aniso stage' (default aninext)")
    parser.add_argument("--isotropic-block", choices=ISOTROPIC_BLOCKS, help="Table 3 'Iso stage' (default isonext)")
    parser.add_argument("--width", type=int, help="channels of the first stage (default 32)")
    parser.add_argument("--expansion", type=int, help="expansion ratio r (default 2)")
    parser.add_argument("--scales", type=int, help="scales s of the Res2NeXt/IsoNeXt split (default 4)")


def _options_of(args: argparse.Namespace) -> dict:
    names = ("anisotropic_block", "isotropic_block", "width", "expansion", "scales")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def add_rcsegnext_commands(commands) -> None:
    from CRCTraining.cli.arguments import add_schedule_arguments, add_workdir_arguments

    plans = commands.add_parser("rcsegnext-plans", help="add the 3d_fullres_rcsegnext configuration to a dataset's "
                                "plans (a patch RCSegNeXt's poolings divide; the network options)")
    add_workdir_arguments(plans)
    plans.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"),
                       help="default: 3d_fullres's patch rounded down to a multiple of both networks' downsampling")
    plans.add_argument("--batch-size", type=int, help="default: 3d_fullres's")
    plans.add_argument("--paper", action="store_true", help="RCSegNeXt §3.1: patch 16 x 320 x 320, batch 2")
    plans.add_argument("--name", default=RCSEGNEXT_CONFIGURATION, help="configuration name (default %(default)s); "
                       "a Table 3 variant can get its own, e.g. 3d_fullres_res2next")
    _network_options(plans)
    plans.set_defaults(run=plans_main)

    table3 = commands.add_parser("rcsegnext-table3", help="parameters of RCSegNeXt's Table 3 variants, against "
                                 "the paper's")
    table3.set_defaults(run=table3_main)

    compare = commands.add_parser("rcsegnext-compare", help="RCSegNeXt vs nnU-Net's default 3D network on the same "
                                  "plans: parameters, MACs, training and inference time, Dice per class")
    add_workdir_arguments(compare)
    compare.add_argument("--configuration", default=RCSEGNEXT_CONFIGURATION)
    add_schedule_arguments(compare)
    compare.add_argument("--timing-iterations", type=int, default=3, help="training steps timed per network")
    compare.add_argument("--no-training", action="store_true", help="only parameters, MACs and iteration time")
    compare.add_argument("-o", "--output", type=Path, help="also write the figures to this JSON file")
    compare.set_defaults(run=compare_main)


def plans_main(args: argparse.Namespace) -> int:
    from CRCTraining.nnunet.env import configure
    from CRCTraining.rcsegnext.configuration import RCSegNeXtPlan, add_rcsegnext_configuration, plans_file
    from OrganGuidanceLib.validation import InputError

    if args.paper and (args.patch_size or args.batch_size):
        raise InputError("--paper sets the patch and batch size: give either --paper or --patch-size/--batch-size")
    configure(args.workdir)
    options = dict(network=_options_of(args), name=args.name)
    plan = RCSegNeXtPlan.paper(**options) if args.paper else RCSegNeXtPlan(
        patch_size=tuple(args.patch_size) if args.patch_size else None, batch_size=args.batch_size, **options)
    written = add_rcsegnext_configuration(plans_file(args.dataset_id), plan)
    print(f"{plan.name}: patch {written['patch_size']}, batch {written['batch_size']}, spacing {written['spacing']} "
          f"mm, network {written.get('rcsegnext') or 'the paper network'}")
    return 0


def table3_main(args: argparse.Namespace) -> int:
    from CRCSegmentationLib.networks.rcsegnext import format_table3, table3_rows

    print(format_table3(table3_rows()))
    return 0


def compare_main(args: argparse.Namespace) -> int:
    from CRCTraining.nnunet.env import configure
    from CRCTraining.nnunet.planning import check_training_files
    from CRCTraining.rcsegnext.compare import compare

    configure(args.workdir)
    check_training_files(args.dataset_id, args.configuration)  # a cut-short plans file: exit 2, named
    result = compare(args.dataset_id, args.configuration, args.fold, args.epochs or 2, args.iterations or 5,
                     args.device, args.timing_iterations, not args.no_training, args.output)
    print(result.table())
    return 0
