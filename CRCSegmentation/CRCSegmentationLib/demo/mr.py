"""``crcseg demo --mri``: the MR path end to end (RCSegNeXt) on a generated sagittal T2 phantom, offline.

A sagittal T2 pelvis phantom (``mr_phantom``: 4 mm slices, 0.875 mm pixels, a rectum with a wall tumor)
is segmented by the shipped MR demonstration model (``CRCSegmentation/Resources/Models/demo_mr_phantom``:
RCSegNeXt trained on other phantoms by ``scripts/train_demo_model.py --mri``) through the engine the Slicer
module and ``crcseg segment`` use (``open_model(...).segmenter(...).segment``: no CT checks, no organ
guidance). Rectum and tumor are scored against the phantom's labels (Dice, NSD@4mm, HD95) and drawn over
the image. A demonstration on synthetic phantoms, not a clinical model.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import numpy as np

from CRCSegmentationLib.measurement.metrics import SegmentationMetrics, compute_metrics
from OrganGuidanceLib.atomic import write_text_atomic
from OrganGuidanceLib.image import Image

MR_DEMO_MODEL_NAME = "demo_mr_phantom"  # catalogue name (CRCSegmentation/Resources/models.json)
MR_DEMO_SEED = 4242  # not one of the training phantoms' seeds (scripts/train_demo_model.py --mri)
MR_FILES = {"image": "t2_phantom.nii.gz", "reference": "labels_reference.nii.gz",
            "prediction": "labels_pred.nii.gz", "overlay": "mr_overlay.png", "text": "summary.txt"}
COLORS = {"rectum": "#1e90ff", "tumor": "#ff1e1e", "reference": "#fee440"}

Log = Callable[[str], None]


@dataclass
class MRDemoReport:
    metrics: Dict[str, SegmentationMetrics]  # "rectum", "tumor" against the phantom's labels
    model: Path
    output_dir: Path
    files: Dict[str, Path] = field(default_factory=dict)
    timings_s: Dict[str, float] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    summary: str = ""


def mr_window(image: Image) -> tuple:
    """(width, level) from the 1st-99.5th percentiles of the body: MR has no fixed units."""
    values = image.array[image.array > np.percentile(image.array, 20)]
    low, high = np.percentile(values, [1.0, 99.5])
    return float(high - low), float((high + low) / 2)


def _overlay(image: Image, predicted: np.ndarray, reference: np.ndarray, path: Path, title: str) -> Path:
    from OrganGuidanceLib.qa import OverlayLayer, save_mask_overlay

    tumor = reference == 2
    center = np.argwhere(tumor).mean(axis=0) if tumor.any() else None
    columns = {
        "demo model": [
            OverlayLayer("predicted rectum", COLORS["rectum"], mask=predicted, values=(1,), style="fill", alpha=0.35),
            OverlayLayer("predicted tumor", COLORS["tumor"], mask=predicted, values=(2,), style="fill", alpha=0.45),
            OverlayLayer("reference tumor", COLORS["reference"], mask=reference, values=(2,), style="contour"),
        ],
        "phantom labels": [
            OverlayLayer("rectum", COLORS["rectum"], mask=reference, values=(1,), style="fill", alpha=0.35),
            OverlayLayer("tumor", COLORS["tumor"], mask=reference, values=(2,), style="fill", alpha=0.45),
        ],
    }
    return save_mask_overlay(image, columns, path, center_zyx=center, title=title, window=mr_window(image),
                             views=("sagittal", "axial"))


def _summary(report: MRDemoReport) -> str:
    lines = ["MR path: rectum and tumor on a sagittal T2 phantom (RCSegNeXt demonstration model trained on "
             "synthetic phantoms; not for clinical use)", f"  model: {report.model}"]
    for name, m in report.metrics.items():
        lines.append(f"  {name:<6} against the phantom's labels: Dice {m.dice:.3f}, NSD@4mm {m.nsd:.3f}, "
                     f"HD95 {m.hd95:.1f} mm; volume predicted {m.volume_prediction_ml:.1f} ml, "
                     f"reference {m.volume_reference_ml:.1f} ml")
    lines.append("  timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in report.timings_s.items()))
    lines += [f"  warning: {w}" for w in report.warnings]
    lines += [f"  {key:<11} {path.name}" for key, path in sorted(report.files.items())]
    return "\n".join(lines) + "\n"


def run_mr_demo(output_dir: Union[str, Path], model: Optional[Union[str, Path]] = None, device: str = "auto",
                seed: int = MR_DEMO_SEED, log: Optional[Log] = print) -> MRDemoReport:
    """Phantom -> MR model -> rectum + tumor, scored and drawn; writes ``output_dir`` (see ``MR_FILES``)."""
    from CRCSegmentationLib.batch import model_label_map
    from CRCSegmentationLib.core.errors import ModelError
    from CRCSegmentationLib.core.segmentation import SegmentationParameters
    from CRCSegmentationLib.demo.ct import demo_model_path
    from CRCSegmentationLib.demo.mr_phantom import make_sagittal_t2_phantom
    from CRCSegmentationLib.models.open import open_model
    from OrganGuidanceLib.io import write_image

    say: Log = log or (lambda message: None)
    output_dir = Path(output_dir)
    timings: Dict[str, float] = {}
    start = time.perf_counter()
    phantom = make_sagittal_t2_phantom(seed=seed)
    timings["phantom"] = time.perf_counter() - start
    model_folder = Path(model) if model is not None else demo_model_path(MR_DEMO_MODEL_NAME)
    start = time.perf_counter()
    source = open_model(model_folder)
    if source.modality != "MR":
        raise ModelError(f"{model_folder}: a {source.modality} model; `crcseg demo --mri` needs an MR model")
    result = source.segmenter(SegmentationParameters(device=device, mirroring=False)).segment(phantom.image)
    timings["RCSegNeXt"] = time.perf_counter() - start
    predicted = model_label_map(result, source)
    values = {"rectum": source.organ_labels.get("rectum", 1), "tumor": source.tumor_label}
    reference = phantom.labels.array
    metrics = {name: compute_metrics(predicted.array == value, reference == value, phantom.image.spacing_zyx)
               for name, value in values.items()}
    report = MRDemoReport(metrics, model_folder, output_dir, timings_s=timings, warnings=list(result.warnings))
    output_dir.mkdir(parents=True, exist_ok=True)
    report.files["image"] = write_image(phantom.image, output_dir / MR_FILES["image"])
    report.files["reference"] = write_image(phantom.labels, output_dir / MR_FILES["reference"])
    report.files["prediction"] = write_image(predicted, output_dir / MR_FILES["prediction"])
    title = (f"MR demo model (synthetic phantoms, not clinical): Dice rectum {metrics['rectum'].dice:.3f}, "
             f"tumor {metrics['tumor'].dice:.3f}")
    report.files["overlay"] = _overlay(phantom.image, predicted.array, reference, output_dir / MR_FILES["overlay"],
                                       title)
    report.summary = _summary(report)
    write_text_atomic(output_dir / MR_FILES["text"], report.summary)
    say(report.summary.rstrip())
    return report
