"""Organ guidance in Slicer: read nodes, compute off the main thread, write nodes.

SlicerNNUnet's shape (parameters with ``is_valid``, a logic the widget receives),
but without Qt so that it runs in Slicer, under ``slicer-core`` and from the Python
console alike. The three steps keep MRML on the main thread:

- ``prepare`` (main thread) reads every node into an ``Image`` and validates;
- ``compute`` (any thread) touches no MRML: TotalSegmentator in a subprocess, then
  ``run_guidance``; it can be cancelled;
- ``apply`` (main thread) writes the segmentation (and body-crop ROI) node.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

from OrganGuidanceLib.choices import DEVICES
from OrganGuidanceLib.guidance import GuidanceParameters, GuidanceResult, MOSSource, run_guidance
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import ImageReadError
from OrganGuidanceLib.labels import LabelConvention, load_convention
from OrganGuidanceLib.mrml import (
    CROP_BOX_REFERENCE_ROLE,
    crop_box_ras,
    crop_box_to_roi_node,
    guidance_to_segmentation_node,
    image_from_volume_node,
    label_image_from_node,
    node_name,
    register_segmentation_converter_rules,
)
from OrganGuidanceLib.progress import ProgressCallback, RunCancelled
from OrganGuidanceLib.providers import (
    ImportedLabelMapProvider,
    MissingWeightsError,
    TotalSegmentatorProvider,
    check_totalsegmentator_weights,
)
from OrganGuidanceLib.validation import InputError, check_ct, check_label_map

SOURCE_KINDS = ("totalsegmentator", "node", "file", "none")
ORGAN_NODE_CLASSES = ("vtkMRMLLabelMapVolumeNode", "vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode")
TOTALSEGMENTATOR_SHARE = 0.8  # of the progress bar: TotalSegmentator takes minutes, guidance seconds


@dataclass
class OrganSourceChoice:
    """Where one multi-organ segmentation (MOS) comes from."""

    kind: str = "totalsegmentator"  # "totalsegmentator" | "node" | "file" | "none" (none only for the second source)
    node: object = None  # vtkMRMLLabelMapVolumeNode or vtkMRMLSegmentationNode when kind == "node"
    file_path: str = ""  # when kind == "file"
    convention: str = "totalsegmentator"  # "totalsegmentator" | "word" | path to a JSON mapping

    def is_valid(self, role: str = "organ source") -> Tuple[bool, str]:
        if self.kind not in SOURCE_KINDS:
            return False, f"{role}: kind '{self.kind}' is not one of {SOURCE_KINDS}"
        if self.kind == "node":
            if self.node is None:
                return False, f"{role}: no label map or segmentation node selected"
            if not any(self.node.IsA(c) for c in ORGAN_NODE_CLASSES):
                return False, f"{role}: {node_name(self.node)} is a {self.node.GetClassName()}, not a label map or segmentation"
        if self.kind == "file":
            if not self.file_path:
                return False, f"{role}: no label map file chosen"
            if not Path(self.file_path).exists():
                return False, f"{role}: file {self.file_path} does not exist"
        if self.kind in ("node", "file"):
            key = self.convention.strip().lower()
            if key not in ("totalsegmentator", "total", "ts", "word") and not Path(self.convention).is_file():
                return False, f"{role}: label convention '{self.convention}' is not 'totalsegmentator', 'word' or an existing JSON file"
        return True, ""


@dataclass
class OrganGuidanceSettings:
    """Everything a user chooses for one organ-guidance run."""

    primary: OrganSourceChoice = field(default_factory=OrganSourceChoice)
    secondary: OrganSourceChoice = field(default_factory=lambda: OrganSourceChoice(kind="none", convention="word"))
    guidance: GuidanceParameters = field(default_factory=GuidanceParameters)
    fast: bool = True  # TotalSegmentator 3 mm model: minutes on CPU
    device: str = "auto"  # one of choices.DEVICES (auto: CUDA, then MPS, then the CPU)

    def is_valid(self) -> Tuple[bool, str]:
        if self.primary.kind == "none":
            return False, "first organ source: choose TotalSegmentator, a node or a file"
        for choice, role in ((self.primary, "first organ source"), (self.secondary, "second organ source")):
            valid, reason = choice.is_valid(role)
            if not valid:
                return False, reason
        if self.primary.kind == self.secondary.kind == "totalsegmentator":
            return False, "second organ source: TotalSegmentator is already the first source"
        if self.device not in DEVICES:
            return False, f"device '{self.device}' is not one of {DEVICES}"
        valid, reason = self.guidance.is_valid()
        return valid, reason

    @property
    def choices(self) -> List[OrganSourceChoice]:
        """The sources in use, first source first."""
        return [c for c in (self.primary, self.secondary) if c.kind != "none"]


@dataclass
class GuidanceJob:
    """Everything read from the scene, so ``compute`` never touches MRML."""

    ct: Image
    ct_node_id: str
    settings: OrganGuidanceSettings
    imported_sources: list  # MOSSource already read from nodes/files, in the order of settings.choices
    messages: list = field(default_factory=list)  # warnings for the user (e.g. skipped segments)


class OrganGuidanceLogic:
    """Organ masks -> organs of interest -> bowel wall -> body crop, for one CT node at a time."""

    def __init__(self, scene) -> None:
        self.scene = scene
        register_segmentation_converter_rules()  # no-op inside Slicer; needed under slicer-core

    # --- main thread ------------------------------------------------------------
    def prepare(self, ct_node, settings: OrganGuidanceSettings) -> GuidanceJob:
        """Read the CT and imported organ masks, check them; raise ``InputError`` (or ``MissingWeightsError``)."""
        valid, reason = settings.is_valid()
        if not valid:
            raise InputError(reason)
        if ct_node is None:
            raise InputError("CT: no volume selected")
        if ct_node.IsA("vtkMRMLLabelMapVolumeNode") or ct_node.IsA("vtkMRMLSegmentationNode"):
            raise InputError(f"{node_name(ct_node)}: is a {ct_node.GetClassName()}, not a CT volume")
        ct = image_from_volume_node(ct_node)
        check_ct(ct)
        job = GuidanceJob(ct=ct, ct_node_id=ct_node.GetID(), settings=settings, imported_sources=[])
        for choice, role in zip(settings.choices, ("first organ source", "second organ source")):
            if choice.kind == "totalsegmentator":
                self._check_totalsegmentator(settings)
            else:
                job.imported_sources.append(self._read_source(choice, role, ct_node, ct, job.messages))
        return job

    def apply(self, job: GuidanceJob, result: GuidanceResult, output_node=None):
        """Write the result: a segmentation node (+ a ROI node for the body crop)."""
        ct_node = self.scene.GetNodeByID(job.ct_node_id)
        if ct_node is None:
            raise InputError(f"{job.ct.name}: the CT node was removed from the scene during the run")
        crop = result.crop_box if job.settings.guidance.body_crop else None
        if crop is not None:
            crop_box_ras(crop, job.ct)  # validate before the scene is touched
        segmentation_node = guidance_to_segmentation_node(self.scene, result, ct_node, output_node)
        if crop is not None:
            previous = segmentation_node.GetNodeReference(CROP_BOX_REFERENCE_ROLE)
            roi = crop_box_to_roi_node(self.scene, crop, job.ct, f"{node_name(ct_node)} body crop", previous)
            segmentation_node.SetNodeReferenceID(CROP_BOX_REFERENCE_ROLE, roi.GetID())
        return segmentation_node

    # --- any thread -------------------------------------------------------------
    def compute(
        self,
        job: GuidanceJob,
        cancel: Optional[threading.Event] = None,
        progress: Optional[ProgressCallback] = None,
    ) -> GuidanceResult:
        """TotalSegmentator (if chosen, in a cancellable subprocess), then ``run_guidance``. No MRML."""
        cancel = cancel or threading.Event()
        report = progress or (lambda stage, fraction: None)
        settings = job.settings
        uses_totalsegmentator = any(c.kind == "totalsegmentator" for c in settings.choices)
        offset = TOTALSEGMENTATOR_SHARE if uses_totalsegmentator else 0.0
        imported = list(job.imported_sources)
        sources: List[MOSSource] = []
        for choice in settings.choices:
            if cancel.is_set():
                raise RunCancelled("cancelled before organ guidance started")
            if choice.kind == "totalsegmentator":
                report("TotalSegmentator", 0.0)
                sources.append(
                    self._totalsegmentator(settings).segment_in_subprocess(
                        job.ct, cancel, on_output=lambda line: report(f"TotalSegmentator: {line}", None)  # None: busy, no fraction known
                    )
                )
            else:
                sources.append(imported.pop(0))

        def guidance_progress(stage: str, fraction: float) -> None:
            # run_guidance reports between its steps: the place where a cancel can stop it.
            if cancel.is_set():
                raise RunCancelled(f"cancelled during organ guidance ({stage})")
            report(stage, offset + (1.0 - offset) * fraction)

        return run_guidance(job.ct, sources, settings.guidance, guidance_progress)

    # --- console / batch ----------------------------------------------------------
    def process(self, ct_node, settings: Optional[OrganGuidanceSettings] = None, output_node=None, progress: Optional[ProgressCallback] = None):
        """Organ guidance for one CT node, blocking: ``prepare`` + ``compute`` + ``apply``.

        Returns the segmentation node (segments per organ, "Organs of interest",
        "Bowel wall"); the body-crop ROI is its ``CROP_BOX_REFERENCE_ROLE`` reference.
        A failure leaves the scene as it was. Batch example from the Slicer Python
        console, with organ masks already computed next to each CT::

            from pathlib import Path
            from OrganGuidanceLib.logic import OrganGuidanceLogic, OrganGuidanceSettings, OrganSourceChoice

            logic = OrganGuidanceLogic(slicer.mrmlScene)
            for case in sorted(Path("/data/cases").iterdir()):
                ct_node = slicer.util.loadVolume(str(case / "ct.nii.gz"))
                settings = OrganGuidanceSettings(primary=OrganSourceChoice(
                    kind="file", file_path=str(case / "organs.nii.gz"), convention="totalsegmentator"))
                segmentation = logic.process(ct_node, settings)
                slicer.util.saveNode(segmentation, str(case / "guidance.seg.nrrd"))
                slicer.mrmlScene.Clear()

        Leave ``settings`` out to run TotalSegmentator (its weights must be installed).
        """
        settings = settings or OrganGuidanceSettings()
        job = self.prepare(ct_node, settings)
        result = self.compute(job, progress=progress)
        return self.apply(job, result, output_node)

    # --- helpers ------------------------------------------------------------------
    @staticmethod
    def _totalsegmentator(settings: OrganGuidanceSettings) -> TotalSegmentatorProvider:
        return TotalSegmentatorProvider(organ_set=settings.guidance.organ_set, fast=settings.fast, device=settings.device)

    @classmethod
    def _check_totalsegmentator(cls, settings: OrganGuidanceSettings) -> None:
        # Fail now, with install instructions, rather than minutes into a background run.
        try:
            roi_subset = cls._totalsegmentator(settings).roi_subset
        except ImportError as error:
            raise MissingWeightsError(
                "TotalSegmentator is not installed: pip install TotalSegmentator "
                "(or import organ masks from a file or an existing segmentation instead)"
            ) from error
        check_totalsegmentator_weights(settings.fast, roi_subset)

    @staticmethod
    def _convention(choice: OrganSourceChoice, role: str) -> LabelConvention:
        try:
            return load_convention(choice.convention)
        except (ValueError, ImportError) as error:
            raise InputError(f"{role}: {error}") from error

    def _read_source(self, choice: OrganSourceChoice, role: str, ct_node, ct: Image, messages: list) -> MOSSource:
        convention = self._convention(choice, role)
        if choice.kind == "file":
            try:
                source = ImportedLabelMapProvider(choice.file_path, convention).segment()
            except ImageReadError as error:
                raise InputError(f"{role}: {error}") from error
        else:
            node = choice.node
            if node.GetScene() is None or self.scene.GetNodeByID(node.GetID()) is None:
                raise InputError(f"{role}: {node_name(node)} is not in the scene")
            if node.GetTransformNodeID() != ct_node.GetTransformNodeID():
                # Images are read in node coordinates, so both must share one frame.
                raise InputError(
                    f"{node_name(node)}: is under another transform than {node_name(ct_node)}; harden the transforms first"
                )
            source = MOSSource(label_image_from_node(node, ct, convention, messages), convention)
        check_label_map(source.label_map)
        return source
