"""Tumor inference: CT (+ organ guidance) -> tumor mask on the CT grid, through nnU-Net's predictor.

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

The predictor is built once per ``TumorSegmenter``; a batch reuses it. CUDA that fails or runs
out of memory during a case is retried on the CPU, and the result says so.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import cc3d
import numpy as np

from OrganGuidanceLib.device import DEVICES, resolve_device
from OrganGuidanceLib.crop import BODY_THRESHOLD_HU, CropBox, body_crop_box
from OrganGuidanceLib.guidance import GuidanceResult
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.labels import LabelConvention
from OrganGuidanceLib.morphology import bounding_box
from OrganGuidanceLib.mos_codes import compact_mos
from OrganGuidanceLib.providers import RunCancelled
from OrganGuidanceLib.validation import InputError

from .model_fit import fit_warnings, model_expectation
from .model_source import ModelSource

ProgressCallback = Callable[[str, float], None]  # (stage, fraction 0..1), as OrganGuidanceLib.guidance
BODY_CROP_MARGIN_MM = 10.0  # GuidanceParameters.crop_margin_mm: used when the guidance has no body box


@dataclass
class SegmentationParameters:
    """What a user chooses for one tumor segmentation; every default says where it comes from."""

    device: str = "auto"  # auto | cuda | cpu (DESIGN.md: GPU when present, CPU always works)
    mirroring: bool = True  # nnU-Net's default test-time augmentation; off is ~8x faster in 3D
    tile_step_size: float = 0.5  # nnU-Net's default: tiles overlap by half a patch
    restrict_to_ooi: bool = True  # predict only in the OOI box (AF-loss models learn nothing outside the OOI)
    # Whole full-volume tiles run, so context comes with each tile: the margin only widens what is
    # predicted around the OOI box (keep_within_ooi discards it), and in crop_input mode it is the
    # context the crop keeps. 20 mm ~ a few voxels of context at 5 mm slices.
    ooi_margin_mm: float = 20.0
    body_crop: bool = True  # FLARE24 §3: never predict in the air around the body
    keep_within_ooi: bool = True  # AG-CRC Eq. 8 trains prediction x OOI: voxels outside are untrained
    min_component_ml: float = 0.0  # components smaller than this are removed; 0 keeps every component
    keep_probabilities: bool = True  # tumor probabilities for point-prompted refinement
    # Organ-interference models (FLARE24) segment organs too: they are never reported as tumor; True
    # keeps them as a label map (shown as segments in Slicer). FLARE24 §2.3 drops them.
    keep_organs: bool = False
    # True: only the region goes to nnU-Net (less preprocessing, fewer tiles), but its tiles then fall
    # elsewhere than on the full volume, and a network that depends on tile position gives another
    # result (benchmarks/bench_inference.py). False: full-volume tiles, those touching the region run.
    crop_input: bool = False
    # With keep_within_ooi, tiles are chosen by the OOI itself: a tile runs only if its Gaussian weight
    # (nnU-Net's, sigma = patch / 8) reaches this fraction of its peak on an OOI voxel; the tiles left
    # out would only add their faint rim. 0: every tile touching the OOI box runs, and inside the box
    # the result is exactly nnU-Net's full-volume one. 0.05 measured (benchmarks/bench_inference.py):
    # about half the tiles, probabilities within 0.007 of the full-volume ones inside the OOI.
    min_tile_weight: float = 0.05

    @classmethod
    def for_preset(cls, preset: str = "default", **fields) -> "SegmentationParameters":
        """The parameters of a preset (``PRESETS``), with ``fields`` set on top."""
        if preset not in PRESETS:
            raise InputError(f"preset '{preset}' is not one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[preset], **fields})

    def is_valid(self) -> Tuple[bool, str]:
        if self.device not in DEVICES:
            return False, f"device '{self.device}' is not one of {DEVICES}"
        if not 0 < self.tile_step_size <= 1:
            return False, f"tile step size {self.tile_step_size} is outside (0, 1] (fraction of the patch size)"
        if not 0 <= self.ooi_margin_mm <= 200:
            return False, f"OOI margin {self.ooi_margin_mm} mm is outside 0..200 mm"
        if not 0 <= self.min_tile_weight < 1:
            return False, f"minimum tile weight {self.min_tile_weight} is outside [0, 1) (fraction of the Gaussian peak)"
        if self.min_component_ml < 0:
            return False, f"minimum component volume {self.min_component_ml} ml is negative"
        return True, ""


# FLARE24 §3.2 / Table 5: a tile step of 7/8 of the patch (nnU-Net's default is 1/2) and no mirroring
# make inference several times faster for a small loss; "default" is nnU-Net's own setting.
PRESETS: Dict[str, Dict[str, object]] = {"default": {}, "fast": {"tile_step_size": 0.875, "mirroring": False}}


@dataclass
class TumorSegmentation:
    mask: Image  # uint8 0/1 on the full CT grid
    probabilities: Optional[Image]  # float32 tumor probability on the full CT grid (0 outside ``region``)
    region: CropBox  # the box actually predicted, in CT array indices
    device: str  # where the network ran ("cuda" or "cpu")
    warnings: List[str] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)  # seconds per step
    tiles: Tuple[int, int] = (0, 0)  # sliding-window tiles run, of the full volume's (per fold and mirror)
    efficiency: Dict[str, float] = field(default_factory=dict)  # FLARE's measures of the model run (efficiency.py)
    organs: Optional[Image] = None  # organ labels of an organ-interference model (model values), if kept
    # Slice models (HCF): {"slices": axial slices, "abnormal": slices the classifier passed to SANet}
    slice_counts: Dict[str, int] = field(default_factory=dict)
    slice_filter: Optional[Any] = None  # slice_filter.SliceFilterReport when a slice filter cleaned the mask


def progress_step(progress: Optional[ProgressCallback],
                  cancel: Optional[threading.Event]) -> Callable[[str, float], None]:
    """``step(stage, fraction)`` of a segmenter: stop if cancelled (``RunCancelled``), then report progress."""
    report = progress or (lambda stage, fraction: None)

    def step(stage: str, fraction: float) -> None:
        if cancel is not None and cancel.is_set():
            raise RunCancelled(f"cancelled before '{stage}'")
        report(stage, fraction)

    return step


def torch_device(name: str):
    import torch

    return torch.device(name)


def guidance_convention(guidance: GuidanceResult) -> LabelConvention:
    """The MOS label names of ``guidance`` (value -> name of the labels present) as a convention.

    ``compact_mos`` needs only the present labels' names: organs are recognised by name
    (``labels.ORGAN_ALIASES``) as in the source convention, so the compact code is the same.
    """
    return LabelConvention("guidance", dict(guidance.organ_names))


def build_input_channels(names: List[str], ct: Image, guidance: Optional[GuidanceResult],
                         region: CropBox) -> np.ndarray:
    """(C, Z, Y, X) float32 in the model's channel order ``names``, cropped to ``region``.

    The same channels as training (``CRCTraining.prepare``): CT in HU, compact MOS code, OOI 0/1.
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


def _is_cuda_failure(error: BaseException) -> bool:
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(k in text for k in ("CUDA", "cuDNN", "CUBLAS", "out of memory"))


class TumorSegmenter:
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
            from .restricted_predictor import RestrictedPredictor

            predictor = RestrictedPredictor(
                tile_step_size=self.parameters.tile_step_size, use_gaussian=True,
                use_mirroring=self.parameters.mirroring, perform_everything_on_device=device.type == "cuda",
                device=device, verbose=False, verbose_preprocessing=False, allow_tqdm=True,
            )
            from .nnunet_loading import initialize_predictor

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
        given = region if self.parameters.crop_input else CropBox.full(ct.shape)  # type: ignore[arg-type]
        channels = build_input_channels(self.model.input_channels, ct, guidance, given)
        timings["inputs"] = time.perf_counter() - start

        step("tumor model", 0.1)
        tick = time.perf_counter()
        window = CropBox.full(given.shape) if self.parameters.crop_input else region  # type: ignore[arg-type]
        focus_channel = self._focus_channel(guidance)
        from .efficiency import EfficiencyMonitor

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
        full = CropBox.full(ct.shape)  # type: ignore[arg-type]
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
        return CropBox(start, stop, tuple(ct.shape))  # type: ignore[arg-type]

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
        import torch

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

        try:
            result = run(device)
        except Exception as error:  # noqa: BLE001 - only CUDA failures are retried; others re-raised
            if device.type != "cuda" or not _is_cuda_failure(error):
                raise
            torch.cuda.empty_cache()
            warnings.append(f"the GPU failed ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
                            "this case was run on the CPU instead (slower, same result)")
            device = torch.device("cpu")
            result = run(device)
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
        if self.parameters.min_component_ml > 0 and array.any():
            voxel_ml = float(np.prod(mask.spacing)) / 1000.0
            threshold = int(np.ceil(self.parameters.min_component_ml / voxel_ml))
            array = cc3d.dust(array.astype(np.uint8), threshold=threshold, connectivity=26).astype(bool)
        return mask.with_array(array.astype(np.uint8), "Tumor")

