"""``crcseg evaluate``: Dice, NSD, precision, recall, HD95 of a prediction folder (``CRCTraining.evaluate``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from CRCTraining.evaluate import MISSING_PREDICTIONS, NSD_TOLERANCE_MM, evaluate_folder


# --- command line (for ``crcseg evaluate``, wired in CRCTraining.cli) ---------
def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("predictions", type=Path, help="folder of predicted label maps (<case>.nii.gz, ...)")
    parser.add_argument("references", type=Path, help="folder of reference label maps, same case names")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for metrics.csv, summary.json, PNG")
    parser.add_argument("--labels", type=int, nargs="+", default=[1], help="label values to evaluate (default: 1)")
    parser.add_argument("--nsd-tolerance-mm", type=float, default=NSD_TOLERANCE_MM,
                        help=f"NSD tolerance in mm (default {NSD_TOLERANCE_MM:g}, AG-CRC / MSD)")
    parser.add_argument("--missing-predictions", choices=MISSING_PREDICTIONS, default="refuse",
                        help="a reference without a prediction: refuse (default), empty (score it as an empty "
                        "prediction), skip (evaluate only the predicted cases, e.g. one fold's validation set); a "
                        "prediction without a reference is always refused")


def evaluate_main(args: argparse.Namespace) -> int:
    summary = evaluate_folder(args.predictions, args.references, args.output, args.labels, args.nsd_tolerance_mm,
                              args.missing_predictions)
    for label, per_metric in summary.statistics.items():
        text = ", ".join(f"{name} {stats.mean:.4f}" for name, stats in per_metric.items())
        print(f"label {label}, {summary.n_cases} cases, mean: {text}")
    print(f"wrote {summary.metrics_csv}, {summary.summary_json}, {summary.boxplot_png}")
    return 0
