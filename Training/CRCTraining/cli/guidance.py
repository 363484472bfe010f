"""``crcseg guidance``: a thin command-line layer over ``run_guidance``."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List

from CRCTraining.cli.arguments import add_device_argument, add_shard_argument, shard_from_arguments
from OrganGuidanceLib.guidance import GuidanceParameters, MOSSource, run_guidance
from OrganGuidanceLib.labels import ORGAN_SETS

DEFAULTS = GuidanceParameters()


def add_guidance_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ct", type=Path, help="CT volume: NIfTI/NRRD/MHA file, a DICOM series folder, or a zip of one; "
                        "or a cohort: a folder of them, or a zip of several series (each case into OUT/<case>/, "
                        "with OUT/guidance_summary.csv)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--organs", type=Path, nargs="+", default=[],
        help="existing organ label map(s) (MOS), OR-merged after resampling to the CT grid (for a cohort: folders "
        "of label maps <case>.nii.gz); without it TotalSegmentator runs (its weights must be installed)",
    )
    parser.add_argument(
        "--convention", nargs="+", default=["totalsegmentator"],
        help="label convention per --organs file: totalsegmentator, word, or a JSON file {value: name}; "
        "one value applies to all files",
    )
    parser.add_argument("--organ-set", choices=sorted(ORGAN_SETS), default=DEFAULTS.organ_set)
    parser.add_argument("--dilation-mm", type=float, default=DEFAULTS.dilation_mm, help="OOI dilation radius (mm)")
    parser.add_argument("--wall-mm", type=float, default=DEFAULTS.wall_width_mm, help="bowel wall half-width (mm)")
    parser.add_argument("--no-crop", action="store_true", help="skip the body crop")
    parser.add_argument("--body-threshold-hu", type=float, default=DEFAULTS.body_threshold_hu)
    parser.add_argument("--crop-margin-mm", type=float, default=DEFAULTS.crop_margin_mm)
    parser.add_argument("--body-connectivity", type=int, choices=(6, 18, 26), default=DEFAULTS.body_connectivity,
                        help="connectivity of the body component (6: FLARE24's literal crop; default 26)")
    parser.add_argument("--write-cropped", action="store_true", help="also write CT, MOS and OOI cropped to the body")
    parser.add_argument("--full", action="store_true", help="TotalSegmentator full-resolution model instead of --fast")
    add_device_argument(parser)
    parser.add_argument("--no-png", action="store_true", help="skip the QA overlay picture")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of an earlier run in the output folder whole (its stale files "
                             "too), once this run is complete (a cohort: by default a rerun skips the finished cases)")
    add_shard_argument(parser)


def _conventions(args: argparse.Namespace) -> List[str]:
    conventions = list(args.convention)
    if len(conventions) == 1:
        conventions *= len(args.organs)
    if len(conventions) != len(args.organs):
        from OrganGuidanceLib.validation import InputError

        raise InputError(f"--convention: give one value or one per --organs file ({len(args.organs)}), "
                         f"got {len(conventions)}")
    return conventions


def _totalsegmentator(args: argparse.Namespace):
    from OrganGuidanceLib.providers import TotalSegmentatorProvider

    return TotalSegmentatorProvider(args.organ_set, fast=not args.full, device=args.device)


def _sources(args: argparse.Namespace, ct) -> List[MOSSource]:
    from OrganGuidanceLib.providers import ImportedLabelMapProvider

    if not args.organs:
        return [_totalsegmentator(args).segment(ct)]
    return [ImportedLabelMapProvider(path, convention).segment()
            for path, convention in zip(args.organs, _conventions(args))]


def is_cohort(path: Path) -> bool:
    """A folder that is not one DICOM series, or a zip of several series or images: one case each."""
    from OrganGuidanceLib.dicom_series import is_dicom_series_folder
    from OrganGuidanceLib.dicom_zip import is_zip_input, zip_entries

    if path.is_dir():
        return not is_dicom_series_folder(path)
    return is_zip_input(path) and len(zip_entries(path)) > 1


def _parameters(args: argparse.Namespace) -> GuidanceParameters:
    return GuidanceParameters(
        organ_set=args.organ_set, dilation_mm=args.dilation_mm, wall_width_mm=args.wall_mm,
        body_crop=not args.no_crop, body_threshold_hu=args.body_threshold_hu, crop_margin_mm=args.crop_margin_mm,
        body_connectivity=args.body_connectivity,
    )


def cohort_main(args: argparse.Namespace, shard) -> int:
    from OrganGuidanceLib.guidance_batch import organ_maps_for, run_guidance_batch

    if args.organs:
        sources = organ_maps_for(args.organs, _conventions(args))
    else:
        provider = _totalsegmentator(args)

        def sources(case, ct):
            return [provider.segment(ct)]
    report = run_guidance_batch(args.ct, args.output, _parameters(args), sources, shard=shard,
                                overwrite=args.overwrite, overlay=not args.no_png, cropped=args.write_cropped)
    print(report.summary())
    return 1 if report.failed else 0


def guidance_main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from OrganGuidanceLib.io import read_image
    from OrganGuidanceLib.outputs import OUTPUT_FILES, guidance_owned, write_guidance_outputs
    from OrganGuidanceLib.result_folder import open_result_folder
    from OrganGuidanceLib.validation import InputError

    shard = shard_from_arguments(args)
    if is_cohort(args.ct):
        return cohort_main(args, shard)
    if shard is not None and args.shard:
        raise InputError(f"--shard: {args.ct} is one CT; shards split a cohort (a folder of CTs or of series)")
    parameters = _parameters(args)
    started = time.perf_counter()
    # Locked while it runs; with --overwrite the new result replaces the earlier one whole, at the end.
    with open_result_folder(args.output, args.overwrite, guidance_owned) as results:
        earlier = args.output / OUTPUT_FILES["summary"]
        if earlier.exists() and not args.overwrite:
            raise InputError(f"output: {args.output} holds the results of an earlier run ({earlier.name}); "
                             "pass --overwrite to replace them, or choose another output folder")
        with tqdm(total=100, desc="organ guidance", unit="%", file=sys.stderr, disable=None) as bar:
            bar.set_postfix_str("reading")
            ct = read_image(args.ct, name=f"CT {args.ct.name}")
            bar.set_postfix_str("organ masks")
            sources = _sources(args, ct)

            def progress(stage: str, fraction: float) -> None:
                bar.set_postfix_str(stage)
                bar.n = int(10 + 80 * fraction)
                bar.refresh()

            result = run_guidance(ct, sources, parameters, progress)
            bar.set_postfix_str("writing")
            written = write_guidance_outputs(ct, result, results.work, parameters, overlay=not args.no_png,
                                             cropped=args.write_cropped)
            paths = {key: args.output / path.relative_to(results.work) for key, path in written.items()}
            bar.n = 100
            bar.refresh()
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(json.dumps({key: str(value) for key, value in paths.items()}, indent=2))
    print(f"organ guidance done in {time.perf_counter() - started:.1f} s -> {args.output}")
    return 0
