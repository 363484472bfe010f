"""FLARE24 organ-interference class weights (FLARE24 §2.2; DESIGN.md "Facts for the three remaining methods").

One weight per output class, used twice: in the class-weighted Dice + CE (Eq. 1-2) and in the class-first patch
sampling. The public code gives the tumour 5 and background and every organ 1 and normalises them by their sum.
Its warm-up (first 50 epochs) mixes two losses, ``(1 - t) · L(uniform) + t · L(these weights)`` with t rising
linearly from 0 to 1 (``warmup_share``); it does not ramp the weight vector itself.

Labels follow nnU-Net's ``dataset.json["labels"]``: consecutive integers from background 0, an optional
``"ignore"`` label on top (no class of its own). The tumour is the label named "tumor" (or "tumour"); without
one, the highest label value (an organ-interference dataset has background 0, organs 1..K, tumour K + 1).
"""
from __future__ import annotations

from typing import Mapping, Optional, Tuple

import numpy as np

TUMOR_CLASS_WEIGHT = 5.0  # FLARE24 §2.2: "five times higher than the organ regions"
OTHER_WEIGHT = 1.0  # background and every organ
TUMOR_NAMES = ("tumor", "tumour")
IGNORE_NAME = "ignore"  # nnU-Net's name of the ignore label
WARMUP_EPOCHS = 50  # DESIGN: the public code's loss mixing reaches the class-weighted loss alone at epoch 50


def segmentation_labels(dataset_json: Mapping) -> Tuple[dict, Optional[int]]:
    """``({name: value}, ignore value or None)`` from a dataset.json, region-based labels refused.

    nnU-Net requires the class labels to be 0, 1, ..., C-1 (``verify_dataset_integrity``); checked here too,
    because a class index is a label value in the weight vectors below.
    """
    labels = dict(dataset_json.get("labels") or {})
    if not labels:
        raise ValueError("dataset.json has no 'labels': cannot tell which class is the tumor")
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise ValueError(f"dataset.json label {name!r} is a region {value}: the FLARE24 class weights and "
                             "class-first sampling are for one label per class, not for region-based training")
    ignore = labels.pop(IGNORE_NAME, None)
    values = sorted(int(v) for v in labels.values())
    if values != list(range(len(values))):
        raise ValueError(f"dataset.json labels {labels}: class labels must be 0, 1, ..., C-1 (as nnU-Net requires)")
    return {str(k): int(v) for k, v in labels.items()}, (None if ignore is None else int(ignore))


def tumor_label(dataset_json: Mapping) -> int:
    """The label value of the tumour: the label named "tumor"/"tumour" (any case), else the highest class label."""
    labels, _ = segmentation_labels(dataset_json)
    named = [value for name, value in labels.items() if name.lower() in TUMOR_NAMES]
    if len(named) > 1:
        raise ValueError(f"dataset.json names more than one tumor label: {labels}")
    if named:
        return named[0]
    highest = max(labels.values())
    if highest == 0:
        raise ValueError("dataset.json has only a background label: there is no tumor class to weight")
    return highest


def class_weights(dataset_json: Mapping, tumor_weight: float = TUMOR_CLASS_WEIGHT,
                  other_weight: float = OTHER_WEIGHT) -> np.ndarray:
    """Unnormalised weights (C,) indexed by label value: ``other_weight`` for background and organs,
    ``tumor_weight`` for the tumour (FLARE24 §2.2: 1 and 5)."""
    if tumor_weight < 0 or other_weight < 0 or tumor_weight + other_weight <= 0:
        raise ValueError(f"class weights must be >= 0 and not all 0 (tumor {tumor_weight}, other {other_weight})")
    labels, _ = segmentation_labels(dataset_json)
    weights = np.full(len(labels), float(other_weight))
    weights[tumor_label(dataset_json)] = float(tumor_weight)
    return weights


def normalised(weights: np.ndarray) -> np.ndarray:
    """Weights divided by their sum (FLARE24 public code; DESIGN: "normalised by their sum")."""
    weights = np.asarray(weights, dtype=np.float64)
    total = weights.sum()
    if not np.all(weights >= 0) or total <= 0:
        raise ValueError(f"class weights {weights.tolist()} must be >= 0 with a positive sum")
    return weights / total


def warmup_share(epoch: int, warmup_epochs: int = WARMUP_EPOCHS) -> float:
    """The class-weighted loss's share t at ``epoch`` (0-based) in ``(1 - t) · L_uniform + t · L_weighted``.

    The public code (``MultipleOutputLoss2``): t = epoch / 50 while epoch < 50, then 1. ``warmup_epochs = 0``:
    t = 1 from the start, the paper's Eq. 1-3 alone.
    """
    if warmup_epochs < 0:
        raise ValueError(f"warm-up epochs must be >= 0, got {warmup_epochs}")
    if warmup_epochs == 0:
        return 1.0
    return min(1.0, max(0, int(epoch)) / float(warmup_epochs))
