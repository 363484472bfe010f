"""Prompted refinement of the "Tumor" segment in the scene with U-SAM (``PointRefinementLogic``).

A prompt (points, a box, scribbles, a lasso: ``usam.refinement.SlicePoints``, or the markups nodes
``mrml_points.gather_prompt`` turns into one) refines the segment on its axial slice and, by default,
is carried up and down to the tumor's ends (``InteractiveSegmenter.prompt_to_3d``); the segment as
it is (e.g. the automatic result) is the starting point. Like a run, a prompt and a propagation come
in three steps (``prepare_*`` reads MRML on the main thread, ``compute_*`` runs U-SAM in any thread,
``apply_*`` writes); ``prompt`` / ``propagate`` chain them, blocking. Only the slices that changed are
written, and each write is one step of an unlimited undo/redo history that keeps just those slices,
before and after, bit-packed: ``undo`` restores the segment voxel for voxel, ``redo`` re-applies it.
The engine (``usam``, ``mrml_points``, ``statistics``) is imported on use: it needs PyTorch.
"""
from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from CRCSegmentationLib.mrml import STATISTICS_REFERENCE_ROLE, statistics_to_table_node
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.mrml import image_from_volume_node, node_name, register_segmentation_converter_rules
from OrganGuidanceLib.progress import ProgressCallback
from OrganGuidanceLib.validation import InputError

NO_MODEL = ("U-SAM model: no file chosen; choose a catalogue U-SAM model (e.g. demo_usam_phantom) "
            "or a trained U-SAM checkpoint (.pt) or bundle folder")


@dataclass
class PropagationJob:
    """What ``compute_propagation`` needs, read on the main thread by ``prepare_propagation``."""

    ct_node: Any
    segmentation_node: Any
    image: Any  # OrganGuidanceLib.image.Image
    seed: int
    seed_mask: Any  # bool rows x cols
    settings: Any  # usam.refinement.PropagationSettings or None
    volume: Any
    modified: Any


@dataclass
class PromptJob:
    """What ``compute_prompt`` needs, read on the main thread by ``prepare_prompt``."""

    ct_node: Any
    segmentation_node: Any
    image: Any  # OrganGuidanceLib.image.Image
    prompt: Any  # usam.refinement.SlicePoints
    to_3d: bool
    settings: Any  # usam.refinement.PropagationSettings
    existing: Any  # usam.existing_mask.ExistingMask: the segment over the slices the prompt can reach
    volume: Any
    modified: Any


@dataclass
class PackedSlices:
    """Axial slices of a mask, bit-packed (``np.packbits``, 1 bit a voxel) and deflated.

    A 512 x 512 slice is 32 KB packed and typically well under 1 KB deflated (masks are mostly empty).
    """

    shape: Tuple[int, int]  # rows x cols of every slice
    data: Dict[int, bytes]

    @classmethod
    def pack(cls, masks: Dict[int, np.ndarray], shape: Tuple[int, int]) -> "PackedSlices":
        return cls(tuple(shape), {int(k): zlib.compress(np.packbits(np.asarray(m, bool)).tobytes(), 1)
                                  for k, m in masks.items()})

    def unpack(self) -> Dict[int, np.ndarray]:
        size = self.shape[0] * self.shape[1]
        return {k: np.unpackbits(np.frombuffer(zlib.decompress(b), np.uint8), count=size).reshape(self.shape) > 0
                for k, b in self.data.items()}

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.data.values())


@dataclass
class RefinementStep:
    """One write to the segment, for undo and redo: the slices it changed, before and after."""

    action: str  # "prompt", "refinement", "propagation"
    segmentation_node_id: str
    segment_id: str
    reference: Image  # the CT's grid (geometry only: a zero-cost array), where the slices lie
    before: PackedSlices
    after: PackedSlices

    @property
    def slice_indices(self) -> List[int]:
        return sorted(self.after.data)


def grid_only(image: Image) -> Image:
    """``image``'s geometry with a broadcast array (no voxel memory): what writing slices needs."""
    return image.with_array(np.broadcast_to(np.uint8(0), image.shape), image.name)


class PointRefinementLogic:
    """Prompted refinement of the "Tumor" segment with U-SAM: a prompt refines its slice, then 3D by default.

    Works on top of an automatic "Tumor" segment (its slices are the starting state) or from
    scratch (an empty "Tumor" segment is created). Only changed slices of the segment are written
    (``mrml_points.write_segment_slices``); every write can be undone and redone, any number of steps
    (``undo_depth``: None keeps them all). ``model`` is any U-SAM object (``usam.USAM``: a catalogue
    model, bundle or checkpoint via ``load_model``, or, for scripts and tests, any model with its
    ``encode_image`` / ``decode``).
    """

    def __init__(self, scene, model: Any = None, device: str = "cpu", undo_depth: Optional[int] = None) -> None:
        self.scene = scene
        self.undo_depth = None if undo_depth is None else int(undo_depth)
        self.undo_stack: List[RefinementStep] = []
        self.redo_stack: List[RefinementStep] = []
        self.last_slice: Optional[int] = None  # slice of the last prompt, the default seed of ``propagate``
        self.segmenter = None
        self._image: Optional[Tuple[Tuple[str, int], Image]] = None  # the last CT read, by (node ID, voxel MTime)
        register_segmentation_converter_rules()
        if model is not None:
            self.set_model(model, device)

    def set_model(self, model: Any, device: str = "cpu") -> None:
        from CRCSegmentationLib.usam.refinement import InteractiveSegmenter

        self.segmenter = InteractiveSegmenter(model, device)

    def reset(self) -> None:
        """Forget the history, the last slice and cached encodings (e.g. the scene was closed); keep the model."""
        self.undo_stack = []
        self.redo_stack = []
        self.last_slice = None
        self._image = None
        if self.segmenter is not None:
            self.segmenter.cache.clear()

    def load_model(self, source: Any, device: str = "auto") -> None:
        """A U-SAM model: a catalogue name (``demo_usam_phantom``), a bundle folder or a ``.pt`` checkpoint.

        InputError when nothing is chosen; ``ModelError`` (an InputError) when it is missing, corrupt or
        not a U-SAM model (random init is not offered).
        """
        text = str(source or "").strip()
        if not text:
            raise InputError(NO_MODEL)
        from CRCSegmentationLib.models.usam import load_usam_model
        from OrganGuidanceLib.device import resolve_device

        device = resolve_device(device).type
        self.set_model(load_usam_model(text, device), device)

    @property
    def can_undo(self) -> bool:
        return bool(self.undo_stack)

    @property
    def can_redo(self) -> bool:
        return bool(self.redo_stack)

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
        from CRCSegmentationLib.mrml_points import prompt_points

        image, (volume, modified) = self._volume(ct_node)
        points, labels = prompt_points(positive_node, negative_node, ct_node, last_role)
        result = self.segmenter.refine(image, points, labels, slice_index, volume, modified)
        node = self._write(ct_node, segmentation_node, image, result.slices, "refinement")
        self.last_slice = result.seed_slice
        return node, result

    def prepare_propagation(self, ct_node, segmentation_node, slice_index: Optional[int] = None,
                            settings: Any = None) -> "PropagationJob":
        """Main thread: read the CT and the seed slice of the tumor (no model runs here)."""
        from CRCSegmentationLib.mrml import tumor_segment_id
        from CRCSegmentationLib.mrml_points import read_segment_slices

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
        return self._write(job.ct_node, job.segmentation_node, job.image, result.slices, "propagation"), result

    def propagate(self, ct_node, segmentation_node, slice_index: Optional[int] = None, settings: Any = None,
                  cancel: Optional[threading.Event] = None, progress: Optional[ProgressCallback] = None):
        """Carry the tumor of ``slice_index`` (default: the last refined slice) to its neighbours, blocking."""
        job = self.prepare_propagation(ct_node, segmentation_node, slice_index, settings)
        return self.apply_propagation(job, self.compute_propagation(job, cancel, progress))

    # --- prompts (points, box, scribble, lasso), 2D or to 3D ----------------------------
    def prepare_prompt(self, ct_node, segmentation_node, prompt: Any, to_3d: bool = True,
                       settings: Any = None) -> PromptJob:
        """Main thread: the CT, the prompt and the segment over the slices the prompt can reach (no model runs).

        ``prompt``: a ``SlicePoints``, or markups nodes (point lists, ROI, curves: a node or a sequence)
        gathered on one slice by ``mrml_points.gather_prompt``.
        """
        from CRCSegmentationLib.usam.refinement import PropagationSettings, SlicePoints

        image, (volume, modified) = self._volume(ct_node)
        if not isinstance(prompt, SlicePoints):
            from CRCSegmentationLib.mrml_points import gather_prompt

            nodes = list(prompt) if isinstance(prompt, (list, tuple)) else [prompt]
            prompt = gather_prompt(image, nodes, ct_node)
        k = prompt.slice_index
        if not 0 <= k < image.shape[0]:
            raise InputError(f"prompt: slice {k} is outside the {image.shape[0]} axial slices of {image.name}")
        settings = (settings or PropagationSettings()).checked()
        reach = int(np.floor(settings.max_distance_mm / image.spacing[2] + 1e-6)) if to_3d else 0
        existing = self._existing(segmentation_node, image, max(0, k - reach), min(image.shape[0] - 1, k + reach))
        return PromptJob(ct_node, segmentation_node, image, prompt, bool(to_3d), settings, existing, volume, modified)

    def compute_prompt(self, job: PromptJob, cancel: Optional[threading.Event] = None,
                       progress: Optional[ProgressCallback] = None):
        """Any thread, no MRML: the prompted slice (and with ``to_3d`` the walk up and down); changed slices only."""
        from CRCSegmentationLib.usam.refinement import RefinementResult

        if job.to_3d:
            return self.segmenter.prompt_to_3d(job.image, job.prompt, job.existing, job.settings, job.volume,
                                               job.modified, progress=progress, cancel=cancel)
        k = job.prompt.slice_index
        before = job.existing.slice(k)
        mask = self.segmenter.segment_prompt(job.image, job.prompt, before, job.volume, job.modified)
        result = RefinementResult(seed_slice=k)
        if not np.array_equal(mask, before):
            result.slices[k] = mask
        return result

    def apply_prompt(self, job: PromptJob, result):
        """Main thread: write the changed slices as one undo step; (segmentation node, result)."""
        node = self._write(job.ct_node, job.segmentation_node, job.image, result.slices, "prompt")
        self.last_slice = result.seed_slice
        return node, result

    def prompt(self, ct_node, segmentation_node, prompt: Any, to_3d: bool = True, settings: Any = None,
               cancel: Optional[threading.Event] = None, progress: Optional[ProgressCallback] = None):
        """Refine the segment with one prompt (to 3D by default), blocking; (segmentation node, result)."""
        job = self.prepare_prompt(ct_node, segmentation_node, prompt, to_3d, settings)
        return self.apply_prompt(job, self.compute_prompt(job, cancel, progress))

    def _existing(self, segmentation_node, image: Image, first: int, last: int):
        """The tumor segment on slices ``first``..``last`` (an ``ExistingMask``; empty without a segment)."""
        from CRCSegmentationLib.mrml import tumor_segment_id
        from CRCSegmentationLib.mrml_points import read_segment_slices
        from CRCSegmentationLib.usam.existing_mask import ExistingMask

        segment_id = None
        if segmentation_node is not None:
            try:
                segment_id = tumor_segment_id(segmentation_node)
            except InputError:
                pass  # no tumor segment yet: the prompt starts from nothing
        if segment_id is None:
            return ExistingMask(image.shape, np.zeros((0,) + tuple(image.shape[1:]), bool), 0)
        masks = read_segment_slices(segmentation_node, segment_id, image, range(first, last + 1))
        return ExistingMask(image.shape, np.stack([masks[k] for k in range(first, last + 1)]), first)

    # --- history ---------------------------------------------------------------------
    def undo(self) -> bool:
        """Restore the slices the last step changed; False when there is nothing to undo."""
        return self._travel(self.undo_stack, self.redo_stack, "before")

    def redo(self) -> bool:
        """Re-apply the last undone step; False when there is nothing to redo."""
        return self._travel(self.redo_stack, self.undo_stack, "after")

    def _travel(self, source: List[RefinementStep], target: List[RefinementStep], side: str) -> bool:
        from CRCSegmentationLib.mrml_points import write_segment_slices

        while source:
            step = source.pop()
            node = self.scene.GetNodeByID(step.segmentation_node_id)
            if node is None or node.GetSegmentation().GetSegment(step.segment_id) is None:
                continue  # its segmentation or segment was removed: nothing to restore there
            write_segment_slices(node, step.segment_id, step.reference, getattr(step, side).unpack())
            self._refresh_statistics(node, step.segment_id, step.reference)
            target.append(step)
            return True
        return False

    def _write(self, ct_node, segmentation_node, image: Image, masks: Dict[int, Any], action: str):
        """Write the slices of ``masks`` that differ from the segment, as one undo step; the segmentation node."""
        from CRCSegmentationLib.dicom_mrml import mark_refined
        from CRCSegmentationLib.mrml_points import ensure_tumor_segment, read_segment_slices, write_segment_slices

        node, segment_id = ensure_tumor_segment(self.scene, segmentation_node, ct_node, image)
        if masks:
            previous = read_segment_slices(node, segment_id, image, masks)
            changed = {k: np.asarray(m, bool) for k, m in masks.items() if not np.array_equal(previous[k], m)}
            if changed:
                write_segment_slices(node, segment_id, image, changed)
                mark_refined(node, segment_id)  # its DICOM export says SEMIAUTOMATIC
                shape = tuple(image.shape[1:])
                before = PackedSlices.pack({k: previous[k] for k in changed}, shape)
                self.undo_stack.append(RefinementStep(action, node.GetID(), segment_id, grid_only(image), before,
                                                      PackedSlices.pack(changed, shape)))
                self.redo_stack = []  # a new step ends the undone branch
                if self.undo_depth is not None:
                    del self.undo_stack[:-self.undo_depth]
                self._refresh_statistics(node, segment_id, image)
        return node

    def _refresh_statistics(self, segmentation_node, segment_id: str, image: Image) -> None:
        """The segmentation's statistics table (as the automatic run writes it) for the refined tumor."""
        from CRCSegmentationLib.measurement.statistics import tumor_statistics
        from CRCSegmentationLib.mrml_points import read_segment_tumor_box

        # Statistics do not depend on the grid's extent: the tumor's bounding box is enough.
        mask = read_segment_tumor_box(segmentation_node, segment_id, image)
        previous = segmentation_node.GetNodeReference(STATISTICS_REFERENCE_ROLE)
        table = statistics_to_table_node(self.scene, tumor_statistics(mask),
                                         f"{node_name(segmentation_node)} statistics", previous)
        segmentation_node.SetNodeReferenceID(STATISTICS_REFERENCE_ROLE, table.GetID())
