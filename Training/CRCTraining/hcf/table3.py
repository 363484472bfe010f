"""HCF paper Table 3: the balance-sampling grid, classifier ratio x SANet ratio (Sec. 4.4).

For every classifier ratio (rows: theta_1, theta_2, theta_4, theta_n) one slice classifier is trained,
for every SANet ratio (columns: theta_0 .. theta_n) one SANet, all on the same training cases and with
the same settings otherwise (``hcf_train``); every pair is then run as the cascade it makes on the test
volumes, through the model bundle a user would get (``hcf.bundle.write_hcf_bundle`` + ``open_model``
+ ``HCFSegmenter``; the inference code is the Lib's, not repeated here). Per cell:

- the classifier's **recall** of abnormal (tumor-holding) test slices, pooled over the test cases, from
  the bundle's own slice decisions (``hcf.segmenter.SliceClassifierEnsemble``; the paper's Table 3
  column; precision and specificity too);
- **DSC**, **JI** (Jaccard, |P & R| / |P | R|) and **HD95** (mm) of the cascade's 3D tumor mask per test case,
  on the CT grid, then the mean over cases (``CRCSegmentationLib.measurement.metrics``: HD95 = 1000 mm when the
  prediction or the reference is empty; DSC = JI = 1 when both are).

Runs are folders ``classifier_theta<r>`` / ``sanet_theta<r>`` under the output folder; a rerun skips
finished runs (the engine's rule), so the grid can be grown. Written: ``table3.csv`` (one row per cell)
and ``table3.json`` (the settings, per-case figures); the bundles are temporary unless kept.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from CRCTraining.hcf.data import load_slices, paired_volume_files
from CRCTraining.hcf.export import export_hcf_bundle
from CRCTraining.hcf.settings import CLASSIFIER, SANET, HCFTrainingSettings, parse_ratio
from CRCTraining.hcf.slices import Ratio
from CRCTraining.hcf.tasks import classification_metrics
from CRCTraining.hcf.train import train_stage
from OrganGuidanceLib.atomic import write_text_atomic
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.validation import InputError, check_label_map

CSV_COLUMNS = ("classifier_ratio", "sanet_ratio", "recall", "precision", "specificity", "dsc", "ji", "hd95",
               "cases", "passed_fraction")


def theta(ratio: Ratio) -> str:
    return f"theta_{ratio}"


@dataclass
class TestCase:
    name: str
    ct: Image
    tumor: np.ndarray  # bool, the CT's grid


@dataclass
class Table3Cell:
    classifier_ratio: Ratio
    sanet_ratio: Ratio
    recall: float
    precision: float
    specificity: float
    dsc: float
    ji: float
    hd95: float
    passed_fraction: float  # slices sent to SANet / all test slices
    per_case: List[Dict[str, float]] = field(default_factory=list)

    def row(self) -> Dict[str, object]:
        return {"classifier_ratio": theta(self.classifier_ratio), "sanet_ratio": theta(self.sanet_ratio),
                "recall": self.recall, "precision": self.precision, "specificity": self.specificity,
                "dsc": self.dsc, "ji": self.ji, "hd95": self.hd95, "cases": len(self.per_case),
                "passed_fraction": self.passed_fraction}


@dataclass
class Table3Result:
    cells: List[Table3Cell]
    classifier_ratios: List[Ratio]
    sanet_ratios: List[Ratio]
    csv_path: Path
    json_path: Path

    def cell(self, classifier_ratio: Ratio, sanet_ratio: Ratio) -> Table3Cell:
        return next(c for c in self.cells if c.classifier_ratio == classifier_ratio and c.sanet_ratio == sanet_ratio)


def read_test_cases(images: Path, labels: Path, tumor_label: Optional[int] = None) -> List[TestCase]:
    cases = []
    for name, image_path, label_path in paired_volume_files(images, labels, ("--test-images", "--test-labels")):
        ct, label = read_image(image_path), read_image(label_path)
        check_label_map(label)
        if not ct.same_grid(label):
            raise InputError(f"{label_path}: not on the grid of its CT {image_path}")
        tumor = label.array > 0 if tumor_label is None else label.array == tumor_label
        cases.append(TestCase(name, ct, np.asarray(tumor, dtype=bool)))
    return cases


def jaccard(prediction: np.ndarray, reference: np.ndarray) -> float:
    """|P & R| / |P | R|; 1 when both are empty."""
    union = int(np.count_nonzero(prediction | reference))
    return 1.0 if union == 0 else int(np.count_nonzero(prediction & reference)) / union


def evaluate_cascade(bundle: Path, cases: Sequence[TestCase],
                     device: str = "auto") -> Tuple[Dict[str, float], List[Dict[str, float]]]:
    """(classifier slice metrics pooled over ``cases``, per-case DSC / JI / HD95) of an HCF bundle."""
    from CRCSegmentationLib.core.segmentation import SegmentationParameters
    from CRCSegmentationLib.measurement.metrics import compute_metrics
    from CRCSegmentationLib.models.open import open_model

    segmenter = open_model(bundle).segmenter(SegmentationParameters(device=device, keep_probabilities=False))
    truth, called, per_case = [], [], []
    for case in cases:
        decisions = segmenter.classifier.classify(case.ct)
        tumor_slices = np.moveaxis(case.tumor, case.ct.axial_axis, 0).any(axis=(1, 2))
        truth.append(tumor_slices[decisions.indices])
        called.append(decisions.abnormal)
        result = segmenter.segment(case.ct)
        prediction = result.mask.array > 0
        metrics = compute_metrics(prediction, case.tumor, case.ct.spacing_zyx)
        per_case.append({"case": case.name, "dsc": metrics.dice, "ji": jaccard(prediction, case.tumor),
                         "hd95": metrics.hd95, "slices": float(result.slice_counts.get("slices", 0)),
                         "passed": float(result.slice_counts.get("abnormal", 0))})
    return classification_metrics(np.concatenate(truth), np.concatenate(called)), per_case


def run_table3(train_images: Path, train_labels: Path, test_images: Path, test_labels: Path, output: Path,
               template: HCFTrainingSettings, classifier_ratios: Sequence = (1, 2, 4, "n"),
               sanet_ratios: Sequence = (0, 1, 2, 4, "n"), classifier_batch_size: Optional[int] = None,
               sanet_batch_size: Optional[int] = None, keep_bundles: bool = False,
               progress: bool = True) -> Table3Result:
    """Train the grid's classifiers and SANets (``template``'s settings otherwise), evaluate every cascade."""
    output = Path(output)
    rows = [parse_ratio(r) for r in classifier_ratios]
    columns = [parse_ratio(r) for r in sanet_ratios]
    if not rows or not columns:
        raise InputError("hcf-table3: give at least one classifier ratio and one SANet ratio")
    if len(set(map(str, rows))) != len(rows) or len(set(map(str, columns))) != len(columns):
        raise InputError("hcf-table3: a ratio is given twice")
    base = replace(template, images=Path(train_images), labels=Path(train_labels), npz=None)
    data = load_slices(base, ("--train-images", "--train-labels"))  # read once, shared by every run
    cases = read_test_cases(Path(test_images), Path(test_labels), template.tumor_label)
    classifiers: Dict[str, Path] = {}
    for ratio in rows:
        batch = classifier_batch_size if classifier_batch_size is not None else template.batch_size
        settings = replace(base, output=output / f"classifier_{theta(ratio)}", ratio=ratio, batch_size=batch)
        classifiers[str(ratio)] = train_stage(CLASSIFIER, settings, progress=progress, data=data).final
    sanets: Dict[str, Path] = {}
    for ratio in columns:
        batch = sanet_batch_size if sanet_batch_size is not None else template.batch_size
        settings = replace(base, output=output / f"sanet_{theta(ratio)}", ratio=ratio, batch_size=batch)
        sanets[str(ratio)] = train_stage(SANET, settings, progress=progress, data=data).final

    output.mkdir(parents=True, exist_ok=True)
    bundles = output / "bundles" if keep_bundles else Path(tempfile.mkdtemp(prefix=".bundles-", dir=output))
    cells: List[Table3Cell] = []
    try:
        for row in rows:
            for column in columns:
                folder = bundles / f"classifier_{theta(row)}__sanet_{theta(column)}"
                if folder.exists():
                    shutil.rmtree(folder)
                export_hcf_bundle([classifiers[str(row)]], [sanets[str(column)]], folder,
                                  f"HCF {theta(row)} + {theta(column)}")
                slice_metrics, per_case = evaluate_cascade(folder, cases, template.device)
                slices = sum(c["slices"] for c in per_case)
                cells.append(Table3Cell(
                    row, column, slice_metrics["recall"], slice_metrics["precision"], slice_metrics["specificity"],
                    float(np.mean([c["dsc"] for c in per_case])), float(np.mean([c["ji"] for c in per_case])),
                    float(np.mean([c["hd95"] for c in per_case])),
                    sum(c["passed"] for c in per_case) / slices if slices else 0.0, per_case))
    finally:
        if not keep_bundles:
            shutil.rmtree(bundles, ignore_errors=True)
    csv_path, json_path = write_table3(cells, output, {
        "train_images": str(train_images), "train_labels": str(train_labels), "test_images": str(test_images),
        "test_labels": str(test_labels), "training": base.plain(), "classifier_batch_size": classifier_batch_size,
        "sanet_batch_size": sanet_batch_size, "classifier_runs": {k: str(v) for k, v in classifiers.items()},
        "sanet_runs": {k: str(v) for k, v in sanets.items()}})
    return Table3Result(cells, rows, columns, csv_path, json_path)


def write_table3(cells: Sequence[Table3Cell], output: Path, settings: Dict[str, object]) -> Tuple[Path, Path]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for cell in cells:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in cell.row().items()})
    csv_path = write_text_atomic(Path(output) / "table3.csv", buffer.getvalue())
    data = {"settings": settings, "cells": [{**cell.row(), "per_case": cell.per_case} for cell in cells],
            "conventions": {"recall": "abnormal test slices the classifier passes / all abnormal test slices, pooled",
                            "dsc_ji_hd95": "per test case on the CT grid, then the mean over cases; HD95 1000 mm "
                                           "when the prediction or the reference is empty"}}
    json_path = write_text_atomic(Path(output) / "table3.json", json.dumps(data, indent=2) + "\n")
    return csv_path, json_path


def format_table3(result: Table3Result) -> str:
    """The paper's layout: classifier ratio rows with their recall, SANet ratio columns; DSC, JI, HD95 blocks."""
    lines = []
    for title, key, scale in (("DSC (%)", "dsc", 100.0), ("JI (%)", "ji", 100.0), ("HD95 (mm)", "hd95", 1.0)):
        header = f"{'classifier':<12}{'recall (%)':>11}" + "".join(f"{theta(c):>10}" for c in result.sanet_ratios)
        lines += [f"HCF Table 3, {title}, mean over the test cases", header]
        for row in result.classifier_ratios:
            recall = result.cell(row, result.sanet_ratios[0]).recall
            values = "".join(f"{getattr(result.cell(row, c), key) * scale:>10.1f}" for c in result.sanet_ratios)
            lines.append(f"{theta(row):<12}{recall * 100:>11.1f}{values}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
