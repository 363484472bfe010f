"""FLARE24 organ-interference class weights (FLARE24 §2.2; DESIGN.md "Facts for the three remaining methods").

One weight per output class, used twice: in the class-weighted Dice + CE (Eq. 1-2) and in the class-first patch
sampling. The public code gives the tumour 5 and background and every organ 1; the loss normalises them by their
sum, and ramps linearly from uniform weights to these over its first 50 epochs.

Labels follow nnU-Net's ``dataset.json["labels"]``: consecutive integers from background 0, an optional
``"ignore"`` label on top (no class of its own). The tumour is the label named "tumor" (or "tumour"); without
one, the highest label value (an organ-interference dataset has background 0, organs 1..K, tumour K + 1).
"""
from __future__ import annotations

from typing import Mapping, Optional, Tuple

import numpy as np

TUMOR_WEIGHT = 5.0  # FLARE24 §2.2: "five times higher than the organ regions"
OTHER_WEIGHT = 1.0  # background and every organ
TUMOR_NAMES = ("tumor", "tumour")
IGNORE_NAME = "ignore"  # nnU-Net's name of the ignore label
RAMP_EPOCHS = 50  # DESIGN: the public code ramps from uniform to the class weights over the first 50 epochs


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


def class_weights(dataset_json: Mapping, tumor_weight: float = TUMOR_WEIGHT,
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


def ramped_weights(weights: np.ndarray, epoch: int, ramp_epochs: int = RAMP_EPOCHS) -> np.ndarray:
    """Normalised weights at ``epoch`` (0-based): linear from uniform (epoch 0) to ``normalised(weights)``
    (epoch >= ramp_epochs), the public code's warm-up; ``ramp_epochs = 0``: the target weights from the start."""
    target = normalised(weights)
    if ramp_epochs <= 0:
        return target
    share = min(1.0, max(0, int(epoch)) / float(ramp_epochs))
    uniform = np.full_like(target, 1.0 / target.size)
    return (1.0 - share) * uniform + share * target
