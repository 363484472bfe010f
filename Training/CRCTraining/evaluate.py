"""The ``evaluate`` step: predictions folder vs references folder -> per-case metrics, summary, box plot.

Files are paired by case name, whatever their format (``<case>.nii.gz`` as nnU-Net
writes them, or NRRD/MHA). Metrics are AG-CRC §IV-D's (Dice, NSD@4 mm, precision,
recall, HD95), as defined in ``CRCSegmentationLib.measurement.metrics``. Outputs, each
written atomically into ``output``:

- ``metrics.csv``: one row per case (and label, when several are evaluated);
- ``summary.json``: mean, median, std (sample, ddof=1) of each metric, case
  counts, missing predictions and the conventions used;
- ``metrics_boxplot.png``: one box per metric, cases as dots, HD95 on its own axis.

Pairing follows the rule of every training input (``OrganGuidanceLib.case_folders``): hidden files
(macOS ``._*``) are ignored, and unpaired files are refused with their names. A prediction without a
reference is always refused (a wrong folder, or cases named differently). A reference without a
prediction follows ``missing_predictions`` (``--missing-predictions``), chosen by the user because no rule
fits every case:

- ``refuse`` (default): an inference crashed or was not run; say which cases;
- ``empty``: score it as an empty prediction, so a failed inference counts as a miss (Dice 0, HD95
  1000 mm); flagged in ``metrics.csv``, listed in ``summary.json``;
- ``skip``: evaluate only the predicted cases (one fold's validation predictions against a folder of every
  case's reference, as nnU-Net's ``gt_segmentations``); the skipped cases are listed in ``summary.json``.
"""
from __future__ import annotations

import csv
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from CRCSegmentationLib.measurement.metrics import (
    CONVENTIONS,
    HD95_EMPTY_MM,
    NSD_TOLERANCE_MM,
    SegmentationMetrics,
    compute_metrics,
)
from OrganGuidanceLib.atomic import atomic_path, write_text_atomic
from OrganGuidanceLib.case_folders import files_by_case, name_list
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.validation import InputError

METRIC_NAMES = ("dice", "nsd", "precision", "recall", "hd95")
METRICS_CSV, SUMMARY_JSON, BOXPLOT_PNG = "metrics.csv", "summary.json", "metrics_boxplot.png"
MISSING_PREDICTIONS = ("refuse", "empty", "skip")  # what a reference without a prediction means (module docstring)


class EvaluationError(InputError):
    """Predictions and references cannot be compared; the message names the case and why."""


@dataclass
class CaseMetrics:
    case: str
    label: int
    metrics: SegmentationMetrics
    prediction_missing: bool = False


@dataclass
class MetricStatistics:
    mean: float
    median: float
    std: float  # sample standard deviation (ddof=1); 0 for a single case
    n: int


@dataclass
class EvaluationSummary:
    results: List[CaseMetrics]
    statistics: Dict[int, Dict[str, MetricStatistics]]  # label -> metric -> statistics
    missing_predictions: List[str] = field(default_factory=list)  # references without a prediction
    missing_policy: str = "refuse"  # how they were evaluated: MISSING_PREDICTIONS
    metrics_csv: Optional[Path] = None
    summary_json: Optional[Path] = None
    boxplot_png: Optional[Path] = None

    @property
    def n_cases(self) -> int:
        return len({r.case for r in self.results})


# --- pairing and reading --------------------------------------------------
def image_files_by_case(folder: Path, role: str) -> Dict[str, Path]:
    """Image files of ``folder`` by case name; hidden and other files (nnU-Net's JSON, .npz) are ignored."""
    return files_by_case(folder, role, error=EvaluationError)


def check_pairs(prediction_files: Dict[str, Path], reference_files: Dict[str, Path], predictions: Path,
                references: Path, missing_predictions: str = "refuse") -> List[str]:
    """The cases without a prediction (allowed by ``missing_predictions`` "empty" or "skip"); a prediction without
    a reference, and with "refuse" a reference without a prediction, refused with the names."""
    if missing_predictions not in MISSING_PREDICTIONS:
        raise EvaluationError(f"--missing-predictions {missing_predictions!r}: choose one of "
                              f"{list(MISSING_PREDICTIONS)}")
    unmatched = [path.name for case, path in prediction_files.items() if case not in reference_files]
    missing = [case for case in reference_files if case not in prediction_files]
    problems = []
    if unmatched:
        problems.append(f"{len(unmatched)} prediction(s) in {predictions} without a reference in {references}: "
                        f"{name_list(unmatched)} (a wrong folder, or cases named differently?)")
    if missing and missing_predictions == "refuse":
        problems.append(f"{len(missing)} reference(s) in {references} without a prediction in {predictions}: "
                        f"{name_list([reference_files[case].name for case in missing])}; pass --missing-predictions "
                        "empty to score them as empty predictions (a failed inference counts as a miss), or skip "
                        "to evaluate only the predicted cases (e.g. one fold's validation cases)")
    if problems:
        raise EvaluationError("; ".join(problems))
    if missing and len(missing) == len(reference_files) and missing_predictions == "skip":
        raise EvaluationError(f"predictions {predictions}: no prediction has a reference in {references}; nothing "
                              "to evaluate")
    return missing


def _grid_text(image: Image) -> str:
    return (f"shape {image.shape}, spacing {tuple(round(s, 4) for s in image.spacing)}, "
            f"origin {tuple(round(o, 2) for o in image.origin)}")


def _read_pair(case: str, reference_path: Path, prediction_path: Optional[Path]) -> Tuple[Image, Optional[Image]]:
    reference = read_image(reference_path, name=f"{case} reference")
    if prediction_path is None:
        return reference, None
    prediction = read_image(prediction_path, name=f"{case} prediction")
    if not prediction.same_grid(reference):
        raise EvaluationError(
            f"case {case}: prediction {prediction_path.name} is not on the reference grid "
            f"(prediction {_grid_text(prediction)}; reference {_grid_text(reference)}"
            + ("" if np.allclose(prediction.direction, reference.direction, atol=1e-5) else "; directions differ")
            + "); resample the prediction to the reference first"
        )
    return reference, prediction


# --- statistics and outputs -----------------------------------------------
def _statistics(values: Sequence[float]) -> MetricStatistics:
    array = np.asarray(values, dtype=float)
    return MetricStatistics(
        mean=float(array.mean()),
        median=float(np.median(array)),
        std=float(array.std(ddof=1)) if len(array) > 1 else 0.0,
        n=int(len(array)),
    )


def _csv_text(results: Sequence[CaseMetrics]) -> str:
    fields = ["case", "label", *SegmentationMetrics.__dataclass_fields__, "prediction_missing"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for result in results:
        writer.writerow({"case": result.case, "label": result.label, **result.metrics.to_dict(),
                         "prediction_missing": int(result.prediction_missing)})
    return buffer.getvalue()


def _summary_json(summary: EvaluationSummary, predictions: Path, references: Path, nsd_tolerance_mm: float) -> str:
    conventions = dict(CONVENTIONS)
    conventions["std"] = "sample standard deviation (ddof=1); 0 for a single case"
    conventions["missing_prediction"] = {"refuse": "none: every reference has a prediction",
                                         "empty": "evaluated as an empty prediction",
                                         "skip": "not evaluated (listed in missing_predictions)"}[summary.missing_policy]
    document = {
        "predictions": str(predictions),
        "references": str(references),
        "n_cases": summary.n_cases,
        "labels": sorted(summary.statistics),
        "nsd_tolerance_mm": nsd_tolerance_mm,
        "hd95_empty_mm": HD95_EMPTY_MM,
        "metrics": {str(label): {name: vars(stats) for name, stats in per_metric.items()}
                    for label, per_metric in summary.statistics.items()},
        "missing_predictions": summary.missing_predictions,
        "conventions": conventions,
    }
    return json.dumps(document, indent=2) + "\n"


def save_boxplot(results: Sequence[CaseMetrics], path: Path, nsd_tolerance_mm: float = NSD_TOLERANCE_MM,
                 title: str = "") -> Path:
    """One row per label: Dice/NSD/precision/recall on a 0-1 axis, HD95 (mm) on its own axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = sorted({r.label for r in results})
    figure = Figure(figsize=(9.0, 3.8 * len(labels)), constrained_layout=True)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(labels), 2, squeeze=False, gridspec_kw={"width_ratios": [4, 1.3]})
    jitter = np.random.default_rng(0)  # fixed, so the same results draw the same picture
    for row, label in enumerate(labels):
        per_label = [r for r in results if r.label == label]
        for ax, names in ((axes[row][0], METRIC_NAMES[:4]), (axes[row][1], METRIC_NAMES[4:])):
            values = [[getattr(r.metrics, name) for r in per_label] for name in names]
            ax.boxplot(values, showmeans=True, widths=0.55, showfliers=False,  # cases are drawn as dots instead
                       medianprops={"color": "#d62728", "linewidth": 1.6},
                       meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black"})
            for position, column in enumerate(values, start=1):
                x = position + jitter.uniform(-0.13, 0.13, len(column))
                ax.scatter(x, column, s=16, color="#1f77b4", alpha=0.7, zorder=3, linewidths=0)
            ax.set_xticks(range(1, len(names) + 1))
            ax.set_xticklabels([_axis_name(name, nsd_tolerance_mm) for name in names])
            ax.grid(axis="y", alpha=0.3)
        axes[row][0].set_ylim(-0.03, 1.03)
        axes[row][0].set_ylabel("score")
        axes[row][0].set_title(f"label {label}: {len(per_label)} case{'s' if len(per_label) != 1 else ''}"
                               + (f", {title}" if title else ""), loc="left", fontsize=10)
        _style_hd95_axis(axes[row][1], [r.metrics.hd95 for r in per_label])
    _add_legend(figure)
    with atomic_path(path, ".png") as temporary:
        figure.savefig(str(temporary), format="png", dpi=110)
    return path


def _axis_name(metric: str, nsd_tolerance_mm: float) -> str:
    return {"nsd": f"NSD@{nsd_tolerance_mm:g}mm", "hd95": "HD95"}.get(metric, metric.capitalize())


def _add_legend(figure) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", linestyle="", markersize=4, color="#1f77b4", alpha=0.7, label="case"),
        Line2D([], [], color="#d62728", linewidth=1.6, label="median"),
        Line2D([], [], marker="D", linestyle="", markerfacecolor="white", markeredgecolor="black", label="mean"),
    ]
    # Outside the axes, so that it never hides cases at 0 or 1.
    figure.legend(handles=handles, loc="outside upper right", ncol=3, fontsize=8, frameon=False)


def _style_hd95_axis(ax, hd95: Sequence[float]) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_ylabel("HD95 (mm)")
    failures = sum(1 for value in hd95 if value >= HD95_EMPTY_MM)
    if failures:
        # 1000 mm penalties would flatten the box of real distances on a linear axis:
        # linear below 1 mm, logarithmic above, with plain-number ticks.
        ax.set_yscale("symlog", linthresh=1.0, linscale=0.5)
        ax.set_ylim(-0.3, HD95_EMPTY_MM * 1.8)  # below 0, so that cases at 0 mm stay visible
        ax.yaxis.set_major_locator(FixedLocator([0, 1, 3, 10, 30, 100, 300, 1000]))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter("{x:g}")
        ax.axhline(HD95_EMPTY_MM, color="#7f7f7f", linestyle=":", linewidth=1)
        ax.set_title(f"{failures} empty mask{'s' if failures != 1 else ''} -> {HD95_EMPTY_MM:g} mm",
                     fontsize=8, color="#555555")
    else:
        top = max(1.0, max(hd95, default=0.0)) * 1.1
        ax.set_ylim(bottom=-0.03 * top, top=top)


# --- the step -------------------------------------------------------------
def evaluate_folder(
    predictions: Path,
    references: Path,
    output: Path,
    labels: Sequence[int] = (1,),
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM,  # AG-CRC §IV-D
    missing_predictions: str = "refuse",
) -> EvaluationSummary:
    """Compare every reference case with its prediction; write CSV, JSON and PNG into ``output``.

    Unpaired files are refused (``EvaluationError`` naming them); ``missing_predictions`` "empty": a reference
    without a prediction is evaluated as an empty prediction, "skip": it is not evaluated (module docstring).
    """
    predictions, references, output = Path(predictions), Path(references), Path(output)
    labels = tuple(int(label) for label in labels)
    if not labels:
        raise EvaluationError("no labels to evaluate; pass e.g. labels=(1,)")
    reference_files = image_files_by_case(references, "references")
    prediction_files = image_files_by_case(predictions, "predictions")
    if not reference_files:
        raise EvaluationError(f"references folder {references} holds no image files (.nii.gz, .nrrd, .mha, ...)")
    missing = check_pairs(prediction_files, reference_files, predictions, references, missing_predictions)
    if missing:
        meaning = "count as empty predictions" if missing_predictions == "empty" else "are not evaluated"
        warnings.warn(f"{len(missing)} case(s) have no prediction in {predictions} and {meaning}: "
                      + name_list(missing), stacklevel=2)
    evaluated = [case for case in sorted(reference_files) if missing_predictions != "skip" or case not in missing]

    results: List[CaseMetrics] = []
    for case in tqdm(evaluated, desc="evaluate", unit="case", disable=None):
        reference, prediction = _read_pair(case, reference_files[case], prediction_files.get(case))
        # A missing prediction is an all-background label map (empty for every label but 0).
        predicted_labels = np.zeros(reference.shape, np.uint8) if prediction is None else prediction.array
        for label in labels:
            reference_mask, prediction_mask = reference.array == label, predicted_labels == label
            metrics = compute_metrics(prediction_mask, reference_mask, reference.spacing_zyx, nsd_tolerance_mm)
            results.append(CaseMetrics(case, label, metrics, prediction_missing=prediction is None))

    statistics = {
        label: {name: _statistics([getattr(r.metrics, name) for r in results if r.label == label])
                for name in METRIC_NAMES}
        for label in labels
    }
    summary = EvaluationSummary(results, statistics, missing, missing_predictions)
    output.mkdir(parents=True, exist_ok=True)
    summary.metrics_csv = write_text_atomic(output / METRICS_CSV, _csv_text(results))
    summary.summary_json = write_text_atomic(
        output / SUMMARY_JSON, _summary_json(summary, predictions, references, nsd_tolerance_mm))
    summary.boxplot_png = save_boxplot(results, output / BOXPLOT_PNG, nsd_tolerance_mm, title=f"predictions: {predictions.name}")
    return summary
