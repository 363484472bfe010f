"""``crcseg usam-ablation``: CARE Table 4 extended (issue 20) on a folder of slices or of volumes with labels.

Rows: no prompt, 1 / 3 / 5 points per class (CARE Table 4), the tumor's box alone, the box + 1
point (SAM's box prompt, beyond the paper), each with Dice and IoU per class over all slices
(``evaluate.py``: counts summed over slices, as the public U-SAM code), and one prompt to 3D
(``evaluate_3d.py``: 3D Dice and IoU per case, and their mean). Volumes are cut into CARE slices
in a temporary folder first (``extract_volume_slices``: the same slices ``crcseg usam-slices``
writes), so both inputs are scored the same way.
"""
from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from CRCTraining.usam.evaluate import PromptSetting, USAMEvaluation, evaluate_settings, write_reports
from CRCTraining.usam.evaluate_3d import PROMPT_POINTS_3D, Case3DResult
from OrganGuidanceLib.atomic import write_text_atomic
from OrganGuidanceLib.validation import InputError

Source = Union[str, Path]
ABLATION_STEM = "usam_ablation"


def table4_settings(negatives: int = 1, point_counts: Sequence[int] = (0, 1, 3, 5), boxes: bool = True
                    ) -> List[PromptSetting]:
    """The rows: each point count (0 = no prompt), then the box alone and the box + 1 point."""
    if not point_counts and not boxes:
        raise InputError("usam-ablation: no row to evaluate (no point count and no box rows)")
    settings = [PromptSetting(k, negatives if k else 0) for k in sorted(set(point_counts))]
    if boxes:
        settings += [PromptSetting(0, 0, box=True), PromptSetting(1, negatives, box=True)]
    return settings


@dataclass
class AblationData:
    """Where the cases are: ``slices`` (CARE npz folder) or ``images`` + ``labels`` with the label values."""

    slices: Optional[Path] = None
    images: Optional[Path] = None
    labels: Optional[Path] = None
    rectum_values: Sequence[int] = ()
    tumor_values: Sequence[int] = ()
    intensity: str = "hu"  # slices only: HU or already in [0, 1] (CARE release)

    def __post_init__(self) -> None:
        volumes = self.images is not None or self.labels is not None
        if (self.slices is None) == (not volumes):
            raise InputError("usam-ablation: give either a folder of slices or volumes (--images DIR --labels DIR)")
        if volumes and (self.images is None or self.labels is None):
            raise InputError("usam-ablation: volumes need both --images and --labels")
        if volumes and not self.tumor_values:
            raise InputError("usam-ablation: name the tumor's label value(s) in the label maps (--tumor-label)")
        if volumes and self.intensity != "hu":
            raise InputError("usam-ablation: volumes are CTs in HU; --intensity unit is for CARE slice folders")


@dataclass
class AblationResult:
    rows: List[USAMEvaluation]
    cases_3d: List[Case3DResult] = field(default_factory=list)
    note_3d: str = ""  # why there is no 3D row, when there is none
    source: str = ""

    def mean_3d(self, metric: str) -> float:
        values = [getattr(c, metric) for c in self.cases_3d]
        return float(np.mean(values)) if values else float("nan")

    def to_dict_3d(self) -> dict:
        """The 3D row: the prompt, each case, the means, and the note when there are no cases."""
        def number(value: float) -> Optional[float]:
            return None if math.isnan(value) else float(value)

        return {"source": self.source, "points": PROMPT_POINTS_3D, "cases": [c.to_dict() for c in self.cases_3d],
                "mean_dice": number(self.mean_3d("dice")), "mean_iou": number(self.mean_3d("iou")),
                "note": self.note_3d}


def _cases_3d(data: AblationData):
    """The cases for one prompt to 3D, or a note saying why there are none."""
    from CRCTraining.usam.evaluate_3d import slice_folder_cases, slice_thickness, volume_cases

    if data.slices is None:
        return volume_cases(data.images, data.labels, data.tumor_values), ""
    if data.intensity != "hu":
        return None, "the slices are in [0, 1], not HU: one prompt to 3D needs CT numbers"
    thickness = slice_thickness(data.slices)
    if thickness is None:
        return None, "the slice folder records no slice thickness: give volumes (--images, --labels) for 3D"
    return slice_folder_cases(data.slices, thickness), ""


def run_ablation(source: Source, data: AblationData, settings: Sequence[PromptSetting],
                 model_for: Optional[Dict[PromptSetting, Source]] = None, batch_size: int = 8,
                 device: Optional[torch.device] = None, three_d: bool = True, progress: bool = True,
                 draws: int = 0) -> AblationResult:
    """Every row of ``settings`` with ``source`` (or its ``model_for`` model), then one prompt to 3D with ``source``.

    ``draws``: random point draws per slice as CARE evaluates (``evaluate.evaluate_prompts``); 0: deterministic.

    ``source``: a U-SAM ``.pt`` checkpoint, a U-SAM bundle folder or a catalogue name.
    """
    from CRCSegmentationLib.models.usam import load_usam_model

    sources = {s: (model_for or {}).get(s, source) for s in settings}
    with tempfile.TemporaryDirectory(prefix="usam_ablation_") as temporary:
        slices = data.slices
        if slices is None:
            from CRCTraining.usam.data import extract_volume_slices

            slices = extract_volume_slices(Path(temporary) / "slices", data.images, data.labels,
                                           data.rectum_values, data.tumor_values)
        rows = evaluate_settings(sources, slices, batch_size, device, data.intensity, progress, draws)
    result = AblationResult(rows, source=str(source))
    if not three_d:
        result.note_3d = "not asked for (--no-3d)"
        return result
    cases, result.note_3d = _cases_3d(data)
    if cases is not None:
        from CRCTraining.usam.evaluate_3d import evaluate_prompt_to_3d

        model = load_usam_model(source, device or "cpu")
        result.cases_3d = evaluate_prompt_to_3d(model, cases, str(device or "cpu"), progress=progress)
        if not result.cases_3d:
            result.note_3d = "no case holds a tumor"
    return result


def _cell(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}"


def format_markdown(result: AblationResult) -> str:
    """Markdown: CARE Table 4 extended (Dice / IoU in % per class and the mean), then 3D per case."""
    names = list(result.rows[0].class_names[1:]) if result.rows else []
    header = ["Prompt"] + [f"{n.capitalize()} {m}" for n in names + ["mean"] for m in ("Dice (%)", "IoU (%)")]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for e in result.rows:
        cells = []
        for c in range(1, len(e.class_names)):
            cells += [_cell(e.dice[c]), _cell(e.iou[c])]
        cells += [_cell(e.mean_dice), _cell(e.mean_iou)]
        lines.append("| " + " | ".join([e.setting.name] + cells) + " |")
    if result.cases_3d:
        tumor = names.index("tumor") if "tumor" in names else len(names) - 1
        cells = ["", ""] * len(names) + ["", ""]
        cells[2 * tumor:2 * tumor + 2] = [_cell(result.mean_3d("dice")), _cell(result.mean_3d("iou"))]
        label = f"one prompt to 3D ({PROMPT_POINTS_3D} points; 3D, mean of {len(result.cases_3d)} cases)"
        lines.append("| " + " | ".join([label] + cells) + " |")
        lines += ["", f"One prompt to 3D per case ({PROMPT_POINTS_3D} points on the tumor's central slice):", "",
                  "| Case | Prompted slice | Dice (%) | IoU (%) | Slices predicted | Slices with tumor | Seconds |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {c.case} | {c.slice_index} | {_cell(c.dice)} | {_cell(c.iou)} | {c.predicted_slices} | "
                  f"{c.reference_slices} | {c.seconds:.2f} |" for c in result.cases_3d]
    else:
        lines += ["", f"One prompt to 3D: none ({result.note_3d})."]
    return "\n".join(lines) + "\n"


def write_ablation_reports(result: AblationResult, folder: Path, stem: str = ABLATION_STEM) -> Tuple[Path, ...]:
    """The 2D rows as ``usam-evaluate`` writes them (``<stem>.csv``, ``<stem>.json``: one entry per row), the 3D
    row (``<stem>_3d.csv`` per case, ``<stem>_3d.json`` with the means) and the table (``<stem>.md``)."""
    folder = Path(folder)
    csv_path, json_path = write_reports(result.rows, folder, stem)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "slice_index", "dice", "iou", "predicted_slices", "reference_slices", "seconds"])
    for c in result.cases_3d:
        writer.writerow([c.case, c.slice_index, f"{c.dice:.6f}", f"{c.iou:.6f}", c.predicted_slices,
                         c.reference_slices, f"{c.seconds:.3f}"])
    csv_3d = write_text_atomic(folder / f"{stem}_3d.csv", buffer.getvalue())
    json_3d = write_text_atomic(folder / f"{stem}_3d.json", json.dumps(result.to_dict_3d(), indent=2) + "\n")
    markdown = write_text_atomic(folder / f"{stem}.md", format_markdown(result))
    return csv_path, json_path, csv_3d, json_3d, markdown
