"""Slice-classifier false-positive filter: HCF's slice classifier in front of any 3D model's result.

Beyond the paper. HCF (Sec. 3.1) observes that false positives lie mainly on normal slices next to the
GTV, and lets only the slices its classifier calls abnormal reach SANet. Here the same classifier
cleans another model's tumor mask: on every axial slice (``Image.axial_axis``) that holds
tumor, the classifier folds vote (``hcf.segmenter.majority_vote``: p(abnormal) >= the bundle's
threshold, at least half of the folds, ties abnormal); the tumor is cleared on the slices called
normal. Slices without tumor cannot change and are not classified.

The classifier comes from an HCF bundle (its classifier folds) or a classifier-only HCF bundle
(``hcf.bundle.write_hcf_bundle`` with no SANet folds). ``SliceFilter`` loads it once; ``filter`` cleans a
mask, ``apply`` a ``TumorSegmentation`` (its probabilities are zeroed on the rejected slices too, and
``slice_filter`` holds the report). Errors about the filter's model start with ``what``, the name the caller
gave it (``--slice-filter`` on the command line), never with another option's name.
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from CRCSegmentationLib.core.bundle import METADATA_FILE
from CRCSegmentationLib.core.errors import ModelError
from CRCSegmentationLib.core.model import ModelSource
from CRCSegmentationLib.models.open import open_model
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.validation import InputError

ModelSpec = Union[ModelSource, str, Path]
FILTER_MODELS = ("an HCF bundle (slice classifier + SANet, or classifier-only, written by `crcseg hcf-export`) or "
                 "the catalogue name of one")


@dataclass
class SliceFilterReport:
    """What the filter did to one mask; slice indices along ``axis`` (the axial axis of the CT array)."""

    model: str  # the classifier's bundle name
    removed_voxels: int
    rejected_slices: List[int]  # slices holding tumor that the classifier called normal (cleared)
    tumor_slices: int  # slices holding tumor before the filter (the ones classified)
    total_slices: int
    axis: int = 0
    probabilities: List[float] = field(default_factory=list)  # mean p(abnormal) of each classified slice

    def summary(self) -> str:
        return (f"slice filter: removed {self.removed_voxels} voxels on {len(self.rejected_slices)} of "
                f"{self.tumor_slices} slices with tumor ('{self.model}' slice classifier, {self.total_slices} "
                "slices in all)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_filter_model(model: ModelSource, what: str = "slice filter") -> ModelSource:
    """``ModelError`` unless ``model`` has a slice classifier (an HCF bundle, with or without SANet)."""
    if model.hcf is None:  # only the HCF opener fills it in
        raise ModelError(f"{what}: {model.folder} is a model of kind '{model.kind}'; the slice filter needs "
                         "an HCF bundle (its slice classifier) or a classifier-only HCF bundle")
    return model


def open_filter_model(model: ModelSpec, what: str = "slice filter") -> ModelSource:
    """The checked model of a slice filter (``check_filter_model``); ``ModelError`` messages start with ``what``.

    A file, or a folder that is no model bundle, is refused as not an HCF bundle (not with the wording of
    ``open_model``, which would ask for an nnU-Net results folder, a model the filter cannot use).
    """
    if isinstance(model, ModelSource):
        return check_filter_model(model, what)
    path = Path(str(model)).expanduser()
    if path.is_file():
        raise ModelError(f"{what}: {path} is a file; give {FILTER_MODELS}")
    if path.is_dir() and not (path / METADATA_FILE).is_file():
        raise ModelError(f"{what}: {path} is not a model bundle ({METADATA_FILE} is missing); give {FILTER_MODELS}")
    try:
        source = open_model(model)
    except ModelError as error:
        text = str(error)
        raise ModelError(f"{what}: {text[len('model: '):] if text.startswith('model: ') else text}") from error
    return check_filter_model(source, what)


class SliceFilter:
    """A slice classifier loaded once (``device``: one of ``choices.DEVICES``), to clean any number of masks.

    ``what``: the filter's name in error messages (``--slice-filter`` for ``crcseg segment``)."""

    def __init__(self, model: ModelSpec, device: str = "auto", batch_size: Optional[int] = None,
                 what: str = "slice filter") -> None:
        from CRCSegmentationLib.hcf.segmenter import DEFAULT_BATCH_SIZE, SliceClassifierEnsemble
        from OrganGuidanceLib.device import resolve_device

        self.model = open_filter_model(model, what)
        self.classifier = SliceClassifierEnsemble(self.model, resolve_device(device), batch_size or DEFAULT_BATCH_SIZE)

    @property
    def device(self) -> str:
        return self.classifier.device.type

    def filter(self, ct: Image, mask: Image, cancel: Optional[threading.Event] = None) -> Tuple[Image, SliceFilterReport]:
        """``mask`` (tumor > 0, on the grid of ``ct``) with the tumor cleared on the slices called normal."""
        self.model.check_image(ct)
        if tuple(mask.shape) != tuple(ct.shape) or not mask.same_grid(ct):
            raise InputError(f"slice filter: the mask {mask.name} {mask.shape} is not on the grid of the CT "
                             f"{ct.name} {ct.shape}")
        from CRCSegmentationLib.hcf.segmenter import SliceInputs

        inputs = SliceInputs(ct, self.model.hcf)
        tumor = np.moveaxis(np.asarray(mask.array) > 0, inputs.axis, 0)
        per_slice = tumor.reshape(tumor.shape[0], -1).sum(axis=1)
        holding = np.flatnonzero(per_slice)
        rejected: List[int] = []
        probabilities: List[float] = []
        if holding.size:
            decisions = self.classifier.classify_inputs(inputs, holding, cancel)
            rejected = decisions.normal_slices
            probabilities = [float(p) for p in decisions.probabilities.mean(axis=0)]
        removed = int(per_slice[rejected].sum()) if rejected else 0
        filtered = _cleared(mask, rejected, inputs.axis)
        report = SliceFilterReport(self.model.name, removed, rejected, int(holding.size), len(inputs), inputs.axis,
                                   probabilities)
        return filtered, report

    def apply(self, ct: Image, segmentation, cancel: Optional[threading.Event] = None):
        """A copy of the ``TumorSegmentation`` with its mask filtered (probabilities zeroed on the rejected
        slices), the report in ``slice_filter`` and its summary among the warnings."""
        mask, report = self.filter(ct, segmentation.mask, cancel)
        probabilities = segmentation.probabilities
        if probabilities is not None:
            probabilities = _cleared(probabilities, report.rejected_slices, report.axis)
        return dataclasses.replace(segmentation, mask=mask, probabilities=probabilities, slice_filter=report,
                                   warnings=[*segmentation.warnings, report.summary()])


def _cleared(image: Image, slices: List[int], axis: int) -> Image:
    """A copy of ``image`` with the ``slices`` along array ``axis`` set to zero."""
    array = np.moveaxis(np.asarray(image.array), axis, 0).copy()
    if slices:
        array[slices] = 0
    return image.with_array(np.ascontiguousarray(np.moveaxis(array, 0, axis)), image.name)


def filter_mask(model: ModelSpec, ct: Image, mask: Image, device: str = "auto",
                cancel: Optional[threading.Event] = None) -> Tuple[Image, SliceFilterReport]:
    """One-off: load the classifier of ``model`` and filter ``mask`` (``SliceFilter`` for many masks)."""
    return SliceFilter(model, device).filter(ct, mask, cancel)
