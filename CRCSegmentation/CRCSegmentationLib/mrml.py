"""MRML glue of tumor segmentation: guidance from the scene, tumor mask -> segment, statistics -> table, export.

Builds on ``OrganGuidanceLib.mrml`` (volume <-> ``Image``, segment masks, scene set-up)
and, like it, has no Qt and no ``slicer.mrmlScene``: every function takes the scene or
the nodes it works on, so it runs inside Slicer and under ``slicer-core`` alike.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import slicer
import vtk

from CRCSegmentationLib.dicom.terminology import SLICER_DICOM_CONTEXT, terminology_entry
from OrganGuidanceLib.atomic import atomic_path, write_text_atomic
from OrganGuidanceLib.crop import CropBox
from OrganGuidanceLib.guidance import GuidanceResult, organ_union
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import write_image
from OrganGuidanceLib.labels import DEFAULT_ORGAN_SET, LabelConvention
from OrganGuidanceLib.mrml import (
    BOWEL_WALL_SEGMENT_NAME,
    CROP_BOX_REFERENCE_ROLE,
    OOI_SEGMENT_NAME,
    check_node_in_scene,
    check_output_segmentation_node,
    cropped_oriented_image,
    image_from_volume_node,
    label_map_segments,
    node_name,
    segment_label_value,
    segment_mask,
    write_segments,
)
from OrganGuidanceLib.mrml import (
    SEGMENT_TAG as GUIDANCE_SEGMENT_TAG,
)
from OrganGuidanceLib.validation import InputError

TUMOR_SEGMENT_NAME = "Tumor"
TUMOR_COLOR = (0.85, 0.20, 0.20)  # red
SEGMENT_TAG = "CRCSegmentation"  # segment tag marking what we wrote
MODEL_ORGAN_TAG = "model_organ"  # organs an organ-interference model segmented (FLARE24), shown, never tumor
STATISTICS_REFERENCE_ROLE = "crcSegmentationStatistics"  # segmentation node -> its statistics table
# Slicer's serialised terminology entry of each segment we write, from the one table of codes (dicom.codes, which the
# DICOM SEG uses too): the tumor is SNOMED CT 49755003 "Morphologically Altered Structure" / 86049000 "Neoplasm,
# Primary". Slicer's DICOM master list context holds these codes and is always loaded.
TERMINOLOGY_CONTEXT = SLICER_DICOM_CONTEXT
TUMOR_TERMINOLOGY = terminology_entry("tumor", TERMINOLOGY_CONTEXT)
# Column name -> (TumorStatistics attribute, unit); one row per segmentation.
STATISTICS_COLUMNS: Tuple[Tuple[str, str, str], ...] = (
    ("Volume", "volume_ml", "ml"),
    ("Largest axial diameter", "largest_axial_diameter_mm", "mm"),
    ("Cranio-caudal extent", "craniocaudal_extent_mm", "mm"),
    ("Components", "components", ""),
)


# --- guidance from an OrganGuidance segmentation node --------------------------------
def _segments(segmentation_node) -> List[Tuple[str, "slicer.vtkSegment"]]:
    segmentation = segmentation_node.GetSegmentation()
    return [(segmentation.GetNthSegmentID(i), segmentation.GetNthSegment(i)) for i in range(segmentation.GetNumberOfSegments())]


def segment_tag(segment, tag_name: str = GUIDANCE_SEGMENT_TAG) -> str:
    """Value of a segment tag, "" when absent (``GetTag`` returns it through a reference)."""
    value = vtk.reference("")
    return str(value) if segment.GetTag(tag_name, value) else ""


def _find_segment(segmentation_node, name: str, tag: str) -> Optional[str]:
    """ID of the segment tagged ``tag`` by OrganGuidance, else the one named ``name``."""
    for segment_id, segment in _segments(segmentation_node):
        if segment_tag(segment) == tag:
            return segment_id
    return segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(name) or None


def crop_box_from_roi_node(roi_node, reference: Image) -> Optional[CropBox]:
    """Inverse of ``OrganGuidanceLib.mrml.crop_box_to_roi_node``: the voxel box an ROI covers, clipped.

    Exact for axis-aligned grids; for an oblique grid it is the box around the ROI's RAS bounds (larger).
    """
    bounds = np.zeros(6)
    roi_node.GetRASBounds(bounds)
    if not np.all(np.isfinite(bounds)) or bounds[1] < bounds[0]:
        return None
    corners = np.array([[x, y, z, 1.0] for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]])
    ijk = (np.linalg.inv(reference.index_to_ras) @ corners.T).T[:, :3]  # outer edges: index +- 0.5
    start_xyz = np.clip(np.round(ijk.min(axis=0) + 0.5).astype(int), 0, None)
    stop_xyz = np.minimum(np.round(ijk.max(axis=0) + 0.5).astype(int), reference.shape[::-1])
    if np.any(stop_xyz <= start_xyz):
        return None
    return CropBox(tuple(int(v) for v in start_xyz[::-1]), tuple(int(v) for v in stop_xyz[::-1]), tuple(reference.shape))


def guidance_from_segmentation_node(
    segmentation_node, ct: Image, convention: LabelConvention, messages: Optional[List[str]] = None,
    organ_set: str = DEFAULT_ORGAN_SET,
) -> GuidanceResult:
    """An Organ Guidance output segmentation as the engine's guidance input, on ``ct``'s grid.

    Organ segments (tagged "mos" by Organ Guidance, or any segment whose name the
    ``convention`` knows) become the MOS label map with the convention's values; the
    "Organs of interest" segment is the OOI; "Bowel wall" and the body-crop ROI are
    taken when present. OOI0 (undilated) is the union of the ``organ_set`` organs.
    """
    if segmentation_node is None or not segmentation_node.IsA("vtkMRMLSegmentationNode"):
        raise InputError("organ guidance: no segmentation node selected")
    name = node_name(segmentation_node)
    warnings: List[str] = []
    ooi_id = _find_segment(segmentation_node, OOI_SEGMENT_NAME, "ooi")
    if not ooi_id:
        raise InputError(f"{name}: has no '{OOI_SEGMENT_NAME}' segment; run Organ Guidance on the CT first")
    wall_id = _find_segment(segmentation_node, BOWEL_WALL_SEGMENT_NAME, "bowel_wall")
    tagged = [(sid, s) for sid, s in _segments(segmentation_node) if segment_tag(s) == "mos"]
    candidates = tagged or [(sid, s) for sid, s in _segments(segmentation_node) if sid not in (ooi_id, wall_id)]
    organs: List[Tuple[str, int]] = []
    skipped = []
    for segment_id, segment in candidates:
        value = segment_label_value(segment.GetName(), convention)
        if value is None:
            skipped.append(segment.GetName())
        else:
            organs.append((segment_id, value))
    if skipped:
        warnings.append(f"{name}: segments not in the '{convention.name}' convention were skipped: "
                        + ", ".join(repr(s) for s in skipped))
    largest = max([value for _, value in organs], default=0)
    mos = np.zeros(ct.shape, dtype=np.uint8 if largest < 256 else np.uint16)
    for segment_id, value in organs:
        mos[segment_mask(segmentation_node, segment_id, ct)] = value
    ooi = segment_mask(segmentation_node, ooi_id, ct)
    if not ooi.any():
        warnings.append(f"{name}: the '{OOI_SEGMENT_NAME}' segment is empty")
    wall = segment_mask(segmentation_node, wall_id, ct) if wall_id else np.zeros(ct.shape, bool)
    roi = segmentation_node.GetNodeReference(CROP_BOX_REFERENCE_ROLE)
    crop = crop_box_from_roi_node(roi, ct) if roi is not None else None
    present = [int(v) for v in np.unique(mos) if v]
    result = GuidanceResult(
        mos=ct.with_array(mos, "MOS"),
        ooi0=ct.with_array(organ_union(mos, convention.ooi_label_values(organ_set)), "OOI0"),
        ooi=ct.with_array(ooi, "OOI"),
        bowel_wall=ct.with_array(wall, "Bowel wall"),
        crop_box=crop,
        organ_names={v: convention.labels.get(v, f"label_{v}") for v in present},
        warnings=list(warnings),
    )
    if messages is not None:
        messages.extend(warnings)
    return result


# --- tumor mask -> segment --------------------------------------------------------
def _grid_offset(mask: Image, reference: Image) -> Optional[Tuple[int, int, int]]:
    """(x, y, z) index of ``mask``'s first voxel on ``reference``'s grid, when it is a sub-grid of it."""
    if not (np.allclose(mask.spacing, reference.spacing, atol=1e-5) and np.allclose(mask.direction, reference.direction, atol=1e-5)):
        return None
    index = (np.linalg.inv(reference.index_to_physical) @ np.array([*mask.origin, 1.0]))[:3]
    rounded = np.round(index)
    if not np.allclose(index, rounded, atol=1e-3):
        return None
    return tuple(int(v) for v in rounded)  # type: ignore[return-value]


def tumor_oriented_image(mask: Image, reference: Image) -> "slicer.vtkOrientedImageData":
    """The mask's bounding box as a labelmap layer, in the reference (CT) index space when it is a sub-grid.

    A mask predicted on a cropped grid (``CropBox.apply``'d CT) keeps its RAS location:
    its voxels are put at their offset on the CT grid, as Slicer stores segments; a mask
    on any other grid keeps its own geometry.
    """
    array = np.asarray(mask.array) > 0
    offset = _grid_offset(mask, reference)
    if offset is None:
        return cropped_oriented_image(array.astype(np.uint8), mask.index_to_ras)
    image = cropped_oriented_image(array.astype(np.uint8), reference.index_to_ras)
    extent = list(image.GetExtent())
    image.SetExtent(*(extent[2 * a + e] + offset[a] for a in range(3) for e in range(2)))
    return image


def tumor_segment(mask: Image, reference: Image, name: str = TUMOR_SEGMENT_NAME) -> "slicer.vtkSegment":
    """A named, coloured "Tumor" segment with SNOMED CT terminology. Touches no scene."""
    segment = slicer.vtkSegment()
    segment.SetName(name)
    segment.SetColor(*TUMOR_COLOR)
    segment.SetLabelValue(1)
    segment.SetTag(SEGMENT_TAG, "tumor")
    segment.SetTerminology(TUMOR_TERMINOLOGY)
    segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), tumor_oriented_image(mask, reference))
    return segment


def tag_terminology(segments: Sequence["slicer.vtkSegment"]) -> List["slicer.vtkSegment"]:
    """Set the terminology of each segment whose name has a code (``dicom.codes``); others are left as they are."""
    for segment in segments:
        try:
            segment.SetTerminology(terminology_entry(segment.GetName(), TERMINOLOGY_CONTEXT))
        except ValueError:  # a label without a code (e.g. liver): Slicer keeps its generic entry
            pass
    return list(segments)


def tumor_to_segmentation_node(scene, mask: Image, ct_node, output_node=None, ct: Optional[Image] = None,
                               organs: Optional[Image] = None, organ_names: Optional[Dict[int, str]] = None):
    """Write a tumor mask as a "Tumor" segment referenced to ``ct_node``'s geometry.

    ``organs``: the organ labels an organ-interference model (FLARE24) segmented too, on the same
    grid as ``mask``; written as one segment per organ (``organ_names``: value -> name), never as tumor.

    ``mask`` may lie on the CT grid or on a cropped sub-grid of it (same RAS location
    either way). ``output_node=None`` creates "<CT name> tumor segmentation"; an existing
    segmentation keeps its other segments, and its "Tumor" segment is replaced in place.
    Everything is built and checked before the scene is touched.
    """
    check_node_in_scene(scene, ct_node, "CT")
    if output_node is not None:
        check_output_segmentation_node(scene, output_node, ct_node)
    reference = ct if ct is not None else image_from_volume_node(ct_node)
    segments = [tumor_segment(mask, reference)]
    if organs is not None:
        if not organs.same_grid(mask):
            raise InputError(f"{organs.name}: the organ labels are not on the tumor mask's grid")
        segments += tag_terminology(label_map_segments(organs.array, organs.index_to_ras, organ_names or {},
                                                       MODEL_ORGAN_TAG))
    return write_segments(scene, segments, ct_node, output_node, f"{node_name(ct_node)} tumor segmentation")


def tumor_segment_id(segmentation_node) -> str:
    """ID of our "Tumor" segment (by tag, else by name); InputError when there is none."""
    for segment_id, segment in _segments(segmentation_node):
        if segment_tag(segment, SEGMENT_TAG) == "tumor":
            return segment_id
    segment_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(TUMOR_SEGMENT_NAME)
    if not segment_id:
        raise InputError(f"{node_name(segmentation_node)}: has no '{TUMOR_SEGMENT_NAME}' segment")
    return segment_id


# --- statistics -> table ----------------------------------------------------------
def statistics_to_table_node(scene, statistics, name: str, table_node=None, row_name: str = TUMOR_SEGMENT_NAME):
    """One row of tumor statistics (``TumorStatistics``-like) in a table node (new, or ``table_node`` refilled)."""
    table = vtk.vtkTable()
    segment_column = vtk.vtkStringArray()
    segment_column.SetName("Segment")
    segment_column.InsertNextValue(row_name)
    table.AddColumn(segment_column)
    for column, attribute, _ in STATISTICS_COLUMNS:
        array = vtk.vtkIntArray() if attribute == "components" else vtk.vtkDoubleArray()
        array.SetName(column)
        array.InsertNextValue(getattr(statistics, attribute))
        table.AddColumn(array)
    node = table_node if table_node is not None else slicer.vtkMRMLTableNode()
    was_modified = node.StartModify()
    node.SetName(name)
    node.SetAndObserveTable(table)
    node.SetUseColumnTitleAsColumnHeader(True)
    for column, _, unit in STATISTICS_COLUMNS:
        if unit:
            node.SetColumnUnitLabel(column, unit)
    node.EndModify(was_modified)
    if table_node is None:
        scene.AddNode(node)
    return node


def table_row(table_node, row: int = 0) -> Dict[str, object]:
    """Column name -> value of one row (for scripts and tests)."""
    table = table_node.GetTable()
    return {table.GetColumnName(c): table.GetValue(row, c).ToString() if table.GetColumn(c).IsA("vtkStringArray")
            else table.GetValue(row, c).ToDouble() for c in range(table.GetNumberOfColumns())}


# --- export -----------------------------------------------------------------------
@dataclass
class ExportedFiles:
    segmentation: Path  # .seg.nrrd with all segments
    label_map: Path  # NIfTI, tumor = 1, on the CT grid
    statistics: Optional[Path] = None  # .csv when the node has a statistics table


def _write_with_storage_node(node, storage_node, path: Path) -> None:
    with atomic_path(path, "".join(path.suffixes[-2:])) as temporary:
        storage_node.SetFileName(str(temporary))
        if not storage_node.WriteData(node):
            raise OSError(f"{node_name(node)}: could not be written to {path}")


def reference_volume(segmentation_node):
    """The volume a segmentation was made on (its reference image geometry), or None."""
    if segmentation_node is None:
        return None
    return segmentation_node.GetNodeReference(segmentation_node.GetReferenceImageGeometryReferenceRole())


def reference_ct(segmentation_node, purpose: str):
    """``reference_volume``, which must be a scalar volume; ``InputError`` naming the segmentation and ``purpose``."""
    node = reference_volume(segmentation_node)
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"{node_name(segmentation_node)}: has no reference CT volume; {purpose}")
    return node


def file_base_name(segmentation_node, base_name: Optional[str] = None) -> str:
    """The start of the exported files' names: ``base_name`` or the node's name, in file-name-safe characters."""
    base = base_name or node_name(segmentation_node)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in base).strip("._") or "segmentation"


def export_segmentation(segmentation_node, folder, reference: Image, base_name: Optional[str] = None) -> ExportedFiles:
    """Write ``<base>.seg.nrrd`` (all segments), ``<base>_tumor.nii.gz`` (tumor label map on the CT grid)
    and ``<base>_statistics.csv`` (when a statistics table is referenced); each file atomically."""
    folder = Path(folder)
    base = file_base_name(segmentation_node, base_name)
    folder.mkdir(parents=True, exist_ok=True)
    mask = segment_mask(segmentation_node, tumor_segment_id(segmentation_node), reference)
    seg_path = folder / f"{base}.seg.nrrd"
    storage = slicer.vtkMRMLSegmentationStorageNode()
    _write_with_storage_node(segmentation_node, storage, seg_path)
    label_path = write_image(reference.with_array(mask.astype(np.uint8), f"{base} tumor"), folder / f"{base}_tumor.nii.gz")
    table = segmentation_node.GetNodeReference(STATISTICS_REFERENCE_ROLE)
    csv_path = None
    if table is not None:
        csv_path = write_text_atomic(folder / f"{base}_statistics.csv", statistics_csv(table))
    return ExportedFiles(seg_path, label_path, csv_path)


def statistics_csv(table_node) -> str:
    """The statistics table as CSV text, units in the header ("Volume [ml]")."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    table = table_node.GetTable()
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    units = {column: unit for column, _, unit in STATISTICS_COLUMNS}
    writer.writerow([f"{n} [{units[n]}]" if units.get(n) else n for n in names])
    for row in range(table.GetNumberOfRows()):
        values = table_row(table_node, row)
        writer.writerow([values[n] for n in names])
    return buffer.getvalue()


def read_segmentation_file(scene, path) -> "slicer.vtkMRMLSegmentationNode":
    """Read a .seg.nrrd into a new segmentation node (Slicer's own reader; for scripts and tests)."""
    node = slicer.vtkMRMLSegmentationNode()
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    scene.AddNode(node)
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise InputError(f"{path}: cannot be read as a segmentation")
    return node


def segment_names(segmentation_node) -> Sequence[str]:
    return [segment.GetName() for _, segment in _segments(segmentation_node)]
