"""Point-prompted refinement of the "Tumor" segment in the scene with U-SAM (``PointRefinementLogic``).

The tumour segment (from the automatic run, or a new empty one) is refined one axial slice per placed
point: a decoder pass on the slice's cached image encoding, on the main thread. Propagation carries a
refined slice to its neighbours in three steps like a run (``prepare_propagation`` reads MRML,
``compute_propagation`` runs U-SAM in any thread, ``apply_propagation`` writes); every write is undoable.
The engine (``usam``, ``mrml_points``, ``statistics``) is imported on use: it needs PyTorch.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from CRCSegmentationLib.mrml import STATISTICS_REFERENCE_ROLE, statistics_to_table_node
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.mrml import image_from_volume_node, node_name, register_segmentation_converter_rules
from OrganGuidanceLib.progress import ProgressCallback
from OrganGuidanceLib.validation import InputError


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
        from CRCSegmentationLib.usam.refinement import InteractiveSegmenter

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
        from CRCSegmentationLib.usam import load_usam_checkpoint
        from OrganGuidanceLib.device import resolve_device

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
        from CRCSegmentationLib.mrml_points import prompt_points

        image, (volume, modified) = self._volume(ct_node)
        points, labels = prompt_points(positive_node, negative_node, ct_node, last_role)
        result = self.segmenter.refine(image, points, labels, slice_index, volume, modified)
        node = self._write(ct_node, segmentation_node, image, result.slices)
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
        return self._write(job.ct_node, job.segmentation_node, job.image, result.slices), result

    def propagate(self, ct_node, segmentation_node, slice_index: Optional[int] = None, settings: Any = None,
                  cancel: Optional[threading.Event] = None, progress: Optional[ProgressCallback] = None):
        """Carry the tumor of ``slice_index`` (default: the last refined slice) to its neighbours, blocking."""
        job = self.prepare_propagation(ct_node, segmentation_node, slice_index, settings)
        return self.apply_propagation(job, self.compute_propagation(job, cancel, progress))

    def undo(self) -> bool:
        """Restore the slices the last refinement replaced; False when there is nothing to undo."""
        from CRCSegmentationLib.mrml_points import write_segment_slices

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
        from CRCSegmentationLib.mrml_points import ensure_tumor_segment, read_segment_slices, write_segment_slices

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
        from CRCSegmentationLib.measurement.statistics import tumor_statistics
        from CRCSegmentationLib.mrml_points import read_segment_tumor_box

        # Statistics do not depend on the grid's extent: the tumor's bounding box is enough.
        mask = read_segment_tumor_box(segmentation_node, segment_id, image)
        previous = segmentation_node.GetNodeReference(STATISTICS_REFERENCE_ROLE)
        table = statistics_to_table_node(self.scene, tumor_statistics(mask),
                                         f"{node_name(segmentation_node)} statistics", previous)
        segmentation_node.SetNodeReferenceID(STATISTICS_REFERENCE_ROLE, table.GetID())
