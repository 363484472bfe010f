"""One prompt to 3D, scored per case: the extended Table 4's 3D row (issue 20).

Per case, one prompt on the tumor's central axial slice (3 positive points from the ground
truth, CARE's default, placed as ``usam.simulated_prompts`` places them) goes through the
engine the Slicer panel uses (``InteractiveSegmenter.prompt_to_3d``: the prompted slice, then
propagation both ways until the tumor ends); the result is scored against the case's whole
tumor: Dice and IoU per case (3D), and their mean over cases.

Cases come from volumes with label maps (``images/`` + ``labels/``, the tumor's label values
named), or from a folder of CARE slices (``crcseg usam-slices``): each case's stored slices
stacked back by their ``slice_index``. Only slices with rectum or tumor are stored, so such a
volume spans the rectum; its slice thickness comes from the folder's index (phantom slices), and
a folder without it (or with images in [0, 1], not HU) has no 3D row.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from CRCTraining.usam.data import INDEX_FILE, TUMOR
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.validation import InputError

PROMPT_POINTS_3D = 3  # CARE Table 4: U-SAM's default of 3 points


@dataclass
class Case3D:
    """A CT volume (HU) and its tumor mask (bool, same shape)."""

    case: str
    ct: Image
    tumor: np.ndarray


@dataclass
class Case3DResult:
    case: str
    slice_index: int  # the prompted slice
    dice: float
    iou: float
    predicted_slices: int
    reference_slices: int
    seconds: float

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.__dict__.items()}


def overlap_3d(prediction: np.ndarray, reference: np.ndarray) -> Tuple[float, float]:
    """(Dice, IoU) of two masks; (1, 1) when both are empty."""
    intersection = int(np.logical_and(prediction, reference).sum())
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return 1.0, 1.0
    return 2.0 * intersection / total, intersection / (total - intersection)


def volume_cases(images: Path, labels: Path, tumor_values: Sequence[int]) -> Iterator[Case3D]:
    """Cases of ``images/`` + ``labels/`` (as ``crcseg usam-slices`` pairs them) whose label maps hold a tumor."""
    from OrganGuidanceLib.case_folders import pair_images_and_labels
    from OrganGuidanceLib.io import read_image
    from OrganGuidanceLib.validation import check_ct

    if not tumor_values:
        raise InputError("one prompt to 3D: name the tumor's label value(s) (--tumor-label)")
    for pair in pair_images_and_labels(images, labels, "--images", "--labels"):
        ct, label = read_image(pair.image), read_image(pair.label)
        check_ct(ct)
        if label.shape != ct.shape:
            raise InputError(f"{label.name}: shape {label.shape} differs from its CT {ct.name} {ct.shape}")
        tumor = np.isin(label.array, list(tumor_values))
        if tumor.any():
            yield Case3D(pair.case, ct, tumor)


def slice_thickness(folder: Path) -> Optional[float]:
    """The slice thickness (mm) a slice folder's index records (phantom slice sets), else None."""
    from OrganGuidanceLib.json_files import read_json

    index = Path(folder) / INDEX_FILE
    if not index.is_file():
        return None
    spacing = read_json(index).get("source", {}).get("phantom", {}).get("spacing_xyz")
    return float(spacing[2]) if isinstance(spacing, list) and len(spacing) == 3 else None


def slice_folder_cases(folder: Path, thickness_mm: float) -> Iterator[Case3D]:
    """Each case of a CARE slice folder stacked back: its longest run of consecutive stored slices with tumor."""
    from OrganGuidanceLib.case_folders import visible_files

    by_case: Dict[str, Dict[int, Path]] = {}
    for path in visible_files(Path(folder), ".npz"):
        with np.load(path, allow_pickle=False) as npz:
            if "case" not in npz or "slice_index" not in npz:
                raise InputError(f"slice {path}: has no 'case' and 'slice_index' (not made by `crcseg usam-slices`); "
                                 "give volumes (--images, --labels) for one prompt to 3D")
            by_case.setdefault(str(npz["case"]), {})[int(npz["slice_index"])] = path
    for case, files in sorted(by_case.items()):
        runs: List[List[int]] = []
        for k in sorted(files):
            if runs and k == runs[-1][-1] + 1:
                runs[-1].append(k)
            else:
                runs.append([k])
        images, labels, spacing_rc = [], [], (1.0, 1.0)
        for run in sorted(runs, key=len, reverse=True):
            images, labels = [], []
            for k in run:
                with np.load(files[k], allow_pickle=False) as npz:
                    images.append(np.asarray(npz["image"], dtype=np.float32))
                    labels.append(np.asarray(npz["label"]))
                    spacing_rc = tuple(float(v) for v in npz["spacing_rc"])
            if any((label >= TUMOR).any() for label in labels):
                break
        else:
            continue  # no tumor in this case
        tumor = np.stack(labels) >= TUMOR
        ct = Image(np.stack(images), spacing=(spacing_rc[1], spacing_rc[0], thickness_mm), name=case)
        yield Case3D(case, ct, tumor)


def evaluate_prompt_to_3d(model, cases: Iterator[Case3D], device: str = "cpu", points: int = PROMPT_POINTS_3D,
                          settings=None, progress: bool = True) -> List[Case3DResult]:
    """One prompt (``points`` positive points on the central tumor slice) to 3D for each case, scored in 3D."""
    from CRCSegmentationLib.usam.refinement import InteractiveSegmenter, SlicePoints
    from CRCSegmentationLib.usam.simulated_prompts import central_slice, positive_clicks

    segmenter = InteractiveSegmenter(model, device=device)
    results: List[Case3DResult] = []
    for case in tqdm(cases, desc="one prompt to 3D", unit="case", disable=not progress):
        k = central_slice(case.tumor)
        prompt = positive_clicks(case.tumor[k], points)
        start = time.perf_counter()
        result = segmenter.prompt_to_3d(case.ct, SlicePoints(k, prompt.xy, prompt.labels), None, settings)
        seconds = time.perf_counter() - start
        volume = np.zeros(case.tumor.shape, dtype=bool)
        for z, mask in result.slices.items():
            volume[z] = mask
        dice, iou = overlap_3d(volume, case.tumor)
        results.append(Case3DResult(case.case, k, dice, iou, int(volume.any(axis=(1, 2)).sum()),
                                    int(case.tumor.any(axis=(1, 2)).sum()), seconds))
        segmenter.cache.clear()  # a case's encodings are not needed again
    return results
