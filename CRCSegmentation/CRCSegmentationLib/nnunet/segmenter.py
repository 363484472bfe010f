"""Kind ``nnunet`` (AG-CRC, FLARE24, RCSegNeXt): image (+ organ guidance) -> tumor mask, through nnU-Net's predictor.

Steps (DESIGN.md, data flow):

1. input channels the model wants, on the CT grid: CT in HU (nnU-Net normalises it with the
   training set's statistics), the MOS in the compact code the models are trained with
   (``OrganGuidanceLib.mos_codes``), the OOI 0/1;
2. the region: FLARE24's body crop intersected with the OOI bounding box grown by a margin in
   mm (AG-CRC trains with the AF-loss, Eq. 8, which ignores everything outside the OOI, so the
   network has learned nothing there); an empty OOI falls back to the body crop with a warning;
3. nnU-Net's preprocessing, sliding window (Gaussian weighting, optional mirroring TTA) and
   resampling back on the full-volume tile grid (``restricted_predictor``), with only the tiles
   that matter run: by default those whose Gaussian weight reaches 5 % of their peak on an OOI
   voxel (the others would only add their faint rim there), or, with ``min_tile_weight=0``,
   every tile touching the region (then inside it the result is exactly the full-volume one);
   outside, nothing is predicted;
4. post-processing on the CT grid (tumor kept within the OOI, small components removed).

MR models (RCSegNeXt, modality ``MR``) take the MR volume alone: it is checked as MR (``mr_checks``), the
whole grid is predicted (the body crop thresholds Hounsfield units; there is no OOI), and the organs the
model segments (the rectum) always come with the tumor.

An input the model was not trained for, but that is still a CT / an MR volume, is segmented with a
warning saying what the model expected (``model_fit``): an MR volume sliced in another plane than the
training images, a CT whose values lie outside the training intensity range.

The predictor is built once per ``NNUNetSegmenter``; a batch reuses it. CUDA that fails or runs
out of memory during a case is retried on the CPU, and the result says so.
"""
from __future__ import annotations

import threading
import time
from typing import Dict, List, Optional

import numpy as np

from CRCSegmentationLib.core.model import ModelSource
from CRCSegmentationLib.core.model_fit import fit_warnings, model_expectation
from CRCSegmentationLib.core.running import remove_small_components, torch_device, with_cpu_fallback
from CRCSegmentationLib.core.segmentation import SegmentationParameters, TumorSegmentation
from OrganGuidanceLib.crop import BODY_THRESHOLD_HU, CropBox, body_crop_box
from OrganGuidanceLib.device import resolve_device
from OrganGuidanceLib.guidance import GuidanceResult
from OrganGuidanceLib.image import Image, as_index3
from OrganGuidanceLib.labels import LabelConvention
from OrganGuidanceLib.morphology import bounding_box
from OrganGuidanceLib.mos_codes import compact_mos
from OrganGuidanceLib.progress import ProgressCallback, progress_step
from OrganGuidanceLib.validation import InputError

BODY_CROP_MARGIN_MM = 10.0  # GuidanceParameters.crop_margin_mm: used when the guidance has no body box


def guidance_convention(guidance: GuidanceResult) -> LabelConvention:
    """The MOS label names of ``guidance`` (value -> name of the labels present) as a convention.

    ``compact_mos`` needs only the present labels' names: organs are recognised by name
    (``labels.ORGAN_ALIASES``) as in the source convention, so the compact code is the same.
    """
    return LabelConvention("guidance", dict(guidance.organ_names))


def build_input_channels(names: List[str], ct: Image, guidance: Optional[GuidanceResult],
                         region: CropBox) -> np.ndarray:
    """(C, Z, Y, X) float32 in the model's channel order ``names``, cropped to ``region``.

    The same channels as training (``CRCTraining.data.prepare_ct``): CT in HU, compact MOS code, OOI 0/1.
    """
    arrays = []
    for name in names:
        if name in ("CT", "MR"):  # the image itself (nnU-Net normalises it as in training)
            arrays.append(ct.array[region.slices])
        elif guidance is None:
            raise InputError(f"the model needs the {name} channel: run organ guidance first")
        elif name == "MOS":
            arrays.append(compact_mos(guidance.mos, guidance_convention(guidance)).array[region.slices])
        elif name == "OOI":
            arrays.append(guidance.ooi.array[region.slices] > 0)
        else:
            raise InputError(f"input channel '{name}' is not one this engine builds (CT, MOS, OOI, MR)")
    return np.stack([np.asarray(a, dtype=np.float32) for a in arrays])


def _paste(array: np.ndarray, region: CropBox) -> np.ndarray:
    full = np.zeros(region.full_shape, dtype=array.dtype)
    full[region.slices] = array
    return full


class NNUNetSegmenter:
    """One model, initialised once; ``segment`` runs it on one CT at a time."""

    def __init__(self, model: ModelSource, parameters: Optional[SegmentationParameters] = None) -> None:
        self.model = model
        self.parameters = parameters or SegmentationParameters()
        valid, reason = self.parameters.is_valid()
        if not valid:
            raise InputError(f"segmentation parameters: {reason}")
        self.device = resolve_device(self.parameters.device)  # before any loading: a bad choice fails fast
        # What the model was trained on (its plans, its recorded thick axis): read once per segmenter.
        self.expectation = model_expectation(model)
        self._predictors: Dict[str, object] = {}
        self._predictor(self.device)

    def _predictor(self, device):
        """nnU-Net's predictor for ``device``, built on first use (a CPU one only after a CUDA failure)."""
        if device.type not in self._predictors:
            from CRCSegmentationLib.nnunet.restricted_predictor import RestrictedPredictor

            predictor = RestrictedPredictor(
                tile_step_size=self.parameters.tile_step_size, use_gaussian=True,
                use_mirroring=self.parameters.mirroring, perform_everything_on_device=device.type == "cuda",
                device=device, verbose=False, verbose_preprocessing=False, allow_tqdm=True,
            )
            from CRCSegmentationLib.nnunet.loading import initialize_predictor

            initialize_predictor(predictor, self.model)
            self._predictors[device.type] = predictor
        return self._predictors[device.type]

    # --- the steps ------------------------------------------------------------------------------
    def segment(self, ct: Image, guidance: Optional[GuidanceResult] = None,
                progress: Optional[ProgressCallback] = None,
                cancel: Optional[threading.Event] = None) -> TumorSegmentation:
        step = progress_step(progress, cancel)
        timings: Dict[str, float] = {}
        warnings: List[str] = []
        start = time.perf_counter()

        step("checking inputs", 0.0)
        self.model.check_image(ct)
        warnings.extend(fit_warnings(self.expectation, ct))  # segmented all the same, with what the model expected
        if self.model.modality == "MR" and guidance is not None:
            warnings.append("organ guidance was given to an MR model, which takes none: it was not used")
            guidance = None
        image_channel = "MR" if self.model.modality == "MR" else "CT"
        available = [image_channel] + (["MOS", "OOI"] if guidance is not None else [])
        self.model.check_channels(available)
        if guidance is not None:
            for item in (guidance.mos, guidance.ooi):
                if not item.same_grid(ct):
                    raise InputError(f"{item.name}: is not on the CT grid of {ct.name}; run organ guidance on this CT")
        region = self.region(ct, guidance, warnings)
        # Default: the whole grid goes to nnU-Net (its tile grid stays the full-volume one) and only
        # the tiles touching ``region`` run (restricted_predictor.py).
        given = region if self.parameters.crop_input else CropBox.full(ct.shape)
        channels = build_input_channels(self.model.input_channels, ct, guidance, given)
        timings["inputs"] = time.perf_counter() - start

        step("tumor model", 0.1)
        tick = time.perf_counter()
        window = CropBox.full(given.shape) if self.parameters.crop_input else region
        focus_channel = self._focus_channel(guidance)
        from CRCSegmentationLib.core.efficiency import EfficiencyMonitor

        with EfficiencyMonitor(self.device.type) as monitor:
            labels, probabilities, used = self._predict(channels, ct, window, warnings, focus_channel, cancel)
        if self.parameters.crop_input:  # back onto the CT grid
            labels = _paste(labels, region)
            probabilities = None if probabilities is None else _paste(probabilities, region)
        timings["predict"] = time.perf_counter() - tick

        step("post-processing", 0.9)
        tick = time.perf_counter()
        outside = np.ones(ct.shape, bool)
        outside[region.slices] = False  # no tile ran there: nothing is predicted
        if focus_channel is not None:  # tiles were chosen by the OOI: only its voxels are predicted
            outside |= guidance.ooi.array == 0  # type: ignore[union-attr]
        tumor = np.isin(labels, self.model.tumor_labels) & ~outside
        mask = self.postprocess(ct.with_array(tumor.astype(np.uint8), "Tumor"), guidance, warnings)
        organs = None
        # MR models (RCSegNeXt) segment the rectum as a result of its own (§3.1), so it is always kept.
        if (self.parameters.keep_organs or self.model.modality == "MR") and self.model.organ_labels:
            organ_values = sorted(self.model.organ_labels.values())
            inside = np.zeros(ct.shape, bool)
            inside[region.slices] = True  # the organs where tiles ran (with OOI-chosen tiles: the OOI's)
            if focus_channel is not None:
                inside &= guidance.ooi.array > 0  # type: ignore[union-attr]
            organ_array = np.where(np.isin(labels, organ_values) & inside, labels, 0).astype(np.uint8)
            organs = ct.with_array(organ_array, "Model organs")
        probability_image = None
        if self.parameters.keep_probabilities and probabilities is not None:
            probabilities = np.where(outside, np.float32(0), probabilities.astype(np.float32))
            probability_image = ct.with_array(probabilities, "Tumor probability")
        timings["postprocess"] = time.perf_counter() - tick
        timings["total"] = time.perf_counter() - start
        if progress is not None:
            progress("done", 1.0)
        predictor = self._predictor(torch_device(used))
        tiles = (predictor.tiles_run, predictor.tiles_total)
        return TumorSegmentation(mask, probability_image, region, used, warnings, timings, tiles, monitor.measures(),
                                 organs)

    def region(self, ct: Image, guidance: Optional[GuidanceResult], warnings: List[str]) -> CropBox:
        """Body crop ∩ (OOI bounding box + margin), in CT array indices: where tiles are run.

        MR: the whole grid (the body crop thresholds Hounsfield units; an MR model has no OOI)."""
        full = CropBox.full(ct.shape)
        if self.model.modality == "MR":
            return full
        box = full
        if self.parameters.body_crop:
            crop = guidance.crop_box if guidance is not None else None
            if crop is None or tuple(crop.full_shape) != ct.shape:
                try:
                    crop = body_crop_box(ct, BODY_THRESHOLD_HU, BODY_CROP_MARGIN_MM)
                except InputError as error:  # no voxel above 50 HU: predict everywhere
                    warnings.append(f"body crop skipped: {error}")
                    crop = full
            box = crop
        if not self.parameters.restrict_to_ooi:
            return box
        if guidance is None:
            warnings.append("no organ guidance: the prediction is not restricted to the organs of interest")
            return box
        ooi_box = bounding_box(guidance.ooi.array)
        if ooi_box is None:
            warnings.append("the OOI is empty (no organ of interest found): predicting on the whole body crop")
            return box
        margin = [int(np.ceil(self.parameters.ooi_margin_mm / s)) for s in ct.spacing_zyx]
        start = tuple(max(b, s.start - m) for b, s, m in zip(box.start, ooi_box, margin))
        stop = tuple(min(b, s.stop + m) for b, s, m in zip(box.stop, ooi_box, margin))
        if any(a >= b for a, b in zip(start, stop)):
            warnings.append("the OOI lies outside the body crop: predicting on the whole body crop")
            return box
        return CropBox(as_index3(start), as_index3(stop), ct.shape)

    def _focus_channel(self, guidance: Optional[GuidanceResult]) -> Optional[int]:
        """The OOI input channel when tiles are chosen by the OOI (``min_tile_weight`` > 0), else None."""
        p = self.parameters
        if (p.min_tile_weight <= 0 or p.crop_input or not (p.restrict_to_ooi and p.keep_within_ooi)
                or guidance is None or "OOI" not in self.model.input_channels or not guidance.ooi.array.any()):
            return None
        return self.model.input_channels.index("OOI")

    def _predict(self, channels: np.ndarray, ct: Image, region: CropBox, warnings: List[str],
                 focus_channel: Optional[int] = None, cancel: Optional[threading.Event] = None):
        """Labels and tumor probabilities on the CT grid (valid in ``region``); CUDA failures retried on the CPU."""
        want_probabilities = self.parameters.keep_probabilities
        device = self.device

        def run(on):
            # SimpleITK's axis order, which nnU-Net's preprocessing used: array (z, y, x), spacing (z, y, x).
            predictor = self._predictor(on)
            predictor.min_tile_weight = self.parameters.min_tile_weight
            predictor.cancel = cancel  # checked between tiles
            try:
                return predictor.predict_in_box(channels, ct.spacing_zyx, region.start, region.stop,
                                                want_probabilities, focus_channel)
            finally:
                predictor.cancel = None

        result, device = with_cpu_fallback(run, device, warnings)
        if want_probabilities:
            labels, probabilities = result
            tumor_probability = np.asarray(probabilities)[self.model.tumor_labels].sum(axis=0)
            return np.asarray(labels), tumor_probability, device.type
        return np.asarray(result), None, device.type

    def postprocess(self, mask: Image, guidance: Optional[GuidanceResult], warnings: List[str]) -> Image:
        array = mask.array.astype(bool)
        if self.parameters.keep_within_ooi and guidance is not None:
            ooi = guidance.ooi.array > 0
            if ooi.any():
                array &= ooi
            else:
                warnings.append("the OOI is empty: the tumor mask was not limited to it")
        array = remove_small_components(array, mask.spacing, self.parameters.min_component_ml)
        return mask.with_array(array.astype(np.uint8), "Tumor")

