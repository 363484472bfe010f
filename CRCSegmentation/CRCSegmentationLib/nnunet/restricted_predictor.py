"""nnU-Net's predictor with its sliding window restricted to a box of the image.

Cropping the input to the box would move nnU-Net's tile grid (tile positions are spread
evenly over the image it is given), so a restricted prediction would differ from the
full-volume one wherever an imperfect network depends on where a tile falls. Instead the
whole CT is preprocessed as nnU-Net does (normalisation, resampling to the model spacing),
the tile grid is the full-volume one, and only the tiles that touch the box are run. Every
tile that covers a voxel inside the box touches the box, so inside it the result is the
full-volume result (same tiles, same Gaussian weights, same order); outside, no tile ran.

``predict_single_npy_array`` is unrolled into its three nnU-Net calls (preprocess, logits,
back to the original grid) so that the box can be mapped into the preprocessed grid between
them. Imports nnU-Net at module level: import this module only when predicting.

Optionally the tiles are chosen by a focus mask (the OOI) instead of the box: a tile runs only
where its Gaussian weight (nnU-Net's, sigma = patch / 8) reaches ``min_tile_weight`` of its peak
on some focus voxel. With 0 every tile touching the focus runs (exact inside it); with a cutoff,
tiles that would only add their faint rim to the focus are skipped: inside the focus the
result then differs from the full-volume one only by those rim contributions
(``benchmarks/bench_inference.py`` measures the Dice and the time).

Cancel (``cancel``, a ``threading.Event``) takes effect between tiles: nnU-Net's producer thread
stops handing out tiles, the tiles already queued skip the network, and the sliding window then
raises ``RunCancelled``. A tile that is running finishes first (a forward pass cannot be interrupted).
"""
from __future__ import annotations

import threading
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from scipy.ndimage import binary_dilation

from OrganGuidanceLib.progress import RunCancelled

Window = Tuple[List[int], List[int]]  # start, stop per axis of the preprocessed (transposed, resampled) grid


class RestrictedPredictor(nnUNetPredictor):
    """``nnUNetPredictor`` that can skip the tiles outside a box (``predict_in_box``)."""

    window: Optional[Window] = None
    preprocessed_shape: Optional[Sequence[int]] = None
    focus: Optional[np.ndarray] = None  # bool, preprocessed grid: choose tiles by this mask, not the box
    min_tile_weight: float = 0.0  # fraction of the Gaussian peak a tile must reach on a focus voxel
    tiles_run: int = 0  # of the last prediction, for benchmarks and tests
    tiles_total: int = 0
    cancel: Optional[threading.Event] = None  # set by another thread: stop between tiles

    def _cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def _internal_get_sliding_window_slicers(self, image_size):
        slicers = super()._internal_get_sliding_window_slicers(image_size)
        self.tiles_total = len(slicers)
        if self.window is not None:
            # nnU-Net pads an image smaller than the patch, content centred (lower pad = difference // 2).
            offset = [max(0, int(p) - int(s)) // 2 for p, s in zip(image_size, self.preprocessed_shape)]
            start = [a + o for a, o in zip(self.window[0], offset)]
            stop = [b + o for b, o in zip(self.window[1], offset)]
            slicers = [s for s in slicers if _touches(s[1:], start, stop)]
            if self.focus is not None:
                slicers = self._focused(slicers, offset)
        self.tiles_run = len(slicers)
        return _CancellableTiles(slicers, self)

    def _focused(self, slicers, offset: Sequence[int]):
        """The tiles whose Gaussian weight reaches ``min_tile_weight`` x peak on a focus voxel."""
        patch = [int(p) for p in self.configuration_manager.patch_size]
        weight = compute_gaussian(tuple(patch), sigma_scale=1.0 / 8, value_scaling_factor=1.0,
                                  dtype=torch.float32, device=torch.device("cpu")).numpy()
        strong = weight >= self.min_tile_weight * float(weight.max())
        kept = []
        for tile in slicers:
            spatial = tile[1:]
            if any(isinstance(item, (int, np.integer)) for item in spatial):  # 2D configuration: the box decides
                kept.append(tile)
                continue
            # The tile in the unpadded grid, and the same part of the tile's own weight map.
            low = [item.start - o for item, o in zip(spatial, offset)]
            inside = tuple(slice(max(0, a), min(a + p, n)) for a, p, n in zip(low, patch, self.focus.shape))
            local = tuple(slice(s.start - a, s.stop - a) for s, a in zip(inside, low))
            if np.any(self.focus[inside] & strong[local]):
                kept.append(tile)
        return kept

    def _internal_maybe_mirror_and_predict(self, x):
        if self._cancelled():  # a tile queued before Cancel: skip the network, the result is discarded
            return torch.zeros((x.shape[0], self.label_manager.num_segmentation_heads, *x.shape[2:]), device=x.device)
        return super()._internal_maybe_mirror_and_predict(x)

    def _internal_predict_sliding_window_return_logits(self, data, slicers, do_on_device: bool = True):
        logits = super()._internal_predict_sliding_window_return_logits(data, slicers, do_on_device)
        if self._cancelled():
            raise RunCancelled("cancelled during the tumor model's sliding window")
        if self.window is not None:
            torch.nan_to_num_(logits, nan=0.0)  # voxels no tile covered: 0 / 0 weights
        return logits

    def predict_in_box(self, image: np.ndarray, spacing_zyx: Sequence[float], start: Sequence[int],
                       stop: Sequence[int], probabilities: bool, focus_channel: Optional[int] = None):
        """Like ``predict_single_npy_array(image, {'spacing': spacing_zyx})``, tiles limited to the box.

        ``image``: (C, Z, Y, X) float32 on the CT grid; the box in its array indices. Returns the
        label map (and the class probabilities if asked) on the CT grid; outside the box they are
        meaningless and the caller discards them.
        """
        plans, configuration = self.plans_manager, self.configuration_manager
        preprocessor = configuration.preprocessor_class(verbose=False)
        data, _, properties = preprocessor.run_case_npy(
            image, None, {"spacing": [float(s) for s in spacing_zyx]}, plans, configuration, self.dataset_json)
        self.window = self._window(start, stop, properties, data.shape[1:])
        self.preprocessed_shape = data.shape[1:]
        # nnU-Net resamples the 0/1 channel with splines: 0.5 is its edge, as in training (losses.py).
        # One voxel more: resampling back to the CT grid interpolates across the focus edge.
        self.focus = None if focus_channel is None else binary_dilation(data[focus_channel] > 0.5)
        try:
            logits = self.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
        finally:
            self.window = self.focus = None
        return convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, plans, configuration, self.label_manager, properties, return_probabilities=probabilities)

    def _window(self, start: Sequence[int], stop: Sequence[int], properties: dict,
                preprocessed_shape: Sequence[int]) -> Window:
        """The CT-grid box in the preprocessed grid: transposed, cropped to non-zero, resampled."""
        forward = list(self.plans_manager.transpose_forward)
        bbox = properties["bbox_used_for_cropping"]  # [low, high) per transposed axis
        cropped = properties["shape_after_cropping_and_before_resampling"]
        window_start, window_stop = [], []
        for j, axis in enumerate(forward):
            low = int(bbox[j][0])
            a = min(max(int(start[axis]) - low, 0), int(cropped[j]))
            b = min(max(int(stop[axis]) - low, 0), int(cropped[j]))
            scale = float(preprocessed_shape[j]) / float(cropped[j])
            # One voxel more on each side: resampling back to the CT grid interpolates across the edge.
            window_start.append(max(0, int(np.floor(a * scale)) - 1))
            window_stop.append(min(int(preprocessed_shape[j]), int(np.ceil(b * scale)) + 1))
        return window_start, window_stop


class _CancellableTiles(list):
    """The tile list nnU-Net's producer thread iterates: it stops handing out tiles once Cancel is set.

    Stopping the producer (rather than raising in the main loop) lets nnU-Net's queue drain and its
    thread end, so a cancelled run leaves no blocked thread behind.
    """

    def __init__(self, tiles, predictor: "RestrictedPredictor") -> None:
        super().__init__(tiles)
        self.predictor = predictor

    def __iter__(self):
        for tile in list.__iter__(self):
            if self.predictor._cancelled():
                return
            yield tile


def _touches(slices, start: Sequence[int], stop: Sequence[int]) -> bool:
    """Whether a tile (slices, or an int for a 2D configuration's slice index) overlaps the window."""
    for item, low, high in zip(slices, start, stop):
        first, last = (item, item + 1) if isinstance(item, (int, np.integer)) else (item.start, item.stop)
        if first >= high or last <= low:
            return False
    return True
