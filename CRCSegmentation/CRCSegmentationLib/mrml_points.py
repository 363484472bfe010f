"""MRML glue of point refinement: point lists (markups) and slice-limited updates of the tumor segment.

Like ``mrml.py``: no Qt and no ``slicer.mrmlScene``, so it runs inside Slicer and under
``slicer-core``. The tumor segment is edited only on the refined axial slices: the
segment's voxels are read on the CT grid over its own extent plus those slices, the
refined slices replaced, and the result set back with
``vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment``; every other voxel keeps
its value (Testing/test_usam_mrml.py compares the full labelmaps).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import slicer
import vtk

from CRCSegmentationLib.mrml import TUMOR_SEGMENT_NAME, tumor_segment_id, tumor_to_segmentation_node
from OrganGuidanceLib.crop import CropBox
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.morphology import bounding_box
from OrganGuidanceLib.mrml import array_from_oriented, node_name, oriented_image, vtk_matrix
from OrganGuidanceLib.validation import InputError

POINT_ROLE_ATTRIBUTE = "CRCSegmentation.PointRole"  # node attribute: "positive" | "negative"
POINT_ROLES = {  # role -> (node name, colour, SAM label)
    "positive": ("Tumor points (+)", (0.15, 0.80, 0.20), 1),  # green
    "negative": ("Not tumor points (-)", (0.90, 0.15, 0.15), 0),  # red
}


# --- point lists ----------------------------------------------------------------
def point_list_node(scene, role: str, create: bool = True):
    """The scene's positive or negative point list (found by its role attribute), created when missing."""
    if role not in POINT_ROLES:
        raise InputError(f"point role: {role!r} is not one of {sorted(POINT_ROLES)}")
    nodes = scene.GetNodesByClass("vtkMRMLMarkupsFiducialNode")
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if node.GetAttribute(POINT_ROLE_ATTRIBUTE) == role:
            return node
    if not create:
        return None
    name, color, _ = POINT_ROLES[role]
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", scene.GenerateUniqueName(name))
    node.SetAttribute(POINT_ROLE_ATTRIBUTE, role)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:  # Slicer builds may lack markups display nodes without the markups module
        display.SetSelectedColor(*color)  # the colour control points are drawn with
        display.SetColor(*color)
        display.SetActiveColor(*color)
    return node


def defined_points_ras(node, ct_node=None) -> np.ndarray:
    """N x 3 RAS of the node's placed points (being-placed points skipped), in ``ct_node``'s coordinates.

    World positions (the markups' own transform applied) are brought into the CT's local
    RAS when the CT is under a transform, so they match the CT's IJK-to-RAS.
    """
    if node is None:
        return np.zeros((0, 3))
    to_ct = None
    if ct_node is not None and ct_node.GetParentTransformNode() is not None:
        to_ct = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, ct_node.GetParentTransformNode(), to_ct)
    points = []
    for index in range(node.GetNumberOfControlPoints()):
        if node.GetNthControlPointPositionStatus(index) != slicer.vtkMRMLMarkupsNode.PositionDefined:
            continue
        world = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(index, world)
        points.append(to_ct.TransformPoint(world) if to_ct is not None else world)
    return np.array(points, dtype=float).reshape(-1, 3)


def prompt_points(positive_node, negative_node, ct_node=None, last_role: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """RAS points and SAM labels (1 / 0) of both lists; the last placed point last.

    ``last_role`` names the list that just received a point: its last point goes to the
    end, since the engine refines the slice of the last point.
    """
    parts = {role: defined_points_ras(node, ct_node) for role, node in (("positive", positive_node), ("negative", negative_node))}
    order = ["negative", "positive"] if last_role != "negative" else ["positive", "negative"]
    points = np.concatenate([parts[role] for role in order])
    labels = np.concatenate([np.full(len(parts[role]), POINT_ROLES[role][2], np.int64) for role in order])
    return points, labels


# --- slice-limited segment update -------------------------------------------------
def _slab_geometry(reference: Image, k_first: int, k_last: int) -> "slicer.vtkOrientedImageData":
    geometry = slicer.vtkOrientedImageData()
    geometry.SetImageToWorldMatrix(vtk_matrix(reference.index_to_ras))
    nz, ny, nx = reference.shape
    geometry.SetExtent(0, nx - 1, 0, ny - 1, int(k_first), int(k_last))
    return geometry


def read_segment_slices(segmentation_node, segment_id: str, reference: Image, slice_indices: Iterable[int]) -> Dict[int, np.ndarray]:
    """Current mask (rows x cols, bool) of the segment on each axial slice of ``reference``'s grid."""
    indices = sorted({int(k) for k in slice_indices})
    if not indices:
        return {}
    nz, ny, nx = reference.shape
    if indices[0] < 0 or indices[-1] >= nz:
        raise InputError(f"slices {indices}: outside the {nz} axial slices of {reference.name}")
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    labelmap = slicer.vtkOrientedImageData()
    empty = {k: np.zeros((ny, nx), bool) for k in indices}
    if segment is None or not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            segmentation_node, segment_id, labelmap, False) or labelmap.IsEmpty():
        return empty
    slab = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            labelmap, _slab_geometry(reference, indices[0], indices[-1]), slab, False, False):
        raise InputError(f"{node_name(segmentation_node)}: segment {segment.GetName()!r} cannot be resampled to {reference.name}")
    array = array_from_oriented(slab) == segment.GetLabelValue()  # (k_last - k_first + 1) x ny x nx
    return {k: array[k - indices[0]].copy() for k in indices}


def _segment_extent_on_grid(segmentation_node, segment_id: str, reference: Image) -> Tuple[int, ...]:
    """The segment's voxel extent (x0, x1, y0, y1, z0, z1) on ``reference``'s grid, clipped; the full grid when
    the segment's labelmap lies on another grid (then its voxels are resampled once)."""
    nz, ny, nx = reference.shape
    full = (0, nx - 1, 0, ny - 1, 0, nz - 1)
    labelmap = slicer.vtkOrientedImageData()
    if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            segmentation_node, segment_id, labelmap, False) or labelmap.IsEmpty():
        return ()
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    same_grid = np.allclose([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], reference.index_to_ras, atol=1e-5)
    if not same_grid:
        return full
    extent = labelmap.GetExtent()
    clipped = tuple(max(extent[2 * a], 0) if e == 0 else min(extent[2 * a + 1], full[2 * a + 1])
                    for a in range(3) for e in range(2))
    return clipped if all(clipped[2 * a] <= clipped[2 * a + 1] for a in range(3)) else ()


def read_segment_tumor_box(segmentation_node, segment_id: str, reference: Image) -> Image:
    """The segment on ``reference``'s grid, cropped to the bounding box of its voxels (uint8 0/1).

    Reads only the slices of the segment's own extent, not the whole volume: it runs after
    every click. An empty segment gives an empty 1 x 1 x 1 image at the grid's first voxel.
    """
    start, stop, values = (0, 0, 0), (1, 1, 1), np.zeros((1, 1, 1), np.uint8)
    own = _segment_extent_on_grid(segmentation_node, segment_id, reference)
    if own:
        masks = read_segment_slices(segmentation_node, segment_id, reference, range(own[4], own[5] + 1))
        slab = np.stack([masks[k] for k in sorted(masks)])
        box = bounding_box(slab)
        if box is not None:
            values = slab[box].astype(np.uint8)
            start = (box[0].start + own[4], box[1].start, box[2].start)
            stop = (box[0].stop + own[4], box[1].stop, box[2].stop)
    # The crop's geometry from a zero-cost stand-in of the full grid; the voxels are ``values``.
    geometry = CropBox(start, stop, reference.shape).apply(
        reference.with_array(np.broadcast_to(np.uint8(0), reference.shape), "Tumor"))
    return geometry.with_array(values, "Tumor")


def write_segment_slices(segmentation_node, segment_id: str, reference: Image, masks: Dict[int, np.ndarray]) -> None:
    """Replace the segment on the given axial slices only; every other voxel of it keeps its value.

    Slicer's ``SetBinaryLabelmapToSegment`` (MODE_REPLACE) replaces a whole segment, its
    ``extent`` only crops the input: so the segment's current voxels over the union of
    its own extent and the refined slices are read, those slices replaced, and the
    result written back (Slicer shrinks it to its effective extent).
    """
    if not masks:
        return
    nz, ny, nx = reference.shape
    indices = sorted(int(k) for k in masks)
    if indices[0] < 0 or indices[-1] >= nz:
        raise InputError(f"slices {indices}: outside the {nz} axial slices of {reference.name}")
    for k in indices:
        if np.shape(masks[k]) != (ny, nx):
            raise InputError(f"slice {k}: mask shape {np.shape(masks[k])} does not match the slice shape {(ny, nx)}")
    own = _segment_extent_on_grid(segmentation_node, segment_id, reference)
    z0 = min([indices[0]] + ([own[4]] if own else []))
    z1 = max([indices[-1]] + ([own[5]] if own else []))
    # Whole slices from z0 to z1: the refined ones need all their pixels anyway.
    current = read_segment_slices(segmentation_node, segment_id, reference, range(z0, z1 + 1))
    slab = np.stack([np.asarray(masks[k], bool) if k in masks else current[k] for k in range(z0, z1 + 1)])
    image = oriented_image(slab.astype(np.uint8), reference.index_to_ras, (0, 0, z0))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(image, segmentation_node, segment_id, logic.MODE_REPLACE):
        raise InputError(f"{node_name(segmentation_node)}: the tumor segment could not be updated on slices {indices}")


def ensure_tumor_segment(scene, segmentation_node, ct_node, reference: Image):
    """(segmentation node, tumor segment ID): the existing "Tumor" segment, else an empty one is created.

    ``segmentation_node`` None creates a new segmentation (refinement from scratch).
    """
    if segmentation_node is not None:
        try:
            return segmentation_node, tumor_segment_id(segmentation_node)
        except InputError:
            pass  # no tumor segment yet: add an empty one below, other segments are kept
    empty = reference.with_array(np.zeros(reference.shape, np.uint8), TUMOR_SEGMENT_NAME)
    node = tumor_to_segmentation_node(scene, empty, ct_node, segmentation_node, reference)
    return node, tumor_segment_id(node)


def segment_slice_indices_with_tumor(segmentation_node, segment_id: str, reference: Image) -> List[int]:
    """Axial slices where the segment has voxels (for scripts and tests)."""
    masks = read_segment_slices(segmentation_node, segment_id, reference, range(reference.shape[0]))
    return [k for k, mask in masks.items() if mask.any()]
