"""``crcseg``: one command line for the headless package.

It sits in ``CRCTraining`` because that package is the top of the dependency
chain and may import every engine; each subcommand is a thin wrapper over an
engine function that the Slicer modules and console scripts call as well.

Exit codes, one rule for every command (README, "When something goes wrong"):

- 0: done;
- 1: the run failed (an unexpected error, a full disk, or some cases of a batch failed);
- 2: bad input or usage: the message names the input and the problem (argparse's usage errors too);
- 130: cancelled (Ctrl+C).

A user error prints one line, never a traceback; ``--debug`` shows the traceback of any error.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import sys
import traceback
from pathlib import Path
from typing import List, Optional

from CRCTraining.cli.demo import add_tumor_demo_arguments, tumor_demo_main
from CRCTraining.cli.evaluate import add_evaluate_arguments, evaluate_main
from CRCTraining.cli.flare24 import add_ablation_command
from CRCTraining.cli.guidance import add_guidance_arguments, guidance_main
from CRCTraining.cli.hcf import add_hcf_commands
from CRCTraining.cli.nnunet import add_training_commands
from CRCTraining.cli.rcsegnext import add_rcsegnext_commands
from CRCTraining.cli.segment import add_segment_arguments, segment_main
from CRCTraining.cli.summarize import add_summarize_arguments, summarize_main
from CRCTraining.cli.usam import add_usam_commands


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
    add_hcf_commands(commands)
    add_ablation_command(commands)
    add_rcsegnext_commands(commands)
    evaluate = commands.add_parser("evaluate", help="Dice, NSD, precision, recall, HD95 of a prediction folder")
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(run=evaluate_main)
    segment = commands.add_parser("segment", help="tumor segmentation of a CT file or folder with a trained model")
    add_segment_arguments(segment)
    segment.set_defaults(run=segment_main)
    summarize = commands.add_parser("summarize", help="merge the shard summaries of a sharded `segment` run "
                                    "(--shard I/N) into summary.csv")
    add_summarize_arguments(summarize)
    summarize.set_defaults(run=summarize_main)
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    for command in commands.choices.values():  # also accepted after the command name
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130


def user_error_types() -> tuple:
    """Errors that mean "your input is wrong": reported in one line, exit code 2."""
    from OrganGuidanceLib.providers import MissingWeightsError
    from OrganGuidanceLib.validation import InputError

    return (InputError, MissingWeightsError, FileExistsError, FileNotFoundError, NotADirectoryError,
            IsADirectoryError, PermissionError)


# Commands that write a folder of results and hold its lock while they run (OrganGuidanceLib/run_lock.py), so a
# second run into the same folder is refused. `segment` and `guidance` lock inside their engine (their folders are
# ResultFolders); the trainers (`train`, `usam-train`, `hcf-train`) run under torchrun and resume from checkpoints.
LOCKED_OUTPUT_COMMANDS = frozenset({"evaluate", "flare24-ablation", "hcf-phantoms", "hcf-export", "hcf-table3",
                                    "predict", "export", "usam-slices", "usam-evaluate", "usam-ablation"})


def _output_lock(args: argparse.Namespace):
    output = getattr(args, "output", None)
    if args.command not in LOCKED_OUTPUT_COMMANDS or output is None:
        return contextlib.nullcontext()
    from OrganGuidanceLib.run_lock import output_lock

    return output_lock(Path(output), f"crcseg {args.command}")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from OrganGuidanceLib.progress import RunCancelled

    name = f"crcseg {args.command}"
    try:
        with _output_lock(args):
            return int(args.run(args) or EXIT_OK)
    except (RunCancelled, KeyboardInterrupt) as error:
        _report(args, f"{name}: cancelled{': ' + str(error) if str(error) else ''}")
        return EXIT_CANCELLED
    except user_error_types() as error:
        _report(args, f"{name}: error: {error}")
        return EXIT_BAD_INPUT
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            _report(args, f"{name}: failed: no space left for the output ({error}); nothing was moved into place, "
                          "free some space and rerun")
        else:
            _report(args, f"{name}: failed: {type(error).__name__}: {error}")
        return EXIT_FAILED
    except Exception as error:  # noqa: BLE001 - the last line of defence: one line, the traceback with --debug
        _report(args, f"{name}: failed: {type(error).__name__}: {error} (run with --debug for the traceback)")
        return EXIT_FAILED


def _report(args: argparse.Namespace, message: str) -> None:
    if getattr(args, "debug", False):
        traceback.print_exc()
    print(message, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
