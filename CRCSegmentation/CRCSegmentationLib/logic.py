"""Tumor segmentation in Slicer: read nodes, compute off the main thread, write nodes.

The same three steps as ``OrganGuidanceLib.logic``, so MRML stays on the main thread:

- ``prepare`` (main thread) reads the CT and the guidance (an Organ Guidance output
  segmentation in the scene, or the inputs of an Organ Guidance run done on the fly),
  opens and checks the model;
- ``compute`` (any thread) touches no MRML: organ guidance when asked for, then the
  model's segmenter, then the optional slice filter (``slice_filter``: an HCF slice classifier
  clears the tumor on the slices it calls normal); it can be cancelled;
- ``apply`` (main thread) writes the "Tumor" segment and the statistics table.

``process`` chains the three for the Python console and batch scripts.
``PointRefinementLogic`` (U-SAM point refinement of the "Tumor" segment) lives in
``refinement_logic`` and is re-exported here. The engine (inference, catalogue, statistics)
is imported on use: it needs PyTorch and nnU-Net, which may be installed only after the
module has loaded.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from CRCSegmentationLib.choices import GUIDANCE_SOURCES  # "none" only for CT-only models
from CRCSegmentationLib.dicom import FILE_ENDINGS as DICOM_FILE_ENDINGS
from CRCSegmentationLib.mrml import (
    STATISTICS_REFERENCE_ROLE,
    ExportedFiles,
    export_segmentation,
    guidance_from_segmentation_node,
    reference_ct,
    statistics_to_table_node,
    tumor_to_segmentation_node,
)
from CRCSegmentationLib.refinement_logic import PointRefinementLogic, PropagationJob, RefinementStep  # noqa: F401 - re-exported
from OrganGuidanceLib.guidance import GuidanceResult
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.labels import LabelConvention, load_convention
from OrganGuidanceLib.logic import GuidanceJob, OrganGuidanceLogic, OrganGuidanceSettings
from OrganGuidanceLib.mrml import image_from_volume_node, node_name, register_segmentation_converter_rules
from OrganGuidanceLib.progress import ProgressCallback, RunCancelled
from OrganGuidanceLib.validation import InputError

logger = logging.getLogger(__name__)

GUIDANCE_SHARE = 0.3  # of the progress bar when organ guidance runs first (without TotalSegmentator: seconds)


def _default_segmentation_parameters():
    from CRCSegmentationLib.core.segmentation import SegmentationParameters

    return SegmentationParameters()


@dataclass
class CRCSegmentationSettings:
    """Everything a user chooses for one tumor-segmentation run."""

    model: str = ""  # model folder (bundle or nnU-Net results folder) or a catalogue name
    folds: Optional[Tuple[str, ...]] = None  # None: the model's own folds
    checkpoint: Optional[str] = None  # None: the model's default checkpoint
    guidance_source: str = "compute"  # "scene" | "compute" | "none"
    guidance_node: Any = None  # Organ Guidance output segmentation when guidance_source == "scene"
    organ_guidance: OrganGuidanceSettings = field(default_factory=OrganGuidanceSettings)  # when "compute"
    convention: str = "totalsegmentator"  # names of the organ segments of guidance_node (the MOS channel's labels)
    segmentation: Any = field(default_factory=_default_segmentation_parameters)  # inference.SegmentationParameters
    slice_filter: str = ""  # "" or an HCF (classifier-only) bundle folder / catalogue name: slice_filter.SliceFilter

    def is_valid(self) -> Tuple[bool, str]:
        if not self.model.strip():
            return False, "model: choose a model from the catalogue or a model folder"
        if self.guidance_source not in GUIDANCE_SOURCES:
            return False, f"guidance source '{self.guidance_source}' is not one of {GUIDANCE_SOURCES}"
        if self.guidance_source == "scene":
            if self.guidance_node is None:
                return False, "organ guidance: no Organ Guidance segmentation selected"
            if not self.guidance_node.IsA("vtkMRMLSegmentationNode"):
                return False, f"organ guidance: {node_name(self.guidance_node)} is not a segmentation"
            key = self.convention.strip().lower()
            if key not in ("totalsegmentator", "total", "ts", "word") and not Path(self.convention).is_file():
                return False, f"organ guidance: label convention '{self.convention}' is not 'totalsegmentator', 'word' or a JSON file"
        if self.guidance_source == "compute":
            valid, reason = self.organ_guidance.is_valid()
            if not valid:
                return False, f"organ guidance: {reason}"
        return self.segmentation.is_valid()


@dataclass
class SegmentationJob:
    """Everything read from the scene, so ``compute`` never touches MRML."""

    ct: Image
    ct_node_id: str
    settings: CRCSegmentationSettings
    model: Any  # core.model.ModelSource
    guidance: Optional[GuidanceResult] = None  # read from the scene
    guidance_job: Optional[GuidanceJob] = None  # organ guidance to compute first
    messages: List[str] = field(default_factory=list)  # warnings for the user
    slice_filter_model: Any = None  # core.model.ModelSource of the slice filter, when one is chosen


class CRCSegmentationLogic:
    """CT (+ organ guidance) -> tumor segment + statistics, for one CT node at a time."""

    def __init__(self, scene) -> None:
        from CRCSegmentationLib.models.cache import ModelCache

        self.scene = scene
        self.guidance_logic = OrganGuidanceLogic(scene)
        self.models = ModelCache()  # verified and loaded once per model choice, not on every click
        self.filter_models = ModelCache()  # the slice filter's bundle, kept apart from the model's entry
        self._slice_filter: Optional[Tuple[tuple, Any]] = None  # (key, slice_filter.SliceFilter) built last
        self.messages: List[str] = []  # the warnings of the last ``process`` run
        register_segmentation_converter_rules()  # no-op inside Slicer; needed under slicer-core

    # --- main thread ------------------------------------------------------------
    def prepare(self, ct_node, settings: CRCSegmentationSettings) -> SegmentationJob:
        """Read the CT and the guidance, open the model; raise ``InputError`` (or the engine's model error)."""
        valid, reason = settings.is_valid()
        if not valid:
            raise InputError(reason)
        if ct_node is None:
            raise InputError("CT: no volume selected")
        if ct_node.IsA("vtkMRMLLabelMapVolumeNode") or not ct_node.IsA("vtkMRMLScalarVolumeNode"):
            raise InputError(f"{node_name(ct_node)}: is a {ct_node.GetClassName()}, not an image volume (a CT, or an MR volume for an MR model)")
        ct = image_from_volume_node(ct_node)
        model = self.models.open(settings.model, settings.folds, settings.checkpoint)  # a folder or a catalogue name
        model.check_image(ct)  # a CT for CT models, an MR volume for MR models
        job = SegmentationJob(ct=ct, ct_node_id=ct_node.GetID(), settings=settings, model=model)
        if settings.slice_filter.strip():
            from CRCSegmentationLib.models.slice_filter import check_filter_model

            job.slice_filter_model = check_filter_model(self.filter_models.open(settings.slice_filter.strip()))
            try:
                job.slice_filter_model.check_image(ct)  # its classifier reads CT slices
            except InputError as error:
                raise InputError(f"slice filter: {error}") from error
        if model.no_guidance_reason:  # RCSegNeXt: T2 MRI alone (organ guidance is a CT method); HCF: slices alone
            if settings.guidance_source != "none":
                job.messages.append(f"model '{model.name}' {model.no_guidance_reason} without organ guidance: "
                                    "the organ guidance setting was not used")
            model.check_channels(["MR" if model.modality == "MR" else "CT"])
            return job
        if settings.guidance_source == "scene":
            node = settings.guidance_node
            if node.GetScene() is None or self.scene.GetNodeByID(node.GetID()) is None:
                raise InputError(f"organ guidance: {node_name(node)} is not in the scene")
            if node.GetTransformNodeID() != ct_node.GetTransformNodeID():
                raise InputError(f"{node_name(node)}: is under another transform than {node_name(ct_node)}; harden the transforms first")
            job.guidance = guidance_from_segmentation_node(node, ct, self._convention(settings), job.messages,
                                                           settings.organ_guidance.guidance.organ_set)
        elif settings.guidance_source == "compute":
            job.guidance_job = self.guidance_logic.prepare(ct_node, settings.organ_guidance)
            job.messages.extend(job.guidance_job.messages)
        model.check_channels(["CT"] if settings.guidance_source == "none" else ["CT", "MOS", "OOI"])
        return job

    def apply(self, job: SegmentationJob, result, output_node=None):
        """Write the result: a segmentation node with a "Tumor" segment, and its statistics table.

        Everything is checked and the statistics computed before the scene is touched.
        """
        from CRCSegmentationLib.measurement.statistics import tumor_statistics

        ct_node = self.scene.GetNodeByID(job.ct_node_id)
        if ct_node is None:
            raise InputError(f"{job.ct.name}: the CT node was removed from the scene during the run")
        statistics = tumor_statistics(result.mask)
        organ_names = {value: name for name, value in job.model.organ_labels.items()} if job.model is not None else {}
        segmentation_node = tumor_to_segmentation_node(self.scene, result.mask, ct_node, output_node, job.ct,
                                                       getattr(result, "organs", None), organ_names)
        previous = segmentation_node.GetNodeReference(STATISTICS_REFERENCE_ROLE)
        table = statistics_to_table_node(self.scene, statistics, f"{node_name(segmentation_node)} statistics", previous)
        segmentation_node.SetNodeReferenceID(STATISTICS_REFERENCE_ROLE, table.GetID())
        return segmentation_node

    # --- any thread -------------------------------------------------------------
    def compute(
        self,
        job: SegmentationJob,
        cancel: Optional[threading.Event] = None,
        progress: Optional[ProgressCallback] = None,
    ):
        """Organ guidance (when computed on the fly), then the tumor model. No MRML; returns ``TumorSegmentation``."""
        cancel = cancel or threading.Event()
        report = progress or (lambda stage, fraction: None)
        guidance = job.guidance
        offset = 0.0
        if job.guidance_job is not None:
            offset = GUIDANCE_SHARE

            def guidance_progress(stage: str, fraction: Optional[float]) -> None:
                report(f"organ guidance: {stage}", None if fraction is None else GUIDANCE_SHARE * fraction)

            guidance = self.guidance_logic.compute(job.guidance_job, cancel, guidance_progress)
            job.messages.extend(guidance.warnings)
        if cancel.is_set():
            raise RunCancelled("cancelled before the tumor model started")

        def model_progress(stage: str, fraction: Optional[float] = None) -> None:
            report(stage, None if fraction is None else offset + (1.0 - offset) * fraction)

        segmenter = self.models.segmenter(job.model, job.settings.segmentation)
        result = segmenter.segment(job.ct, guidance, progress=model_progress, cancel=cancel)
        if cancel.is_set():
            raise RunCancelled("cancelled during tumor segmentation")
        if job.slice_filter_model is not None:
            report("slice filter", None)
            result = self.slice_filter(job.slice_filter_model, job.settings.segmentation.device).apply(
                job.ct, result, cancel)  # its summary joins the warnings (the panel shows them)
        job.messages.extend(result.warnings)
        return result

    def slice_filter(self, model, device: str = "auto"):
        """The ``slice_filter.SliceFilter`` of ``model`` on ``device``, built once per choice."""
        from CRCSegmentationLib.models.slice_filter import SliceFilter

        key = (id(model), device)
        cached = self._slice_filter
        if cached is not None and cached[0] == key and cached[1].model is model:
            return cached[1]
        built = SliceFilter(model, device)
        self._slice_filter = (key, built)
        return built

    # --- console / batch ----------------------------------------------------------
    def process(self, ct_node, settings: Optional[CRCSegmentationSettings] = None, output_node=None,
                progress: Optional[ProgressCallback] = None):
        """Tumor segmentation of one CT node, blocking: ``prepare`` + ``compute`` + ``apply``.

        Returns the segmentation node with a "Tumor" segment; its statistics table is its
        ``STATISTICS_REFERENCE_ROLE`` reference. A failure leaves the scene as it was. Warnings (e.g. an
        MR volume sliced in another plane than the model's training images, a CT outside its training
        intensity range: ``model_fit``) are logged as warnings and kept in ``logic.messages``.
        Batch example from the Slicer Python console, with organ masks next to each CT::

            from pathlib import Path
            from CRCSegmentationLib.logic import CRCSegmentationLogic, CRCSegmentationSettings
            from OrganGuidanceLib.logic import OrganGuidanceSettings, OrganSourceChoice

            logic = CRCSegmentationLogic(slicer.mrmlScene)
            for case in sorted(Path("/data/cases").iterdir()):
                ct_node = slicer.util.loadVolume(str(case / "ct.nii.gz"))
                settings = CRCSegmentationSettings(
                    model="/models/agcrc_bundle",  # or a catalogue name
                    guidance_source="compute",
                    organ_guidance=OrganGuidanceSettings(primary=OrganSourceChoice(
                        kind="file", file_path=str(case / "organs.nii.gz"), convention="totalsegmentator")))
                try:
                    segmentation = logic.process(ct_node, settings)
                    logic.export(segmentation, case / "tumor")
                except Exception as error:  # one bad case must not stop the batch
                    print(f"{case.name}: {error}")
                slicer.mrmlScene.Clear()
        """
        settings = settings or CRCSegmentationSettings()
        self.messages = []
        job = self.prepare(ct_node, settings)
        result = self.compute(job, progress=progress)
        segmentation = self.apply(job, result, output_node)
        self.messages = list(job.messages)
        for message in job.messages:  # the console shows logged warnings; the panel shows them in its done text
            logger.warning("%s: %s", node_name(ct_node), message)
        return segmentation

    def export(self, segmentation_node, folder, base_name: Optional[str] = None) -> ExportedFiles:
        """``.seg.nrrd`` (all segments), NIfTI tumor label map on the CT grid, statistics CSV."""
        reference_node = reference_ct(segmentation_node, "cannot export a label map on its grid")
        return export_segmentation(segmentation_node, folder, image_from_volume_node(reference_node), base_name)

    def export_dicom(self, segmentation_node, folder, model_name: str = "", file_for_instance=None,
                     types: Sequence[str] = tuple(DICOM_FILE_ENDINGS)):
        """DICOM SEG, RTSTRUCT and SR of ``segmentation_node`` referencing its CT's DICOM series (``dicom_mrml``)."""
        from CRCSegmentationLib.dicom_mrml import export_to_dicom

        reference_node = reference_ct(segmentation_node, "cannot export DICOM that references its series")
        return export_to_dicom(reference_node, segmentation_node, folder, types, model_name or "SlicerCRC",
                               model_version(model_name), file_for_instance)

    # --- helpers ------------------------------------------------------------------
    @staticmethod
    def _convention(settings: CRCSegmentationSettings) -> LabelConvention:
        try:
            return load_convention(settings.convention)
        except (ValueError, ImportError) as error:
            raise InputError(f"organ guidance: {error}") from error


def model_version(name: str) -> str:
    """The catalogue version of model ``name``; "" for a folder or a name the catalogue does not hold."""
    from CRCSegmentationLib.core.errors import ModelError
    from CRCSegmentationLib.models.catalogue import find_model

    try:
        return str(find_model(name).version) if name else ""
    except (ModelError, KeyError, ValueError):
        return ""


def model_choices() -> Sequence[Tuple[str, str]]:
    """(name, description) of the catalogue models, demonstration models marked; [] when the catalogue is unavailable."""
    try:
        from CRCSegmentationLib.models.catalogue import list_models
    except ImportError:
        return []
    choices = []
    for entry in list_models():
        description = getattr(entry, "description", "")
        if getattr(entry, "demonstration", False):
            description = f"{description} (demonstration model, not for clinical use)".strip()
        choices.append((entry.name, description))
    return choices
