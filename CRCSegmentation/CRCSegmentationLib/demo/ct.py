"""``crcseg demo``: organ guidance, then automatic tumor segmentation, on a generated phantom, offline.

The organ-guidance demo (``OrganGuidanceLib.demo.run_demo``: phantom CT, organ labels,
MOS, OOI, bowel wall, body crop, QA picture, ``summary.txt``) runs first; then the shipped
demonstration model (``CRCSegmentation/Resources/Models/demo_phantom``, trained on other phantoms by
``scripts/train_demo_model.py``) segments the tumor through the inference engine
(``open_model(...).segmenter(...)``, the same call the Slicer module makes). The prediction is
compared with the phantom's known tumor (AG-CRC metrics: Dice, NSD@4mm, HD95) and drawn
over the CT. The demo model is a demonstration trained on synthetic phantoms, not a
clinical model: its Dice says the pipeline works end to end, nothing about real CTs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import numpy as np

from CRCSegmentationLib.measurement.metrics import SegmentationMetrics, compute_metrics
from OrganGuidanceLib.atomic import write_text_atomic
from OrganGuidanceLib.demo import PHANTOM_FILES, DemoReport, run_demo
from OrganGuidanceLib.guidance import GuidanceParameters, MOSSource, run_guidance
from OrganGuidanceLib.image import Image

DEMO_MODEL_NAME = "demo_phantom"  # its catalogue name (CRCSegmentation/Resources/models.json)
TUMOR_FILES = {"prediction": "tumor_pred.nii.gz", "overlay": "tumor_overlay.png"}
# The engine's post-processing: components under 2 ml are dropped (the phantom tumor is ~25 ml, near the
# RJH-Colon median of 32 ml, AG-CRC §IV-A); without it a stray 1 ml blob in the upper abdomen sets HD95.
MIN_COMPONENT_ML = 2.0
PREDICTION_COLOR = "#ff1e1e"
REFERENCE_COLOR = "#fee440"

Log = Callable[[str], None]


@dataclass
class TumorDemoReport:
    guidance: DemoReport  # the organ-guidance part (files, OOI coverage, timings)
    metrics: SegmentationMetrics  # predicted tumor against the phantom's ground truth
    model: Path
    output_dir: Path
    min_component_ml: float = MIN_COMPONENT_ML
    files: Dict[str, Path] = field(default_factory=dict)
    timings_s: Dict[str, float] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    summary: str = ""


def demo_model_path(name: str = DEMO_MODEL_NAME) -> Path:
    """A shipped demonstration bundle (default the CT one), through the module's catalogue."""
    from CRCSegmentationLib.models.catalogue import fetch_model

    return Path(fetch_model(name))


def _phantom_guidance(parameters: GuidanceParameters):
    """The same phantom and guidance ``run_demo`` made (both deterministic), in memory."""
    from OrganGuidanceLib.labels import totalsegmentator_convention
    from OrganGuidanceLib.phantom import make_abdominal_phantom

    phantom = make_abdominal_phantom()
    result = run_guidance(phantom.ct, [MOSSource(phantom.labels, totalsegmentator_convention())], parameters)
    return phantom, result


def _save_overlay(ct: Image, prediction: np.ndarray, reference: np.ndarray, path: Path, title: str) -> Path:
    from OrganGuidanceLib.qa import OverlayLayer, save_mask_overlay

    focus = reference if reference.any() else prediction  # cut through the true tumor
    center = np.argwhere(focus).mean(axis=0) if focus.any() else None
    columns = {
        "demo model": [
            OverlayLayer("predicted tumor", PREDICTION_COLOR, mask=prediction, style="fill", alpha=0.45),
            OverlayLayer("ground truth", REFERENCE_COLOR, mask=reference, style="contour"),
        ],
        "ground truth": [OverlayLayer("phantom tumor", REFERENCE_COLOR, mask=reference, style="fill", alpha=0.45)],
    }
    return save_mask_overlay(ct, columns, path, center_zyx=center, title=title)


def _tumor_summary(report: TumorDemoReport) -> str:
    m = report.metrics
    lines = [
        "",
        "Automatic tumor segmentation (demonstration model trained on synthetic phantoms; not for clinical use)",
        f"  model: {report.model}",
        f"  post-processing: tumor kept inside the OOI, components under {report.min_component_ml:g} ml removed",
        f"  against the phantom's ground truth: Dice {m.dice:.3f}, NSD@4mm {m.nsd:.3f}, HD95 {m.hd95:.1f} mm, "
        f"precision {m.precision:.3f}, recall {m.recall:.3f}",
        f"  tumor volume: predicted {m.volume_prediction_ml:.1f} ml, ground truth {m.volume_reference_ml:.1f} ml",
        "  timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in report.timings_s.items()),
    ]
    lines += [f"  warning: {w}" for w in report.warnings]
    lines += [f"  {key:<11} {path.name}" for key, path in sorted(report.files.items())]
    return "\n".join(lines) + "\n"


def run_tumor_demo(
    output_dir: Union[str, Path],
    model: Optional[Union[str, Path]] = None,
    device: str = "auto",
    mirroring: bool = False,
    min_component_ml: float = MIN_COMPONENT_ML,
    parameters: Optional[GuidanceParameters] = None,
    log: Optional[Log] = print,
) -> TumorDemoReport:
    """Organ-guidance demo, then the demo model's tumor segmentation; adds its metrics to ``summary.txt``.

    ``model``: a bundle folder (default: the shipped demonstration model). ``device``: auto|cuda|mps|cpu.
    ``mirroring``: nnU-Net's test-time mirroring, off by default: 8x fewer network passes on a CPU.
    ``min_component_ml``: predicted components smaller than this are removed (0 keeps all).
    """
    from CRCSegmentationLib.core.segmentation import SegmentationParameters
    from CRCSegmentationLib.models.open import open_model
    from OrganGuidanceLib.io import write_image

    say: Log = log or (lambda message: None)
    output_dir = Path(output_dir)
    parameters = parameters or GuidanceParameters()
    guidance_report = run_demo(output_dir, parameters=parameters, log=log)

    timings: Dict[str, float] = {}
    start = time.perf_counter()
    phantom, guidance = _phantom_guidance(parameters)
    timings["guidance (in memory)"] = time.perf_counter() - start
    model_folder = Path(model) if model is not None else demo_model_path()
    start = time.perf_counter()
    source = open_model(model_folder)
    segmenter = source.segmenter(SegmentationParameters(device=device, mirroring=mirroring,
                                                        min_component_ml=min_component_ml))
    result = segmenter.segment(phantom.ct, guidance)
    timings["tumor model"] = time.perf_counter() - start

    prediction = result.mask.array > 0
    reference = phantom.tumor.array > 0
    metrics = compute_metrics(prediction, reference, phantom.ct.spacing_zyx)
    report = TumorDemoReport(guidance=guidance_report, metrics=metrics, model=model_folder, output_dir=output_dir,
                             min_component_ml=min_component_ml, timings_s=timings, warnings=list(result.warnings))
    predicted = phantom.ct.with_array(prediction.astype(np.uint8), name="predicted tumor")
    report.files["prediction"] = write_image(predicted, output_dir / TUMOR_FILES["prediction"])
    title = f"Demo model (synthetic phantoms, not clinical): Dice {metrics.dice:.3f} vs phantom ground truth"
    report.files["overlay"] = _save_overlay(phantom.ct, prediction, reference, output_dir / TUMOR_FILES["overlay"], title)

    tumor_text = _tumor_summary(report)
    report.summary = guidance_report.summary + tumor_text
    write_text_atomic(output_dir / PHANTOM_FILES["text"], report.summary)
    say(tumor_text.rstrip())
    return report
