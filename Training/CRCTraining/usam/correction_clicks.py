"""One more click where the network is wrong, as SAM trains (Kirillov et al. 2023, "Training algorithm").

SAM samples each further point from the error region between its own prediction and the mask: a
negative point in a false positive, a positive point in a missed part. We add one such click to a
share of the prompted samples of a batch: the network's own answer to the drawn prompt (no gradient)
-> its largest error component (false positive or missed tumor) -> a click at the pixel deepest inside
it (where a user clicks) -> the batch is trained with that click added. A user's negative click on a
false region is exactly this. Seeded by the batch itself, so a resumed run draws the same clicks.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from CRCSegmentationLib.usam.prompts import NEGATIVE, PADDING, POSITIVE

MIN_ERROR_PX = 6  # smaller errors are edge noise, not a place a user would click


def _deepest(mask: np.ndarray) -> Optional[np.ndarray]:
    """(x, y) of the pixel deepest inside the largest component of ``mask``; None when it is too small."""
    components, count = ndimage.label(mask)
    if not count:
        return None
    sizes = ndimage.sum_labels(np.ones_like(components), components, range(1, count + 1))
    if sizes.max() < MIN_ERROR_PX:
        return None
    largest = components == 1 + int(np.argmax(sizes))
    depth = ndimage.distance_transform_edt(np.pad(largest, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return np.array([col, row], dtype=np.float32)


def correction_click_batch(logits: Tensor, batch: dict, prompted: Tensor, fraction: float, target_class: int) -> dict:
    """``batch`` with one more point per corrected sample (point tensors grow by one column, -1 elsewhere).

    ``logits``: the network's answer to the batch's prompts (no gradient needed); ``prompted``: B booleans,
    only those samples are corrected (an unprompted sample stays the no-prompt case).
    """
    coords, labels = batch["point_coords"], batch["point_labels"]
    seed = int(torch.nan_to_num(coords).abs().sum().item() * 1000 + labels.numel()) % (2 ** 31)
    rng = np.random.default_rng(seed)
    prediction = (logits.argmax(dim=1) == target_class).cpu().numpy()
    truth = (batch["label"] == target_class).cpu().numpy()
    extra_xy = np.zeros((len(truth), 1, 2), dtype=np.float32)
    extra_labels = np.full((len(truth), 1), PADDING, dtype=np.int64)
    for row in range(len(truth)):
        if not bool(prompted[row]) or rng.random() >= fraction:
            continue
        false_positive, missed = prediction[row] & ~truth[row], truth[row] & ~prediction[row]
        wrong, label = (false_positive, NEGATIVE) if false_positive.sum() >= missed.sum() else (missed, POSITIVE)
        xy = _deepest(wrong)
        if xy is not None:
            extra_xy[row, 0], extra_labels[row, 0] = xy, label
    if not (extra_labels >= 0).any():
        return batch
    return {**batch, "point_coords": torch.cat([coords, torch.from_numpy(extra_xy)], dim=1),
            "point_labels": torch.cat([labels, torch.from_numpy(extra_labels)], dim=1)}
