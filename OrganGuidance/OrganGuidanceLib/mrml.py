"""MRML glue: volume, label map and segmentation nodes <-> ``Image``; guidance result -> nodes.

No Qt and no ``slicer.mrmlScene``: every function takes the scene or the nodes it
works on, so the same code runs inside Slicer and under the Qt-free ``slicer-core``
wheel in the tests. Geometry: MRML stores IJK-to-RAS, ``Image`` stores ITK's LPS
spacing/origin/direction; the two differ by diag(-1, -1, 1).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from OrganGuidanceLib.crop import CropBox
from OrganGuidanceLib.guidance import GuidanceResult
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.labels import ORGAN_ALIASES, LabelConvention
from OrganGuidanceLib.morphology import bounding_box
from OrganGuidanceLib.validation import InputError

logger = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse
OOI_SEGMENT_NAME = "Organs of interest"
BOWEL_WALL_SEGMENT_NAME = "Bowel wall"
SEGMENT_TAG = "OrganGuidance"  # segment tag marking what we wrote: "mos", "ooi" or "bowel_wall"
CROP_BOX_REFERENCE_ROLE = "organGuidanceCropBox"  # segmentation node -> its body-crop ROI node

# Fixed anatomical colours (RGB 0..1), close to Slicer's GenericAnatomyColors, keyed by
# normalised organ name; organs not listed take a colour from PALETTE by label value.
ORGAN_COLORS: Dict[str, Tuple[float, float, float]] = {
    "colon": (0.80, 0.55, 0.40),
    "rectum": (0.65, 0.38, 0.28),
    "small_bowel": (0.87, 0.71, 0.47),
    "intestine": (0.87, 0.71, 0.47),
    "duodenum": (0.90, 0.58, 0.33),
    "stomach": (0.85, 0.42, 0.42),
    "esophagus": (0.83, 0.52, 0.62),
    "urinary_bladder": (0.95, 0.85, 0.35),
    "bladder": (0.95, 0.85, 0.35),
    "liver": (0.62, 0.25, 0.20),
    "spleen": (0.55, 0.25, 0.45),
    "pancreas": (0.96, 0.75, 0.45),
    "gallbladder": (0.45, 0.68, 0.30),
    "kidney": (0.72, 0.35, 0.30),
    "adrenal": (0.90, 0.62, 0.25),
    "aorta": (0.85, 0.20, 0.20),
    "vena_cava": (0.25, 0.40, 0.85),
    "prostate": (0.90, 0.70, 0.70),
    "vertebrae": (0.94, 0.88, 0.72),
    "rib": (0.94, 0.88, 0.72),
    "sacrum": (0.94, 0.88, 0.72),
    "hip": (0.94, 0.88, 0.72),
    "femur": (0.94, 0.88, 0.72),
    "lung": (0.77, 0.70, 0.85),
}
OOI_COLOR = (0.20, 0.80, 0.35)
BOWEL_WALL_COLOR = (0.15, 0.70, 0.95)
PALETTE: Tuple[Tuple[float, float, float], ...] = (
    (0.55, 0.63, 0.80), (0.99, 0.55, 0.38), (0.40, 0.76, 0.65), (0.91, 0.54, 0.76),
    (0.65, 0.85, 0.33), (1.00, 0.85, 0.18), (0.90, 0.77, 0.58), (0.70, 0.70, 0.70),
)

_rules_registered = False


# --- scene ------------------------------------------------------------------------
def register_segmentation_converter_rules() -> None:
    """Register the labelmap <-> closed surface rules once (the Slicer app already has them)."""
    global _rules_registered
    if _rules_registered:
        return
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    present = {rule.GetClassName() for rule in factory.GetConverterRules()}
    for rule_class in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule, slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
        if rule_class.__name__ not in present:
            factory.RegisterConverterRule(rule_class())
    _rules_registered = True


def new_scene() -> "slicer.vtkMRMLScene":
    """An empty MRML scene usable outside the Slicer application (tests, scripts)."""
    register_segmentation_converter_rules()
    return slicer.vtkMRMLScene()


# --- small conversions ----------------------------------------------------------
def node_name(node) -> str:
    return node.GetName() or node.GetID() or node.GetClassName()


def vtk_matrix(array: np.ndarray) -> "vtk.vtkMatrix4x4":
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(array[row, column]))
    return matrix


def _from_vtk_matrix(matrix: "vtk.vtkMatrix4x4") -> np.ndarray:
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def _vtk_compatible(array: np.ndarray) -> np.ndarray:
    # VTK volumes have no bool type and Slicer rejects "long long" (updateVolumeFromArray).
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype.kind in "iu" and array.dtype.itemsize == 8:
        if array.size == 0 or (array.min() >= np.iinfo(np.int32).min and array.max() <= np.iinfo(np.int32).max):
            return array.astype(np.int32)
        return array.astype(np.float64)
    return array


def oriented_image(array: np.ndarray, ijk_to_ras: np.ndarray, start_xyz: Sequence[int] = (0, 0, 0)) -> "slicer.vtkOrientedImageData":
    """An oriented image whose extent starts at ``start_xyz`` of the grid that ``ijk_to_ras`` describes."""
    array = np.ascontiguousarray(_vtk_compatible(array))
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(vtk_matrix(ijk_to_ras))
    nz, ny, nx = array.shape
    x0, y0, z0 = (int(s) for s in start_xyz)
    image.SetExtent(x0, x0 + nx - 1, y0, y0 + ny - 1, z0, z0 + nz - 1)
    image.AllocateScalars(numpy_support.get_vtk_array_type(array.dtype), 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = array.ravel()
    return image


def array_from_oriented(image: "slicer.vtkOrientedImageData") -> np.ndarray:
    shape = tuple(reversed(image.GetDimensions()))
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape).copy()


def _reference_geometry(reference: Image) -> "slicer.vtkOrientedImageData":
    """Geometry only (no voxels): what the resampler needs to know about the target grid."""
    geometry = slicer.vtkOrientedImageData()
    geometry.SetImageToWorldMatrix(vtk_matrix(reference.index_to_ras))
    nz, ny, nx = reference.shape[:3]
    geometry.SetExtent(0, nx - 1, 0, ny - 1, 0, nz - 1)
    return geometry


# --- volumes ----------------------------------------------------------------------
def image_from_volume_node(volume_node) -> Image:
    """Voxels (a copy) and exact geometry of a scalar or label map volume node.

    Geometry is the node's own IJK-to-RAS; a parent transform is not applied.
    """
    if volume_node is None:
        raise InputError("volume: no volume node given")
    name = node_name(volume_node)
    if not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA("vtkMRMLTensorVolumeNode"):
        raise InputError(f"{name}: is a {volume_node.GetClassName()}; a scalar volume is needed")
    image_data = volume_node.GetImageData()
    if image_data is None or image_data.GetNumberOfPoints() == 0:
        raise InputError(f"{name}: volume node has no voxels")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise InputError(f"{name}: has {image_data.GetNumberOfScalarComponents()} components per voxel; a scalar volume is needed")
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    index_to_lps = LPS_TO_RAS @ _from_vtk_matrix(matrix)
    spacing = np.linalg.norm(index_to_lps[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"{name}: IJK-to-RAS matrix is degenerate (spacing {spacing.tolist()})")
    array = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)
    direction = index_to_lps[:3, :3] / spacing
    return Image(array, tuple(spacing), tuple(index_to_lps[:3, 3]), direction, name)


def update_volume_node_from_image(volume_node, image: Image) -> None:
    """Set voxels and geometry of ``volume_node`` from ``image`` (inverse of ``image_from_volume_node``)."""
    # Geometry first, so observers of the image-data event see the final volume.
    volume_node.SetIJKToRASMatrix(vtk_matrix(image.index_to_ras))
    slicer.util.updateVolumeFromArray(volume_node, np.ascontiguousarray(_vtk_compatible(image.array)))


def add_volume_node(scene, image: Image, name: str | None = None, labelmap: bool = False):
    """A new scalar (or label map) volume node holding ``image``, added to ``scene``."""
    node = slicer.vtkMRMLLabelMapVolumeNode() if labelmap else slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name or image.name)
    update_volume_node_from_image(node, image)
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    return node


# --- segmentations -> label images -----------------------------------------------
def _normalised(name: str) -> str:
    return "_".join(name.strip().lower().replace("-", " ").replace("_", " ").split())


def segment_label_value(segment_name: str, convention: LabelConvention) -> Optional[int]:
    """Label value of ``convention`` for a segment name ("Colon", "small bowel", ...), or None."""
    key = _normalised(segment_name)
    for value, label_name in sorted(convention.labels.items()):
        if _normalised(label_name) == key:
            return value
    # Other spellings of the organs of interest ("small intestine", "large bowel", ...).
    for organ, aliases in ORGAN_ALIASES.items():
        if key == organ or key in aliases:
            values = convention.organ_labels.get(organ, ())
            return values[0] if values else None
    return None


def _ensure_binary_labelmaps(segmentation_node) -> None:
    segmentation = segmentation_node.GetSegmentation()
    representation = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    if not segmentation.ContainsRepresentation(representation) and not segmentation.CreateRepresentation(representation):
        raise InputError(f"{node_name(segmentation_node)}: segments cannot be converted to a binary labelmap")


def segment_mask(segmentation_node, segment_id: str, reference: Image) -> np.ndarray:
    """Boolean mask of one segment on ``reference``'s grid (nearest neighbour, node coordinates)."""
    _ensure_binary_labelmaps(segmentation_node)
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise InputError(f"{node_name(segmentation_node)}: has no segment with ID {segment_id!r}")
    labelmap = slicer.vtkOrientedImageData()
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.GetSegmentBinaryLabelmapRepresentation(segmentation_node, segment_id, labelmap, False) or labelmap.IsEmpty():
        return np.zeros(reference.shape, dtype=bool)  # an empty segment
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        labelmap, _reference_geometry(reference), resampled, False, False
    ):
        raise InputError(f"{node_name(segmentation_node)}: segment {segment.GetName()!r} cannot be resampled to {reference.name}")
    # Segments may share one labelmap layer; each owns the voxels equal to its label value.
    return array_from_oriented(resampled) == segment.GetLabelValue()


def _segmentation_label_image(node, reference: Image, convention: LabelConvention | None, messages: List[str] | None) -> Image:
    name = node_name(node)
    if convention is None:
        raise InputError(f"{name}: a segmentation needs a label convention (TotalSegmentator, WORD or a JSON mapping) to number its segments")
    segmentation = node.GetSegmentation()
    segment_ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    if not segment_ids:
        raise InputError(f"{name}: segmentation has no segments")
    matched, unknown = [], []
    for segment_id in segment_ids:
        segment_name = segmentation.GetSegment(segment_id).GetName()
        value = segment_label_value(segment_name, convention)
        (unknown if value is None else matched).append((segment_id, segment_name, value))
    all_names = [segment_name for _, segment_name, _ in matched + unknown]
    if not matched:
        raise InputError(
            f"{name}: none of its segments ({', '.join(repr(n) for n in all_names)}) is an organ of the "
            f"'{convention.name}' convention; name them like the convention's labels (e.g. 'colon', 'small bowel')"
        )
    if unknown:
        text = f"{name}: segments not in the '{convention.name}' convention were skipped: {', '.join(repr(n) for _, n, _ in unknown)}"
        logger.warning(text)
        if messages is not None:
            messages.append(text)
    largest = max(value for _, _, value in matched)
    labels = np.zeros(reference.shape, dtype=np.uint8 if largest < 256 else np.uint16)
    for segment_id, _, value in matched:
        labels[segment_mask(node, segment_id, reference)] = value  # later segments win where they overlap
    return reference.with_array(labels, name)


def label_image_from_node(node, reference: Image, convention: LabelConvention | None = None, messages: List[str] | None = None) -> Image:
    """Organ label map from a label map volume node or a segmentation node.

    A volume node is converted as it is (the engine resamples it to the CT later). A
    segmentation node is exported on ``reference``'s grid; each segment takes the
    ``convention``'s value for its name; unknown names are skipped with a warning
    (also appended to ``messages``).
    """
    if node is None:
        raise InputError("organ masks: no node selected")
    if node.IsA("vtkMRMLSegmentationNode"):
        return _segmentation_label_image(node, reference, convention, messages)
    if node.IsA("vtkMRMLScalarVolumeNode"):
        return image_from_volume_node(node)  # check_label_map rejects intensity images later
    raise InputError(f"{node_name(node)}: is a {node.GetClassName()}; organ masks must be a label map volume or a segmentation")


# --- guidance result -> segmentation node -----------------------------------------
def organ_display_name(name: str) -> str:
    return name.replace("_", " ").strip()


def organ_color(name: str, value: int = 0) -> Tuple[float, float, float]:
    key = _normalised(name)
    if key in ORGAN_COLORS:
        return ORGAN_COLORS[key]
    for family, color in ORGAN_COLORS.items():  # kidney_left, vertebrae_L3, ...
        if key.startswith(family) or key.endswith(family):
            return color
    return PALETTE[value % len(PALETTE)]


def cropped_oriented_image(mask_or_labels: np.ndarray, ijk_to_ras: np.ndarray) -> "slicer.vtkOrientedImageData":
    # Only the bounding box is stored, as Slicer does: a clinical CT has ~50 M voxels.
    box = bounding_box(mask_or_labels)
    if box is None:
        box = (slice(0, 1),) * 3  # an empty segment still needs a valid (one-voxel, zero) layer
    start_xyz = [s.start for s in reversed(box)]
    return oriented_image(mask_or_labels[box], ijk_to_ras, start_xyz)


def _segment(name: str, color: Tuple[float, float, float], layer, label_value: int, tag: str) -> "slicer.vtkSegment":
    segment = slicer.vtkSegment()
    segment.SetName(name)
    segment.SetColor(*color)
    segment.SetLabelValue(int(label_value))
    segment.SetTag(SEGMENT_TAG, tag)
    segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), layer)
    return segment


def label_map_segments(labels: np.ndarray, ijk_to_ras: np.ndarray, names: Dict[int, str],
                       tag: str) -> List["slicer.vtkSegment"]:
    """One named, coloured segment per label present, all sharing one labelmap layer. Touches no scene."""
    present = [int(v) for v in np.unique(labels) if v]
    if not present:
        return []
    dtype = np.uint8 if max(present) < 256 else (np.uint16 if max(present) < 65536 else np.int32)
    shared = cropped_oriented_image(labels.astype(dtype, copy=False), ijk_to_ras)  # one layer for all organs
    segments = []
    for value in present:
        raw = names.get(value, f"label {value}")
        segments.append(_segment(organ_display_name(raw), organ_color(raw, value), shared, value, tag))
    return segments


def build_guidance_segments(result: GuidanceResult, organ_names: Dict[int, str] | None = None) -> List["slicer.vtkSegment"]:
    """Named, coloured segments: MOS organs (one shared layer), OOI, bowel wall. Touches no scene."""
    names = {**result.organ_names, **(organ_names or {})}  # caller's names override the convention's
    ijk_to_ras = result.ooi.index_to_ras
    segments = label_map_segments(result.mos.array, ijk_to_ras, names, "mos")
    for image, name, color, tag in (
        (result.ooi, OOI_SEGMENT_NAME, OOI_COLOR, "ooi"),
        (result.bowel_wall, BOWEL_WALL_SEGMENT_NAME, BOWEL_WALL_COLOR, "bowel_wall"),
    ):
        segments.append(_segment(name, color, cropped_oriented_image(image.array.astype(np.uint8), ijk_to_ras), 1, tag))
    return segments


def check_node_in_scene(scene, node, role: str) -> None:
    if node is None or node.GetScene() is None or scene.GetNodeByID(node.GetID()) is None:
        raise InputError(f"{role}: node {node_name(node) if node is not None else 'None'} is not in the scene")


def segment_id_for(segmentation, name: str) -> str:
    return segmentation.GenerateUniqueSegmentID(_normalised(name) or "segment")


def replace_segments(segmentation, segments: Sequence["slicer.vtkSegment"]) -> None:
    """Replace segments whose names are ours (keeping their IDs and order); add the others."""
    for segment in segments:
        existing_id = segmentation.GetSegmentIdBySegmentName(segment.GetName())
        if existing_id:
            index = segmentation.GetSegmentIndex(existing_id)
            following = segmentation.GetNthSegmentID(index + 1) if index + 1 < segmentation.GetNumberOfSegments() else ""
            segmentation.RemoveSegment(existing_id)
            segmentation.AddSegment(segment, existing_id, following)
        else:
            segmentation.AddSegment(segment, segment_id_for(segmentation, segment.GetName()))


def check_output_segmentation_node(scene, output_node, ct_node) -> None:
    """A user-chosen output must be a segmentation in this scene, under the CT's transform."""
    if not output_node.IsA("vtkMRMLSegmentationNode"):
        raise InputError(f"{node_name(output_node)}: is a {output_node.GetClassName()}, not a segmentation; choose a segmentation as output")
    check_node_in_scene(scene, output_node, "output segmentation")
    if output_node.GetTransformNodeID() != ct_node.GetTransformNodeID():
        raise InputError(
            f"{node_name(output_node)}: is under another transform than {node_name(ct_node)}; "
            "harden or remove the transform, or write to a new segmentation"
        )


def guidance_to_segmentation_node(scene, result: GuidanceResult, ct_node, output_node=None, organ_names: Dict[int, str] | None = None):
    """Write a guidance result as one segmentation node referenced to ``ct_node``.

    ``output_node=None`` creates a new node "<CT name> organ guidance". An existing
    segmentation given as ``output_node`` keeps all its other segments; only segments
    named like ours are replaced. Everything is built before the scene is touched.
    """
    check_node_in_scene(scene, ct_node, "CT")
    if output_node is not None:
        check_output_segmentation_node(scene, output_node, ct_node)
    segments = build_guidance_segments(result, organ_names)
    return write_segments(scene, segments, ct_node, output_node, f"{node_name(ct_node)} organ guidance")


def write_segments(scene, segments: Sequence["slicer.vtkSegment"], ct_node, output_node=None, new_name: str = ""):
    """Put ``segments`` (built off-scene) into a segmentation referenced to ``ct_node``; returns it.

    ``output_node=None``: a new node ``new_name`` under the CT's transform. Otherwise the
    (checked) ``output_node`` keeps its other segments; ours are replaced in place.
    """
    if output_node is None:
        node = slicer.vtkMRMLSegmentationNode()
        node.SetName(scene.GenerateUniqueName(new_name or f"{node_name(ct_node)} segmentation"))
        segmentation = node.GetSegmentation()
        for segment in segments:
            segmentation.AddSegment(segment, segment_id_for(segmentation, segment.GetName()))
        scene.AddNode(node)
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(ct_node)
        if ct_node.GetTransformNodeID():
            node.SetAndObserveTransformNodeID(ct_node.GetTransformNodeID())
        return node

    if output_node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()) is None:
        output_node.SetReferenceImageGeometryParameterFromVolumeNode(ct_node)
    replace_segments(output_node.GetSegmentation(), segments)
    if output_node.GetDisplayNode() is None:
        output_node.CreateDefaultDisplayNodes()
    return output_node


# --- crop box -> ROI --------------------------------------------------------------
def crop_box_ras(crop_box: CropBox, image: Image) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(center, size, axes) in RAS of a crop box's outer voxel edges; axes are unit columns."""
    if tuple(crop_box.full_shape) != tuple(image.shape):
        raise InputError(f"crop box: made for a grid of shape {crop_box.full_shape}, but {image.name} has shape {image.shape}")
    start = np.array(crop_box.start[::-1], dtype=float)  # (x, y, z)
    stop = np.array(crop_box.stop[::-1], dtype=float)
    center = (image.index_to_ras @ np.array([*((start + stop - 1) / 2), 1.0]))[:3]
    size = (stop - start) * np.array(image.spacing)
    axes = LPS_TO_RAS[:3, :3] @ image.direction
    permutation = np.abs(np.round(axes))
    if np.allclose(np.abs(axes), permutation) and np.allclose(permutation.sum(axis=0), 1) and np.allclose(permutation.sum(axis=1), 1):
        # Axis-aligned (the usual case): an unrotated ROI with the sizes permuted to R, A, S.
        return center, permutation @ size, np.eye(3)
    if np.linalg.det(axes) < 0:
        axes = axes * np.array([-1.0, 1.0, 1.0])  # a box is symmetric: keep the frame right-handed
    return center, size, axes


def crop_box_to_roi_node(scene, crop_box: CropBox, ct_image: Image, name: str, roi_node=None):
    """A box ROI (new, or ``roi_node`` updated) covering the crop box in RAS."""
    center, size, axes = crop_box_ras(crop_box, ct_image)
    object_to_node = np.eye(4)
    object_to_node[:3, :3] = axes
    object_to_node[:3, 3] = center
    node = roi_node if roi_node is not None else slicer.vtkMRMLMarkupsROINode()
    was_modified = node.StartModify()
    node.SetName(name)
    node.SetAndObserveObjectToNodeMatrix(vtk_matrix(object_to_node))
    node.SetSize(*(float(s) for s in size))
    node.EndModify(was_modified)
    if roi_node is None:
        scene.AddNode(node)
        node.CreateDefaultDisplayNodes()
    return node
