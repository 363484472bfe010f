"""``crcseg demo --points``: point prompts on a generated CT phantom with the shipped demonstration U-SAM, offline.

A CT phantom (``OrganGuidanceLib.phantom``, the generator of the CT demo, on the grid the
demonstration U-SAM was trained on, with a seed it never saw) gets simulated clicks on the
tumor's central axial slice, sampled from the ground truth as CARE prompts, deterministically so that
every run shows the same clicks (``usam.simulated_prompts``; ``crcseg usam-ablation`` averages random
draws): no prompt, 1, 3 and 5 positive points, a negative click in the
largest false region left, the ground truth's box, and the box + 1 point. Each prompt goes
through the engine the Slicer panel uses (``InteractiveSegmenter``); the table gives each
prompt's Dice against the phantom's tumor on that slice. Then one prompt (3 points) runs to
3D (propagation both ways from the prompted slice) and is scored in 3D (Dice, NSD@4mm, HD95).
The clicks are drawn on a QA picture. The model is a demonstration trained on synthetic
phantoms (``scripts/train_usam_demo_model.py``), not a clinical model.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np

from CRCSegmentationLib.measurement.metrics import SegmentationMetrics, compute_metrics
from CRCSegmentationLib.usam.propagation import PropagationSettings
from CRCSegmentationLib.usam.refinement import InteractiveSegmenter, SlicePoints
from CRCSegmentationLib.usam.simulated_prompts import (
    CARE_POINT_COUNTS,
    SimulatedPrompt,
    care_prompts,
    central_slice,
    negative_click,
)
from OrganGuidanceLib.atomic import write_text_atomic
from OrganGuidanceLib.image import Image

USAM_DEMO_MODEL_NAME = "demo_usam_phantom"  # catalogue name (CRCSegmentation/Resources/models.json)
# The training grid of the demonstration U-SAM (CRCTraining.data.phantoms_ct: 2.9 x 2.9 x 4 mm, 96 x 96
# pixels); 82 slices reach from the pelvic floor to the upper abdomen (the phantom is centred at z = 160 mm).
POINTS_PHANTOM_SHAPE = (82, 96, 96)
POINTS_PHANTOM_SPACING = (2.9, 2.9, 4.0)
POINTS_DEMO_SEED = 2026  # phantoms_ct draws its phantom seeds from 0..2**31: this one is held out
PROMPT_TO_3D = "3 points"  # the one prompt carried to 3D: U-SAM's default of 3 points (CARE Table 4)
POINTS_FILES = {"picture": "points_clicks.png", "table": "points_dice.csv", "text": "points_summary.txt",
                "ct": "points_phantom_ct.nii.gz", "prediction": "points_tumor_3d.nii.gz"}

Log = Callable[[str], None]


@dataclass
class ClickResult:
    """One prompt on the demo slice and its Dice against the phantom's tumor there."""

    prompt: SimulatedPrompt
    mask: np.ndarray  # rows x cols bool
    dice: float
    seconds: float


@dataclass
class PointsDemoReport:
    slice_index: int
    clicks: List[ClickResult]
    metrics_3d: SegmentationMetrics  # one prompt to 3D against the phantom's tumor
    slices_3d: List[int]  # slices the 3D result covers
    reference_slices: List[int]  # slices the phantom's tumor covers
    model: str
    output_dir: Path
    files: Dict[str, Path] = field(default_factory=dict)
    timings_s: Dict[str, float] = field(default_factory=dict)
    summary: str = ""

    def dice(self, name: str) -> float:
        """Dice of the prompt called ``name`` (e.g. "3 points"); KeyError for an unknown name."""
        for click in self.clicks:
            if click.prompt.name == name:
                return click.dice
        raise KeyError(f"no prompt {name!r}; prompts: {[c.prompt.name for c in self.clicks]}")


def slice_dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """2|A n B| / (|A| + |B|) of two masks; 1.0 when both are empty."""
    total = int(prediction.sum()) + int(reference.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(prediction, reference).sum()) / total


def points_phantom(seed: int = POINTS_DEMO_SEED):
    """The demo's CT phantom (``Phantom``: ct, labels, tumor) on the demonstration U-SAM's training grid."""
    from OrganGuidanceLib.phantom import make_abdominal_phantom

    return make_abdominal_phantom(POINTS_PHANTOM_SHAPE, POINTS_PHANTOM_SPACING, seed=seed)


def to_slice_points(prompt: SimulatedPrompt, slice_index: int) -> SlicePoints:
    """The engine's prompt of one slice (points and box in slice pixels)."""
    return SlicePoints(slice_index, prompt.xy, prompt.labels, box=prompt.box)


def segment(segmenter: InteractiveSegmenter, image: Image, slice_index: int, prompt: SimulatedPrompt) -> np.ndarray:
    """The tumor mask of one slice for one prompt; no prompt at all: the model's unprompted answer."""
    if not prompt.is_empty:
        return segmenter.segment_prompt(image, to_slice_points(prompt, slice_index))
    import torch

    from CRCSegmentationLib.usam.refinement import is_argmax

    cached = segmenter.encoding(image, slice_index)
    with torch.inference_mode():
        logits = segmenter.model.decode(cached.encoding)
        logits = cached.transform.logits_to_slice(logits[0].float())
        return is_argmax(logits, segmenter.tumor_class).cpu().numpy()


def run_clicks(segmenter: InteractiveSegmenter, image: Image, slice_index: int,
               reference: np.ndarray) -> List[ClickResult]:
    """No prompt, 1/3/5 points, + a negative on the worst false region, box, box + 1 point (in this order)."""
    results: List[ClickResult] = []

    def run(prompt: SimulatedPrompt) -> ClickResult:
        start = time.perf_counter()
        mask = np.asarray(segment(segmenter, image, slice_index, prompt), dtype=bool)
        result = ClickResult(prompt, mask, slice_dice(mask, reference), time.perf_counter() - start)
        results.append(result)
        return result

    fixed = care_prompts(reference, CARE_POINT_COUNTS)
    run(SimulatedPrompt("no prompt"))
    points = [run(prompt) for prompt in fixed[:len(CARE_POINT_COUNTS)]]
    # The negative click corrects the point prompt that left the largest false region (a user's next click).
    false_area = [int((r.mask & ~reference).sum()) for r in points]
    worst = points[int(np.argmax(false_area))]
    negative = negative_click(worst.mask, reference)
    if negative is not None:
        run(worst.prompt.plus(negative, f"{worst.prompt.name} + 1 negative"))
    for prompt in fixed[len(CARE_POINT_COUNTS):]:
        run(prompt)
    return results


def prompt_to_3d(segmenter: InteractiveSegmenter, image: Image, slice_index: int, prompt: SimulatedPrompt,
                 settings: Optional[PropagationSettings] = None) -> np.ndarray:
    """The tumor volume (bool, z y x) from one prompt on one slice, propagated both ways."""
    result = segmenter.prompt_to_3d(image, to_slice_points(prompt, slice_index), None, settings)
    volume = np.zeros(image.shape, dtype=bool)
    for k, mask in result.slices.items():
        volume[k] = mask
    return volume


def _load(model: Union[str, Path, Any], device: str) -> tuple:
    """(model object, its name for the report): a source (file, bundle, catalogue name) or a model object."""
    if not isinstance(model, (str, Path)):
        return model, type(model).__name__
    from CRCSegmentationLib.models.usam import load_usam_model

    return load_usam_model(model, device), str(model)


def _table(report: PointsDemoReport) -> str:
    lines = [f"{'prompt':<26}{'positive':>9}{'negative':>9}{'box':>5}{'Dice':>8}{'ms':>8}"]
    for click in report.clicks:
        p = click.prompt
        lines.append(f"{p.name:<26}{p.positives:>9}{p.negatives:>9}{'yes' if p.box is not None else '-':>5}"
                     f"{click.dice:>8.3f}{1000 * click.seconds:>8.0f}")
    return "\n".join(lines)


def _summary(report: PointsDemoReport) -> str:
    m = report.metrics_3d
    slices = report.slices_3d
    covered = f"slices {slices[0]}..{slices[-1]}" if slices else "no slice"
    truth = report.reference_slices
    lines = [
        "Point prompts on a CT phantom (U-SAM demonstration model trained on synthetic phantoms; not for clinical use)",
        f"  model: {report.model}",
        f"  clicks on the tumor's central axial slice {report.slice_index}, placed as CARE's evaluation places them "
        "(from the ground truth); ms: the first row includes the slice's encoding, the others reuse it:",
        *("  " + line for line in _table(report).splitlines()),
        f"  one prompt to 3D ({PROMPT_TO_3D} on slice {report.slice_index}, propagated both ways): "
        f"Dice {m.dice:.3f}, NSD@4mm {m.nsd:.3f}, HD95 {m.hd95:.1f} mm"
        f"{'' if slices else ' (the penalty for an empty result)'}; {covered} "
        f"(phantom tumor: slices {truth[0]}..{truth[-1]}); volume {m.volume_prediction_ml:.1f} ml predicted, "
        f"{m.volume_reference_ml:.1f} ml ground truth",
        "  timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in report.timings_s.items()),
    ]
    lines += [f"  {key:<11} {path.name}" for key, path in sorted(report.files.items())]
    return "\n".join(lines) + "\n"


def _csv(report: PointsDemoReport) -> str:
    rows = ["prompt,positive,negative,box,dice,seconds"]
    rows += [f"{c.prompt.name},{c.prompt.positives},{c.prompt.negatives},{int(c.prompt.box is not None)},"
             f"{c.dice:.6f},{c.seconds:.4f}" for c in report.clicks]
    rows.append(f"one prompt to 3D ({PROMPT_TO_3D}),3,0,0,{report.metrics_3d.dice:.6f},"
                f"{report.timings_s.get('one prompt to 3D', float('nan')):.4f}")
    return "\n".join(rows) + "\n"


def run_points_demo(output_dir: Union[str, Path], model: Union[str, Path, Any] = USAM_DEMO_MODEL_NAME,
                    device: str = "cpu", seed: int = POINTS_DEMO_SEED, write_volumes: bool = True,
                    log: Optional[Log] = print) -> PointsDemoReport:
    """Phantom -> simulated clicks -> Dice per prompt -> one prompt to 3D -> QA picture; writes ``output_dir``.

    ``model``: a U-SAM source (``.pt`` checkpoint, bundle folder, catalogue name; default the shipped
    demonstration model) or a loaded model (e.g. a stand-in in tests). ``device``: auto|cpu|cuda.
    """
    from CRCSegmentationLib.demo.points_picture import save_points_picture
    from OrganGuidanceLib.device import resolve_device
    from OrganGuidanceLib.io import write_image

    say: Log = log or (lambda message: None)
    output_dir = Path(output_dir)
    timings: Dict[str, float] = {}
    start = time.perf_counter()
    phantom = points_phantom(seed)
    timings["phantom"] = time.perf_counter() - start
    start = time.perf_counter()
    network, name = _load(model, str(resolve_device(device)))
    segmenter = InteractiveSegmenter(network, device=str(resolve_device(device)))
    timings["model"] = time.perf_counter() - start

    tumor = phantom.tumor.array > 0
    k = central_slice(tumor)
    start = time.perf_counter()
    clicks = run_clicks(segmenter, phantom.ct, k, tumor[k])
    timings["clicks"] = time.perf_counter() - start
    start = time.perf_counter()
    prompt = next(c.prompt for c in clicks if c.prompt.name == PROMPT_TO_3D)
    volume = prompt_to_3d(segmenter, phantom.ct, k, prompt)
    timings["one prompt to 3D"] = time.perf_counter() - start
    metrics = compute_metrics(volume, tumor, phantom.ct.spacing_zyx)

    report = PointsDemoReport(
        slice_index=k, clicks=clicks, metrics_3d=metrics,
        slices_3d=[int(z) for z in np.flatnonzero(volume.any(axis=(1, 2)))],
        reference_slices=[int(z) for z in np.flatnonzero(tumor.any(axis=(1, 2)))],
        model=name, output_dir=output_dir, timings_s=timings)
    output_dir.mkdir(parents=True, exist_ok=True)
    if write_volumes:
        report.files["ct"] = write_image(phantom.ct, output_dir / POINTS_FILES["ct"])
        predicted = phantom.ct.with_array(volume.astype(np.uint8), name="tumor from one prompt")
        report.files["prediction"] = write_image(predicted, output_dir / POINTS_FILES["prediction"])
    report.files["picture"] = save_points_picture(phantom.ct, tumor, k, clicks, volume, metrics.dice,
                                                  output_dir / POINTS_FILES["picture"])
    report.files["table"] = write_text_atomic(output_dir / POINTS_FILES["table"], _csv(report))
    report.files["text"] = output_dir / POINTS_FILES["text"]
    report.summary = _summary(report)
    write_text_atomic(report.files["text"], report.summary)
    say(report.summary.rstrip())
    return report
