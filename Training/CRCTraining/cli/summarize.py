"""``crcseg summarize OUT``: merge the shards' ``summary.shard-I-of-N.csv`` into ``summary.csv``
(``OrganGuidanceLib.shards``); the last shard to finish does the same by itself."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_summarize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", type=Path, help="the output folder the shards of `crcseg segment --shard I/N` "
                        "wrote into")
    parser.add_argument("--partial", action="store_true",
                        help="merge the shard summaries that are there even when shards are missing (exit code 0); "
                             "default: a missing shard is named and nothing is written (exit code 1)")


def summarize_main(args: argparse.Namespace) -> int:
    from CRCSegmentationLib.batch import SUMMARY_FILE
    from OrganGuidanceLib.shards import merge_shard_summaries
    from OrganGuidanceLib.validation import InputError

    if not args.output.is_dir():
        raise InputError(f"output: {args.output} is not a folder")
    merged = merge_shard_summaries(args.output, SUMMARY_FILE, partial=args.partial)
    print(merged.message(), file=sys.stdout if merged.path is not None else sys.stderr)
    return 0 if merged.path is not None else 1
