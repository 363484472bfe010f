"""HCF inference (paper Sec. 3.1, Fig. 3): slice classifier, then SANet on the abnormal slices only.

For one CT (``HCFSegmenter.segment``):

1. every axial slice (along ``Image.axial_axis``) -> ``to_network_input`` (HU window, body box,
   resize to ``size x size``);
2. each slice-classifier fold gives the softmax p(abnormal) of every slice; a fold votes "abnormal" when
   p >= ``classifier_threshold``, and a slice is abnormal when at least half of the folds vote so
   (majority vote, as the public code's 5-fold vote; **a tie counts as abnormal**: the classifier is a
   filter in front of SANet, and a slice wrongly let through can still come out empty, while a tumor
   slice wrongly rejected is lost for good; the paper judges the classifier by its recall, Sec. 4.1);
3. SANet's folds run on the abnormal slices only; **their softmax tumor probabilities are averaged**
   (as nnU-Net ensembles its folds), and a pixel is tumor where the mean exceeds 0.5 (the argmax of the
   mean for two classes); normal slices are all zero ("all-zero mapping by default", Sec. 3.1);
4. back on the slice grid (``input_to_slice``: nearest neighbour for the mask, bilinear for the
   probability), stacked, and the largest ``keep_components`` 3D components (26-connected) kept
   (DESIGN.md, HCF: "post-processing keeps the largest 3D component(s)"; 0 keeps all), then
   ``SegmentationParameters.min_component_ml`` as for every model.

Slices go through the networks in batches (``batch_size``) under ``torch.inference_mode``, on the GPU
when there is one (``SegmentationParameters.device``); a CUDA failure is retried on the CPU, and the
result says so. ``cancel`` is checked before every batch. The result is the ``TumorSegmentation`` every
segmenter gives; ``slice_counts`` says how many slices there were and how many went to SANet.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cc3d
import numpy as np
import torch
from tqdm import tqdm

from CRCSegmentationLib.core.errors import ModelError
from CRCSegmentationLib.core.model import ModelSource
from CRCSegmentationLib.core.running import remove_small_components, with_cpu_fallback
from CRCSegmentationLib.core.segmentation import SegmentationParameters, TumorSegmentation
from CRCSegmentationLib.hcf.bundle import HCFConfig, HCFStage, load_stage_weights
from CRCSegmentationLib.hcf.preprocessing import Box, input_to_slice, to_network_input
from OrganGuidanceLib.crop import CropBox
from OrganGuidanceLib.device import resolve_device
from OrganGuidanceLib.guidance import GuidanceResult
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.progress import ProgressCallback, RunCancelled, progress_step
from OrganGuidanceLib.validation import InputError

DEFAULT_BATCH_SIZE = 16  # slices per forward pass (paper Sec. 4.2 trains with 128 / 64 on A100s)
TUMOR_PROBABILITY = 0.5  # mean SANet softmax above it: tumor (the argmax of the mean of two classes)
Report = Callable[[str, float], None]


@dataclass
class SliceDecisions:
    """What the classifier folds said about each axial slice (index along ``axis``)."""

    axis: int  # the array axis slices were taken along (``Image.axial_axis``)
    probabilities: np.ndarray  # (folds, slices) float32 softmax p(abnormal) of each fold
    abnormal: np.ndarray  # (slices,) bool: the majority vote (ties abnormal)
    indices: np.ndarray  # (slices,) int: the slices asked about (all of them unless a subset was given)

    @property
    def abnormal_slices(self) -> List[int]:
        return [int(k) for k in self.indices[self.abnormal]]

    @property
    def normal_slices(self) -> List[int]:
        return [int(k) for k in self.indices[~self.abnormal]]


def majority_vote(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """(folds, slices) p(abnormal) -> (slices,) bool: abnormal when at least half the folds have p >= threshold."""
    probabilities = np.asarray(probabilities)
    votes = (probabilities >= threshold).sum(axis=0)
    return 2 * votes >= probabilities.shape[0]


def _check_cancel(cancel: Optional[threading.Event], where: str) -> None:
    if cancel is not None and cancel.is_set():
        raise RunCancelled(f"cancelled during {where}")


def _stage_networks(model: ModelSource, stage: HCFStage, device: torch.device) -> List[torch.nn.Module]:
    """One network per fold, weights loaded (those ``open_model`` read, else from the file, strict)."""
    networks = []
    for relative in stage.weight_files():
        path = model.folder / relative
        network = stage.build()
        state = model.loaded_checkpoints.get(path)
        if state is None:
            load_stage_weights(path, stage, network)
        else:
            network.load_state_dict(state, strict=True)
        networks.append(network.eval().to(device))
    return networks


class SliceInputs:
    """The axial slices of one CT as network inputs, made batch by batch (never all held at full size).

    The inputs of the slices the classifier passes are kept (``keep``) so that SANet gets them without
    cropping and resizing those slices a second time; only those, so memory grows with the tumor slices.
    """

    def __init__(self, ct: Image, config: HCFConfig) -> None:
        self.axis = ct.axial_axis
        self.volume = np.moveaxis(ct.array, self.axis, 0)  # a view: slices along axis 0
        self.config = config.slice_config
        self.boxes: Dict[int, Box] = {}
        self._kept: Dict[int, np.ndarray] = {}

    def keep(self, indices: Sequence[int], images: np.ndarray) -> None:
        """Hold the (B, 1, S, S) inputs ``images`` of ``indices`` for the next ``batch`` asking for them."""
        for k, image in zip(indices, images):
            self._kept[int(k)] = image

    def __len__(self) -> int:
        return int(self.volume.shape[0])

    @property
    def slice_shape(self) -> Tuple[int, int]:
        return int(self.volume.shape[1]), int(self.volume.shape[2])

    def batch(self, indices: Sequence[int]) -> np.ndarray:
        images = []
        for k in indices:
            kept = self._kept.pop(int(k), None)
            if kept is not None:
                images.append(kept[0])
                continue
            image, box = to_network_input(self.volume[int(k)], self.config)
            self.boxes[int(k)] = box
            images.append(image)
        return np.stack(images)[:, None]  # (B, 1, S, S)


def _batches(indices: Sequence[int], size: int) -> List[Sequence[int]]:
    return [indices[i:i + size] for i in range(0, len(indices), size)]


class SliceClassifierEnsemble:
    """The slice-classifier folds of an HCF bundle: p(abnormal) per fold and the majority vote."""

    def __init__(self, model: ModelSource, device: torch.device, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if model.hcf is None:  # only the HCF opener fills it in
            raise ModelError(f"{model.folder}: model '{model.name}' is of kind '{model.kind}'; a slice classifier "
                             "comes from an HCF bundle")
        self.model, self.config = model, model.hcf
        self.batch_size = _check_batch_size(batch_size)
        self.device = device
        self.networks = _stage_networks(model, self.config.classifier, device)

    def to(self, device: torch.device) -> None:
        self.device = device
        self.networks = [network.to(device) for network in self.networks]

    def classify_inputs(self, inputs: SliceInputs, indices: Optional[Sequence[int]] = None,
                        cancel: Optional[threading.Event] = None, report: Optional[Report] = None,
                        keep_passed: bool = False) -> SliceDecisions:
        """The decisions on ``indices`` (default: every slice); ``report(stage, fraction of this step)``.

        ``keep_passed``: ``inputs`` keeps the inputs of the slices that pass, for SANet.
        """
        chosen = np.arange(len(inputs)) if indices is None else np.asarray(sorted(int(k) for k in indices), dtype=int)
        probabilities = np.zeros((len(self.networks), len(chosen)), np.float32)
        batches = _batches(list(chosen), self.batch_size)
        done = 0
        with torch.inference_mode():
            for number, batch in enumerate(tqdm(batches, desc="slice classifier", unit="batch", leave=False,
                                                disable=report is not None or len(batches) < 2)):
                _check_cancel(cancel, "the slice classifier")
                images = inputs.batch(batch)
                x = torch.from_numpy(images).to(self.device)
                for fold, network in enumerate(self.networks):
                    p = torch.softmax(network(x).float(), dim=1)[:, self.config.abnormal_class]
                    probabilities[fold, done:done + len(batch)] = p.cpu().numpy()
                if keep_passed:
                    passed = majority_vote(probabilities[:, done:done + len(batch)], self.config.classifier_threshold)
                    inputs.keep([k for k, abnormal in zip(batch, passed) if abnormal], images[passed])
                done += len(batch)
                if report is not None:
                    report("slice classifier", (number + 1) / len(batches))
        abnormal = majority_vote(probabilities, self.config.classifier_threshold)
        return SliceDecisions(inputs.axis, probabilities, abnormal, chosen)

    def classify(self, ct: Image, indices: Optional[Sequence[int]] = None,
                 cancel: Optional[threading.Event] = None) -> SliceDecisions:
        """Which axial slices of ``ct`` (or of ``indices`` among them) the folds call abnormal."""
        return self.classify_inputs(SliceInputs(ct, self.config), indices, cancel)


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"HCF batch size {batch_size!r}: a whole number of slices >= 1 is needed")
    return batch_size


def keep_largest_components(mask: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` largest 26-connected components of a 3D mask (``count`` 0: the mask unchanged)."""
    mask = np.asarray(mask).astype(bool)
    if count <= 0 or not mask.any():
        return mask
    return cc3d.largest_k(mask.astype(np.uint8), k=int(count), connectivity=26) > 0


class HCFSegmenter:
    """An HCF bundle's two stages, built once; ``segment`` runs them on one CT at a time."""

    def __init__(self, model: ModelSource, parameters: Optional[SegmentationParameters] = None,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.model = model
        self.parameters = parameters or SegmentationParameters()
        valid, reason = self.parameters.is_valid()
        if not valid:
            raise InputError(f"segmentation parameters: {reason}")
        if model.hcf is None:
            raise ModelError(f"{model.folder}: not an HCF model (kind '{model.kind}')")
        if not model.hcf.sanet.folds:
            raise ModelError(f"{model.folder}: a classifier-only HCF bundle (no SANet folds): it cannot segment; "
                             "use it as a slice filter of another model's result")
        self.batch_size = _check_batch_size(batch_size)
        self.device = resolve_device(self.parameters.device)  # before any loading: a bad choice fails fast
        self.classifier = SliceClassifierEnsemble(model, self.device, self.batch_size)
        self.sanets = _stage_networks(model, model.hcf.sanet, self.device)
        self.sanet_slices_run = 0  # slices SANet saw in the last ``segment`` (each through every fold)

    def _to(self, device: torch.device) -> None:
        self.device = device
        self.classifier.to(device)
        self.sanets = [network.to(device) for network in self.sanets]

    def _sanet(self, inputs: SliceInputs, indices: Sequence[int], cancel: Optional[threading.Event],
               report: Report) -> Dict[int, np.ndarray]:
        """Mean tumor probability (S, S) of SANet's folds for each slice of ``indices``."""
        tumor = self.model.tumor_label
        probabilities: Dict[int, np.ndarray] = {}
        batches = _batches(list(indices), self.batch_size)
        self.sanet_slices_run = 0
        with torch.inference_mode():
            for number, batch in enumerate(batches):
                _check_cancel(cancel, "SANet")
                x = torch.from_numpy(inputs.batch(batch)).to(self.device)
                total = None
                for network in self.sanets:
                    p = torch.softmax(network(x).float(), dim=1)[:, tumor]
                    total = p if total is None else total + p
                mean = (total / len(self.sanets)).cpu().numpy()
                self.sanet_slices_run += len(batch)
                for k, probability in zip(batch, mean):
                    probabilities[int(k)] = probability
                report("SANet", (number + 1) / len(batches))
        return probabilities

    def _run(self, inputs: SliceInputs, cancel, step: Callable[[str, float], None]):
        decisions = self.classifier.classify_inputs(inputs, None, cancel,
                                                    lambda stage, f: step(stage, 0.05 + 0.45 * f), keep_passed=True)
        step("SANet", 0.5)
        probabilities = self._sanet(inputs, decisions.abnormal_slices, cancel, lambda stage, f: step(stage, 0.5 + 0.4 * f))
        return decisions, probabilities

    def segment(self, ct: Image, guidance: Optional[GuidanceResult] = None,
                progress: Optional[ProgressCallback] = None,
                cancel: Optional[threading.Event] = None) -> TumorSegmentation:
        """Tumor mask (uint8 0/1 on the CT grid) and probability; raises ``InputError``, ``RunCancelled``."""
        step = progress_step(progress, cancel)
        timings: Dict[str, float] = {}
        warnings: List[str] = []
        start = time.perf_counter()

        step("checking inputs", 0.0)
        self.model.check_image(ct)
        if guidance is not None:
            warnings.append(f"organ guidance was given to the HCF model '{self.model.name}', which takes none: "
                            "it was not used")
        inputs = SliceInputs(ct, self.model.hcf)
        timings["inputs"] = time.perf_counter() - start
        step("slice classifier", 0.05)
        from CRCSegmentationLib.core.efficiency import EfficiencyMonitor

        tick = time.perf_counter()
        with EfficiencyMonitor(self.device.type) as monitor:
            def run(device):
                if device != self.device:
                    self._to(device)
                return self._run(inputs, cancel, step)

            (decisions, probabilities), _ = with_cpu_fallback(run, self.device, warnings)
        timings["predict"] = time.perf_counter() - tick

        step("post-processing", 0.9)
        tick = time.perf_counter()
        volume_shape = inputs.volume.shape
        mask = np.zeros(volume_shape, np.uint8)
        keep = self.parameters.keep_probabilities
        probability = np.zeros(volume_shape, np.float32) if keep else None
        for k, slice_probability in probabilities.items():
            box = inputs.boxes[k]
            mask[k] = input_to_slice((slice_probability > TUMOR_PROBABILITY).astype(np.uint8), box,
                                     inputs.slice_shape, order=0)
            if probability is not None:
                probability[k] = input_to_slice(slice_probability.astype(np.float32), box, inputs.slice_shape, order=1)
        mask = np.moveaxis(mask, 0, inputs.axis)
        kept = keep_largest_components(mask, self.model.hcf.keep_components)
        kept = remove_small_components(kept > 0, ct.spacing, self.parameters.min_component_ml)
        mask_image = ct.with_array(np.ascontiguousarray(kept.astype(np.uint8)), "Tumor")
        probability_image = None
        if probability is not None:
            probability_image = ct.with_array(np.ascontiguousarray(np.moveaxis(probability, 0, inputs.axis)),
                                              "Tumor probability")
        timings["postprocess"] = time.perf_counter() - tick
        timings["total"] = time.perf_counter() - start
        if progress is not None:
            progress("done", 1.0)
        counts = {"slices": len(inputs), "abnormal": len(decisions.abnormal_slices)}
        return TumorSegmentation(mask_image, probability_image, CropBox.full(ct.shape), self.device.type,
                                 warnings, timings, (0, 0), monitor.measures(), slice_counts=counts)
