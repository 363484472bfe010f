"""MRML glue of point refinement: prompts from markups, and slice-limited updates of the tumor segment.

Prompts: point lists (fiducials, positive or negative), a ROI (a box), an open curve (a
scribble, positive or negative) and a closed curve (a lasso) each become a ``SlicePoints`` of one
axial slice (``usam.shapes``); ``gather_prompt`` merges everything placed on one slice. Markups are
read in world coordinates (their own transforms applied), brought into the CT's local RAS and to
voxel indices through the CT's full IJK-to-RAS matrix, so oblique volumes are handled.

Like ``mrml.py``: no Qt and no ``slicer.mrmlScene``, so it runs inside Slicer and under
``slicer-core``. The tumor segment is edited only on the refined axial slices: the
segment's voxels are read on the CT grid over its own extent plus those slices, the
refined slices replaced, and the result set back with
``vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment``; every other voxel keeps
its value (Testing/test_usam_mrml.py compares the full labelmaps).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import slicer
import vtk

from CRCSegmentationLib.mrml import TUMOR_SEGMENT_NAME, tumor_segment_id, tumor_to_segmentation_node
from OrganGuidanceLib.crop import CropBox
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.morphology import bounding_box
from OrganGuidanceLib.mrml import array_from_oriented, node_name, oriented_image, vtk_matrix
from OrganGuidanceLib.validation import InputError

if TYPE_CHECKING:  # the engine needs torch: imported on use
    from CRCSegmentationLib.usam.refinement import SlicePoints

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
    points = []
    for index in range(node.GetNumberOfControlPoints()):
        if node.GetNthControlPointPositionStatus(index) != slicer.vtkMRMLMarkupsNode.PositionDefined:
            continue
        world = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(index, world)
        points.append(world)
    return world_to_ct_ras(np.array(points, dtype=float).reshape(-1, 3), ct_node)


def world_to_ct_ras(points_world: np.ndarray, ct_node=None) -> np.ndarray:
    """N x 3 world RAS -> the CT's local RAS (the inverse of the CT's parent transform; none: unchanged)."""
    points_world = np.asarray(points_world, dtype=float).reshape(-1, 3)
    if ct_node is None or ct_node.GetParentTransformNode() is None or not len(points_world):
        return points_world
    to_ct = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, ct_node.GetParentTransformNode(), to_ct)
    return np.array([to_ct.TransformPoint(point) for point in points_world.tolist()], dtype=float).reshape(-1, 3)


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


# --- box, scribble and lasso nodes ------------------------------------------------------
PROMPT_ROLE_ATTRIBUTE = "CRCSegmentation.PromptRole"  # node attribute of the shape nodes: a key of SHAPE_ROLES
SHAPE_ROLES = {  # role -> (markups class, node name, colour); SAM labels: scribbles 1 / 0, lasso points 1
    "box": ("vtkMRMLMarkupsROINode", "Tumor box", (0.95, 0.80, 0.10)),  # yellow
    "scribble": ("vtkMRMLMarkupsCurveNode", "Tumor scribble (+)", POINT_ROLES["positive"][1]),
    "negative scribble": ("vtkMRMLMarkupsCurveNode", "Not tumor scribble (-)", POINT_ROLES["negative"][1]),
    "lasso": ("vtkMRMLMarkupsClosedCurveNode", "Tumor lasso", (0.20, 0.55, 1.00)),  # blue
}


def _colour(node, color: Tuple[float, float, float]) -> None:
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:  # Slicer builds may lack markups display nodes without the markups module
        display.SetSelectedColor(*color)
        display.SetColor(*color)
        display.SetActiveColor(*color)


def new_shape_node(scene, role: str):
    """A new, empty box / scribble / lasso node, named and coloured as the panel shows it."""
    if role not in SHAPE_ROLES:
        raise InputError(f"prompt shape: {role!r} is not one of {sorted(SHAPE_ROLES)}")
    class_name, name, color = SHAPE_ROLES[role]
    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    node.SetAttribute(PROMPT_ROLE_ATTRIBUTE, role)
    if node.IsA("vtkMRMLMarkupsCurveNode"):
        node.SetCurveTypeToLinear()  # the drawn polyline itself, not a spline that overshoots the strokes
    _colour(node, color)
    return node


def new_box_node(scene):
    return new_shape_node(scene, "box")


def new_scribble_node(scene, positive: bool = True):
    return new_shape_node(scene, "scribble" if positive else "negative scribble")


def new_lasso_node(scene):
    return new_shape_node(scene, "lasso")


def new_prompt_node(scene, mode: str, positive: bool = True):
    """The node a prompt mode places into (``choices.PROMPT_MODES``): the point list of "positive" /
    "negative" (one each, reused), a new ROI for "box", a new curve for "scribble" (``positive`` or not),
    a new closed curve for "lasso"."""
    if mode in POINT_ROLES:
        return point_list_node(scene, mode)
    if mode == "scribble":
        return new_scribble_node(scene, positive)
    if mode in ("box", "lasso"):
        return new_shape_node(scene, mode)
    raise InputError(f"prompt mode: {mode!r} is not one of {sorted(POINT_ROLES) + ['box', 'lasso', 'scribble']}")


def prompt_role(node) -> Optional[str]:
    """What a markups node prompts: a key of POINT_ROLES or SHAPE_ROLES (its role attribute, else its class:
    a point list is positive, a ROI a box, an open curve a positive scribble, a closed curve a lasso); None
    for any other node."""
    role = node.GetAttribute(PROMPT_ROLE_ATTRIBUTE) or node.GetAttribute(POINT_ROLE_ATTRIBUTE)
    if role in SHAPE_ROLES or role in POINT_ROLES:
        return role
    for class_name, default in (("vtkMRMLMarkupsFiducialNode", "positive"), ("vtkMRMLMarkupsROINode", "box"),
                                ("vtkMRMLMarkupsClosedCurveNode", "lasso"), ("vtkMRMLMarkupsCurveNode", "scribble")):
        if node.IsA(class_name):
            return default
    return None


def prompt_nodes(scene, last=None) -> List:
    """The scene's prompt nodes (with a point or prompt role attribute), in scene order, ``last`` (the node
    just placed) at the end: ``gather_prompt`` prompts the slice of the last node."""
    nodes = []
    markups = scene.GetNodesByClass("vtkMRMLMarkupsNode")
    for index in range(markups.GetNumberOfItems()):
        node = markups.GetItemAsObject(index)
        if node is not last and (node.GetAttribute(PROMPT_ROLE_ATTRIBUTE) or node.GetAttribute(POINT_ROLE_ATTRIBUTE)):
            nodes.append(node)
    return nodes + ([last] if last is not None else [])


def remove_shape_nodes(scene) -> int:
    """Remove the box, scribble and lasso nodes (after their prompt was applied); the point lists stay."""
    nodes = [node for node in prompt_nodes(scene) if node.GetAttribute(PROMPT_ROLE_ATTRIBUTE) in SHAPE_ROLES]
    for node in nodes:
        scene.RemoveNode(node)
    return len(nodes)


# --- markups -> voxel indices -> prompts ----------------------------------------------
def image_ijk(image: Image, points_ras: np.ndarray) -> np.ndarray:
    """N x 3 RAS (the CT's local RAS) -> continuous (i, j, k) through the full IJK-to-RAS matrix (any
    direction, oblique included); points outside the volume are kept (a box may reach past the CT)."""
    points = np.asarray(points_ras, dtype=float).reshape(-1, 3)
    return (np.linalg.inv(image.index_to_ras) @ np.c_[points, np.ones(len(points))].T).T[:, :3]


def roi_corners_ras(roi_node, ct_node=None) -> np.ndarray:
    """8 x 3 corners of a ROI in the CT's local RAS (rotated ROIs and transforms included); 0 x 3 when the ROI
    is not placed yet."""
    if roi_node.GetNumberOfControlPoints() < 1 or (
            roi_node.GetNthControlPointPositionStatus(0) != slicer.vtkMRMLMarkupsNode.PositionDefined):
        return np.zeros((0, 3))
    bounds = [0.0] * 6
    roi_node.GetObjectBounds(bounds)
    matrix = roi_node.GetObjectToWorldMatrix()
    to_world = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    corners = np.array([[x, y, z, 1.0] for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]])
    return world_to_ct_ras((to_world @ corners.T).T[:, :3], ct_node)


def curve_points_ras(curve_node, ct_node=None) -> np.ndarray:
    """N x 3 points of a curve as drawn (its interpolated curve points), in the CT's local RAS; its defined
    control points while one is still being placed."""
    control = defined_points_ras(curve_node, None)
    if len(control) < curve_node.GetNumberOfControlPoints() or len(control) < 2:
        return world_to_ct_ras(control, ct_node)
    points = curve_node.GetCurvePointsWorld()
    if points is None or points.GetNumberOfPoints() < 2:
        return world_to_ct_ras(control, ct_node)
    return world_to_ct_ras(np.array([points.GetPoint(n) for n in range(points.GetNumberOfPoints())]), ct_node)


@dataclass
class PlacedPrompts:
    """The prompts of one slice, per node, and what lies on other slices or was replaced."""

    slice_index: int
    parts: List[Tuple[str, "SlicePoints"]] = field(default_factory=list)  # (node name, its prompt on the slice)
    ignored: List[str] = field(default_factory=list)  # node names (points: "name point n") on other slices
    superseded: List[str] = field(default_factory=list)  # boxes / lassos of the slice replaced by a later one


def _node_prompts(image: Image, grid, node, ct_node) -> Tuple[str, Optional[str], List, np.ndarray]:
    """(name, role, prompts, voxel indices) of one node, each prompt on its own slice (a ROI: its centre slice)."""
    from CRCSegmentationLib.usam.shapes import box_prompt, lasso_prompt, point_prompts, scribble_prompt

    name, role = node_name(node), prompt_role(node)
    if role in POINT_ROLES:
        ijk = image_ijk(image, defined_points_ras(node, ct_node))
        return name, role, point_prompts(ijk, [POINT_ROLES[role][2]] * len(ijk), grid, f"point list {name!r}"), ijk
    if role == "box":
        ijk = image_ijk(image, roi_corners_ras(node, ct_node))
        return name, role, [box_prompt(ijk, grid, name=f"box {name!r}")] if len(ijk) else [], ijk
    if role in ("scribble", "negative scribble", "lasso"):
        ijk = image_ijk(image, curve_points_ras(node, ct_node))
        if not len(ijk):
            return name, role, [], ijk
        if role == "lasso":
            return name, role, [lasso_prompt(ijk, grid, name=f"lasso {name!r}")], ijk
        return name, role, [scribble_prompt(ijk, role == "scribble", grid, name=f"scribble {name!r}")], ijk
    raise InputError(f"prompt: {name} ({node.GetClassName()}) is not a point list, ROI or curve")


def placed_prompts(image: Image, nodes: Sequence, ct_node=None, slice_index: Optional[int] = None,
                   axis: Optional[int] = None) -> PlacedPrompts:
    """Every prompt of ``nodes`` that lies on ``slice_index`` (default: the slice of the last node's prompt, for a
    point list its last point), one part per node; a thick ROI prompts every slice it crosses.

    SAM takes one box per prompt: when several boxes or lassos lie on the slice, the last in node order
    (``prompt_nodes`` puts the node just placed last) prompts and the earlier ones are ``superseded``
    (a box drawn again corrects the previous one, as newer prompts win in nnInteractive).

    ``image``: the CT (``image_from_volume_node(ct_node)``); slices are along ``axis`` (default
    ``image.axial_axis``, array axis 0 for the usual axial CT; ``refinement`` segments ``array[k]``).
    """
    from CRCSegmentationLib.usam.shapes import SliceGrid, box_prompt, merge_prompts

    grid = SliceGrid.of(image, axis)
    found = [_node_prompts(image, grid, node, ct_node) for node in nodes if node is not None]
    found = [entry for entry in found if entry[2]]  # nodes with nothing placed yet say nothing
    if not found:
        raise InputError("prompt: nothing placed; place a point, a box, a scribble or a lasso on the tumor")
    k = found[-1][2][-1].slice_index if slice_index is None else int(slice_index)
    if not 0 <= k < grid.slice_count:
        raise InputError(f"slice index {k} is outside the volume's {grid.slice_count} axial slices")
    placed = PlacedPrompts(k)
    for name, role, prompts, ijk in found:
        if role == "box":  # a thick ROI: its box on this slice when it crosses it
            across = grid.split(ijk)[1]
            on = [box_prompt(ijk, grid, k, name=f"box {name!r}")] if across.min() - 0.5 <= k <= across.max() + 0.5 else []
        else:
            on = [prompt for prompt in prompts if prompt.slice_index == k]
        if on:
            placed.parts.append((name, merge_prompts(on) if len(on) > 1 else on[0]))
        if role in POINT_ROLES:
            placed.ignored += [f"{name} point {n + 1}" for n, prompt in enumerate(prompts) if prompt.slice_index != k]
        elif not on:
            placed.ignored.append(name)
    boxed = [n for n, (_, prompt) in enumerate(placed.parts) if prompt.box is not None]
    placed.superseded = [placed.parts[n][0] for n in boxed[:-1]]
    placed.parts = [part for n, part in enumerate(placed.parts) if n not in boxed[:-1]]
    return placed


def gather_prompt(image: Image, nodes: Sequence, ct_node=None, slice_index: Optional[int] = None,
                  axis: Optional[int] = None) -> "SlicePoints":
    """One prompt of everything placed on one slice (see ``placed_prompts``): the points of all nodes in node
    order and the box of the last ROI or lasso. Prompts on other slices and earlier boxes are left out."""
    from CRCSegmentationLib.usam.shapes import merge_prompts

    placed = placed_prompts(image, nodes, ct_node, slice_index, axis)
    if not placed.parts:
        raise InputError(f"prompt: nothing placed on slice {placed.slice_index} (placed elsewhere: "
                         f"{', '.join(placed.ignored)}); place a point, a box, a scribble or a lasso there")
    names, prompts = zip(*placed.parts)
    return merge_prompts(prompts, names)


def view_slice_index(image: Image, slice_node, ct_node=None, axis: Optional[int] = None) -> int:
    """The axial slice of ``image`` (along ``axis``, default ``image.axial_axis``) at the centre of a slice view
    (its SliceToRAS origin), rounded; InputError when the view's centre is off the volume's slices."""
    axis = image.axial_axis if axis is None else int(axis)
    matrix = slice_node.GetSliceToRAS()
    centre = world_to_ct_ras(np.array([[matrix.GetElement(r, 3) for r in range(3)]]), ct_node)
    k = int(np.floor(image_ijk(image, centre)[0, 2 - axis] + 0.5))
    count = image.shape[axis]
    if not 0 <= k < count:
        raise InputError(f"{node_name(slice_node)}: shows slice {k}, outside the {count} axial slices of {image.name}")
    return k


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
