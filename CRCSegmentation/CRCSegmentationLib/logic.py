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
``PointRefinementLogic`` refines the "Tumor" segment afterwards (or from scratch) with
U-SAM point prompts, slice by slice, with propagation and undo (main thread: a click is
one decoder pass on a cached slice encoding). The engine
(``inference``, ``catalogue``, ``statistics``) is imported on use: it needs PyTorch
and nnU-Net, which may be installed only after the module has loaded.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from OrganGuidanceLib.guidance import GuidanceResult
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.labels import LabelConvention, load_convention
from OrganGuidanceLib.logic import GuidanceJob, OrganGuidanceLogic, OrganGuidanceSettings
from OrganGuidanceLib.mrml import image_from_volume_node, node_name, register_segmentation_converter_rules
from OrganGuidanceLib.providers import RunCancelled
from OrganGuidanceLib.validation import InputError

from .mrml import (
    STATISTICS_REFERENCE_ROLE,
    ExportedFiles,
    export_segmentation,
    guidance_from_segmentation_node,
    statistics_to_table_node,
    tumor_to_segmentation_node,
)

logger = logging.getLogger(__name__)
ProgressCallback = Callable[[str, Optional[float]], None]  # (stage, fraction 0..1, None while unknown)

GUIDANCE_SOURCES = ("scene", "compute", "none")  # "none" only for CT-only models
GUIDANCE_SHARE = 0.3  # of the progress bar when organ guidance runs first (without TotalSegmentator: seconds)


def _default_segmentation_parameters():
    from .inference import SegmentationParameters

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
    model: Any  # model_source.ModelSource
    guidance: Optional[GuidanceResult] = None  # read from the scene
    guidance_job: Optional[GuidanceJob] = None  # organ guidance to compute first
    messages: List[str] = field(default_factory=list)  # warnings for the user
    slice_filter_model: Any = None  # model_source.ModelSource of the slice filter, when one is chosen


@dataclass
class PropagationJob:
    """What ``compute_propagation`` needs, read on the main thread by ``prepare_propagation``."""

    ct_node: Any
    segmentation_node: Any
    image: Any  # OrganGuidanceLib.image.Image
    seed: int
    seed_mask: Any  # bool rows x cols
    settings: Any  # interactive.PropagationSettings or None
    volume: Any
    modified: Any


class CRCSegmentationLogic:
    """CT (+ organ guidance) -> tumor segment + statistics, for one CT node at a time."""

    def __init__(self, scene) -> None:
        from .model_cache import ModelCache

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
            from .slice_filter import check_filter_model

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
        from .statistics import tumor_statistics

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
        from .slice_filter import SliceFilter

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
        role = segmentation_node.GetReferenceImageGeometryReferenceRole()
        reference_node = segmentation_node.GetNodeReference(role)
        if reference_node is None or not reference_node.IsA("vtkMRMLScalarVolumeNode"):
            raise InputError(f"{node_name(segmentation_node)}: has no reference CT volume; cannot export a label map on its grid")
        return export_segmentation(segmentation_node, folder, image_from_volume_node(reference_node), base_name)

    # --- helpers ------------------------------------------------------------------
    @staticmethod
    def _convention(settings: CRCSegmentationSettings) -> LabelConvention:
        try:
            return load_convention(settings.convention)
        except (ValueError, ImportError) as error:
            raise InputError(f"organ guidance: {error}") from error


def model_choices() -> Sequence[Tuple[str, str]]:
    """(name, description) of the catalogue models, demonstration models marked; [] when the catalogue is unavailable."""
    try:
        from .catalogue import list_models
    except ImportError:
        return []
    choices = []
    for entry in list_models():
        description = getattr(entry, "description", "")
        if getattr(entry, "demonstration", False):
            description = f"{description} (demonstration model, not for clinical use)".strip()
        choices.append((entry.name, description))
    return choices


# --- point-prompted refinement (U-SAM) ----------------------------------------------
@dataclass
class RefinementStep:
    """What one refinement changed, for undo: the previous masks of the slices it replaced."""

    segmentation_node_id: str
    segment_id: str
    previous: Dict[int, Any]  # slice index -> previous mask (rows x cols, bool)


class PointRefinementLogic:
    """Point-prompted refinement of the "Tumor" segment with U-SAM, one axial slice per click.

    Works on top of an automatic "Tumor" segment (its slices are the starting state) or
    from scratch (an empty "Tumor" segment is created). Only the refined slices of the
    segment are written (``mrml_points.write_segment_slices``); each write is undoable.
    ``model`` is any U-SAM object (``usam.USAM``: a trained checkpoint via ``load_model``,
    or, for scripts and tests, any model with its ``encode_image`` / ``decode``).
    """

    def __init__(self, scene, model: Any = None, device: str = "cpu", undo_depth: int = 20) -> None:
        self.scene = scene
        self.undo_depth = int(undo_depth)
        self.undo_stack: List[RefinementStep] = []
        self.last_slice: Optional[int] = None  # slice of the last click, the default seed of ``propagate``
        self.segmenter = None
        self._image: Optional[Tuple[Tuple[str, int], Image]] = None  # the last CT read, by (node ID, voxel MTime)
        register_segmentation_converter_rules()
        if model is not None:
            self.set_model(model, device)

    def set_model(self, model: Any, device: str = "cpu") -> None:
        from .interactive import InteractiveSegmenter

        self.segmenter = InteractiveSegmenter(model, device)

    def reset(self) -> None:
        """Forget undo steps, the last slice and cached encodings (e.g. the scene was closed); keep the model."""
        self.undo_stack = []
        self.last_slice = None
        self._image = None
        if self.segmenter is not None:
            self.segmenter.cache.clear()

    def load_model(self, checkpoint: str, device: str = "auto") -> None:
        """A trained U-SAM checkpoint; InputError when the path is empty or missing (random init is not offered)."""
        path = Path(str(checkpoint or "")).expanduser()
        if not str(checkpoint or "").strip():
            raise InputError("U-SAM checkpoint: no file chosen; choose a trained U-SAM checkpoint (.pt)")
        if not path.is_file():
            raise InputError(f"U-SAM checkpoint: {path} does not exist")
        from OrganGuidanceLib.device import resolve_device

        from .usam import load_usam_checkpoint

        device = resolve_device(device).type
        self.set_model(load_usam_checkpoint(path, device=device), device)

    # --- main thread (MRML) ----------------------------------------------------------
    def _volume(self, ct_node) -> Tuple[Image, Tuple[str, int]]:
        if self.segmenter is None:
            raise InputError("U-SAM: no model loaded; choose a trained U-SAM checkpoint")
        if ct_node is None or not ct_node.IsA("vtkMRMLScalarVolumeNode") or ct_node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise InputError("CT: no CT volume selected")
        # The voxels' modification time: a changed CT gets new encodings (see embedding_cache).
        key = (ct_node.GetID(), int(ct_node.GetImageData().GetMTime()))
        if self._image is None or self._image[0] != key:  # a clinical CT is 100+ MB: copy it once, not per click
            self._image = (key, image_from_volume_node(ct_node))
        return self._image[1], key

    def refine(self, ct_node, segmentation_node, positive_node, negative_node, last_role: Optional[str] = None,
               slice_index: Optional[int] = None):
        """Refine the slice of the last placed point from the points on it; returns (segmentation node, result)."""
        from .mrml_points import prompt_points

        image, (volume, modified) = self._volume(ct_node)
        points, labels = prompt_points(positive_node, negative_node, ct_node, last_role)
        result = self.segmenter.refine(image, points, labels, slice_index, volume, modified)
        node = self._write(ct_node, segmentation_node, image, result.slices)
        self.last_slice = result.seed_slice
        return node, result

    def prepare_propagation(self, ct_node, segmentation_node, slice_index: Optional[int] = None,
                            settings: Any = None) -> "PropagationJob":
        """Main thread: read the CT and the seed slice of the tumor (no model runs here)."""
        from .mrml import tumor_segment_id
        from .mrml_points import read_segment_slices

        image, (volume, modified) = self._volume(ct_node)
        seed = self.last_slice if slice_index is None else int(slice_index)
        if seed is None:
            raise InputError("propagation: refine a slice first (place a point on the tumor) or give a slice index")
        if segmentation_node is None:
            raise InputError("propagation: no segmentation with a 'Tumor' segment")
        seed_mask = read_segment_slices(segmentation_node, tumor_segment_id(segmentation_node), image, [seed])[seed]
        return PropagationJob(ct_node, segmentation_node, image, seed, seed_mask, settings, volume, modified)

    def compute_propagation(self, job: "PropagationJob", cancel: Optional[threading.Event] = None,
                            progress: Optional[ProgressCallback] = None):
        """Any thread, no MRML: the U-SAM slices up and down (cancellable between slices)."""
        return self.segmenter.propagate(job.image, job.seed, job.seed_mask, job.settings, job.volume, job.modified,
                                        progress=progress, cancel=cancel)

    def apply_propagation(self, job: "PropagationJob", result):
        """Main thread: write the new slices (the scene is untouched until here)."""
        return self._write(job.ct_node, job.segmentation_node, job.image, result.slices), result

    def propagate(self, ct_node, segmentation_node, slice_index: Optional[int] = None, settings: Any = None,
                  cancel: Optional[threading.Event] = None, progress: Optional[ProgressCallback] = None):
        """Carry the tumor of ``slice_index`` (default: the last refined slice) to its neighbours, blocking."""
        job = self.prepare_propagation(ct_node, segmentation_node, slice_index, settings)
        return self.apply_propagation(job, self.compute_propagation(job, cancel, progress))

    def undo(self) -> bool:
        """Restore the slices the last refinement replaced; False when there is nothing to undo."""
        from .mrml_points import write_segment_slices

        while self.undo_stack:
            step = self.undo_stack.pop()
            node = self.scene.GetNodeByID(step.segmentation_node_id)
            if node is None or node.GetSegmentation().GetSegment(step.segment_id) is None:
                continue  # its segmentation was removed: nothing to restore there
            role = node.GetReferenceImageGeometryReferenceRole()
            reference = node.GetNodeReference(role)
            if reference is None:
                raise InputError(f"{node_name(node)}: has no reference CT volume; cannot undo")
            image = image_from_volume_node(reference)
            write_segment_slices(node, step.segment_id, image, step.previous)
            self._refresh_statistics(node, step.segment_id, image)
            return True
        return False

    def _write(self, ct_node, segmentation_node, image: Image, masks: Dict[int, Any]):
        from .mrml_points import ensure_tumor_segment, read_segment_slices, write_segment_slices

        node, segment_id = ensure_tumor_segment(self.scene, segmentation_node, ct_node, image)
        if masks:
            previous = read_segment_slices(node, segment_id, image, masks)
            write_segment_slices(node, segment_id, image, masks)
            self.undo_stack.append(RefinementStep(node.GetID(), segment_id, previous))
            del self.undo_stack[:-self.undo_depth]
            self._refresh_statistics(node, segment_id, image)
        return node

    def _refresh_statistics(self, segmentation_node, segment_id: str, image: Image) -> None:
        """The segmentation's statistics table (as the automatic run writes it) for the refined tumor."""
        from .mrml_points import read_segment_tumor_box
        from .statistics import tumor_statistics

        # Statistics do not depend on the grid's extent: the tumor's bounding box is enough.
        mask = read_segment_tumor_box(segmentation_node, segment_id, image)
        previous = segmentation_node.GetNodeReference(STATISTICS_REFERENCE_ROLE)
        table = statistics_to_table_node(self.scene, tumor_statistics(mask),
                                         f"{node_name(segmentation_node)} statistics", previous)
        segmentation_node.SetNodeReferenceID(STATISTICS_REFERENCE_ROLE, table.GetID())
