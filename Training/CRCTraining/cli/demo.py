"""``crcseg demo``: organ guidance + the demonstration tumor model on a generated phantom (or the MR path, the point
prompts with the demonstration U-SAM, or the public TotalSegmentator sample for guidance only)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from CRCSegmentationLib.demo.ct import run_tumor_demo
from CRCTraining.cli.arguments import add_device_argument
from OrganGuidanceLib.demo import DEFAULT_OUTPUT, SAMPLES, TS_EXAMPLE_URL, run_demo
from OrganGuidanceLib.download import ChecksumMismatch

# The points demo's small U-SAM runs tiny operations: a second thread gains nothing, and on a 2-core machine with
# other work a second thread makes every operation wait for it (measured: a warm click 12 ms with 1, 400 ms with 2).
POINTS_DEMO_THREADS = 1


# --- command line ------------------------------------------------------------------
def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"output folder (default: ./{DEFAULT_OUTPUT})")
    parser.add_argument("--sample", choices=sorted(SAMPLES), default=None,
                        help="use a public CT instead of the phantom (needs a network and TotalSegmentator weights; "
                        "falls back to the phantom without them)")
    parser.add_argument("--sample-url", default=None,
                        help="where to download the sample from (a mirror or a file:// URL; implies --sample ts-example); "
                        "its SHA-256 must match the official file")


def demo_main(args: argparse.Namespace) -> int:
    sample = args.sample
    if args.sample_url and sample is None:
        sample = "ts-example"
    try:
        run_demo(args.output, sample=sample, sample_url=args.sample_url or TS_EXAMPLE_URL)
    except ChecksumMismatch as error:
        print(f"crcseg demo: error: {error}", file=sys.stderr)
        return 2
    return 0


# --- command line ------------------------------------------------------------------
def add_tumor_demo_arguments(parser) -> None:
    """``crcseg demo`` options: the organ-guidance demo's, plus the tumor model's."""
    add_demo_arguments(parser)
    parser.add_argument("--guidance-only", action="store_true",
                        help="organ guidance only (the demo before tumor segmentation); implied by --sample")
    parser.add_argument("--model", type=Path, default=None,
                        help="tumor model bundle (default: the shipped demonstration model, catalogue name demo_phantom;"
                        " with --points a U-SAM checkpoint, bundle or catalogue name, default demo_usam_phantom)")
    add_device_argument(parser, "device of the tumor model")
    parser.add_argument("--mri", action="store_true",
                        help="the MR path instead: rectum + tumor on a sagittal T2 phantom with the shipped RCSegNeXt "
                        "demonstration model (--model: another MR bundle)")
    parser.add_argument("--points", action="store_true",
                        help="point prompts instead: simulated clicks (1/3/5 points, a negative, a box) and one prompt "
                        "to 3D on a CT phantom with the shipped U-SAM demonstration model; prints Dice per prompt")
    parser.add_argument("--threads", type=int, default=None,
                        help="PyTorch CPU threads (default with --points: 1, the small U-SAM gains nothing from more "
                        "and extra threads wait for each other on a busy CPU; otherwise PyTorch's default)")


def _set_threads(threads: Optional[int]) -> None:
    if threads is None:
        return
    if threads < 1:
        from OrganGuidanceLib.validation import InputError

        raise InputError(f"--threads: {threads} must be at least 1")
    import torch

    torch.set_num_threads(threads)


def tumor_demo_main(args) -> int:
    if args.points:
        from CRCSegmentationLib.demo.points import USAM_DEMO_MODEL_NAME, run_points_demo
        from OrganGuidanceLib.validation import InputError

        if args.mri or args.guidance_only or args.sample or args.sample_url:
            raise InputError("--points runs the point-prompt demo on a CT phantom; it takes no --mri, "
                             "--guidance-only or CT sample")
        _set_threads(args.threads or POINTS_DEMO_THREADS)
        run_points_demo(args.output, model=str(args.model or USAM_DEMO_MODEL_NAME), device=args.device)
        return 0
    _set_threads(args.threads)
    if args.mri:
        from CRCSegmentationLib.demo.mr import run_mr_demo
        from OrganGuidanceLib.validation import InputError

        if args.guidance_only or args.sample or args.sample_url:
            raise InputError("--mri runs the MR path, which has no organ guidance or CT sample")
        run_mr_demo(args.output, model=args.model, device=args.device)
        return 0
    # A public sample has no tumor ground truth, and the demo model knows only phantoms.
    if args.guidance_only or args.sample or args.sample_url:
        return demo_main(args)
    run_tumor_demo(args.output, model=args.model, device=args.device)
    return 0
