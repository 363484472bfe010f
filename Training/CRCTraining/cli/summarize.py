"""``crcseg summarize OUT``: merge the shards' ``summary.shard-I-of-N.csv`` into ``summary.csv`` (``crcseg segment``)
and ``guidance_summary.shard-I-of-N.csv`` into ``guidance_summary.csv`` (``crcseg guidance`` on a cohort),
whichever the folder holds (``OrganGuidanceLib.shards``); the last shard to finish does the same by itself."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_summarize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", type=Path, help="the output folder the shards of `crcseg segment --shard I/N` "
                        "(or `crcseg guidance --shard I/N`) wrote into")
    parser.add_argument("--partial", action="store_true",
                        help="merge the shard summaries that are there even when shards are missing (exit code 0); "
                             "default: a missing shard is named and nothing is written (exit code 1)")


def summarize_main(args: argparse.Namespace) -> int:
    from CRCSegmentationLib.batch import SUMMARY_FILE
    from OrganGuidanceLib.guidance_batch import SUMMARY_FILE as GUIDANCE_SUMMARY
    from OrganGuidanceLib.shards import merge_shard_summaries, shard_summaries
    from OrganGuidanceLib.validation import InputError

    if not args.output.is_dir():
        raise InputError(f"output: {args.output} is not a folder")
    kinds = [name for name in (SUMMARY_FILE, GUIDANCE_SUMMARY) if shard_summaries(args.output, name)] or [SUMMARY_FILE]
    code = 0
    for name in kinds:  # none found: the segment summary's message says what was looked for
        merged = merge_shard_summaries(args.output, name, partial=args.partial)
        print(merged.message(), file=sys.stdout if merged.path is not None else sys.stderr)
        code = code or (0 if merged.path is not None else 1)
    return code
