"""``crcseg``: one command line for the headless package.

It sits in ``CRCTraining`` because that package is the top of the dependency
chain and may import every engine; each subcommand is a thin wrapper over an
engine function that the Slicer modules and console scripts call as well.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from CRCSegmentationLib.demo import add_tumor_demo_arguments, tumor_demo_main
from CRCSegmentationLib.batch import add_segment_arguments, segment_main
from OrganGuidanceLib.cli import add_guidance_arguments, guidance_main

from .evaluate import add_evaluate_arguments, evaluate_main
from .training_cli import add_training_commands
from .usam_cli import add_usam_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crcseg",
        description="SlicerCRC: colorectal cancer segmentation on CT (anatomy guidance, tumor segmentation, training)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="organ guidance + demo-model tumor segmentation on a generated phantom "
                               "(--guidance-only, or --sample for the public TotalSegmentator sample)")
    add_tumor_demo_arguments(demo)
    demo.set_defaults(run=tumor_demo_main)
    guidance = commands.add_parser("guidance", help="organ masks -> organs-of-interest mask, bowel wall, body crop")
    add_guidance_arguments(guidance)
    guidance.set_defaults(run=guidance_main)
    add_training_commands(commands)
    add_usam_commands(commands)
    evaluate = commands.add_parser("evaluate", help="Dice, NSD, precision, recall, HD95 of a prediction folder")
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(run=evaluate_main)
    segment = commands.add_parser("segment", help="tumor segmentation of a CT file or folder with a trained model")
    add_segment_arguments(segment)
    segment.set_defaults(run=segment_main)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from OrganGuidanceLib.providers import MissingWeightsError, RunCancelled
    from OrganGuidanceLib.validation import InputError

    try:
        return int(args.run(args) or 0)
    except (InputError, MissingWeightsError, RunCancelled) as error:
        print(f"crcseg {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"crcseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
