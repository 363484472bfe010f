"""CRCSegmentation MRML glue under slicer-core (real MRML classes, no mocks) on the real example CT."""
from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk
from mrml_helpers import segmentation_from_masks

from CRCSegmentationLib.measurement.statistics import tumor_statistics
from CRCSegmentationLib.mrml import (
    STATISTICS_COLUMNS,
    TUMOR_COLOR,
    TUMOR_SEGMENT_NAME,
    TUMOR_TERMINOLOGY,
    export_segmentation,
    guidance_from_segmentation_node,
    read_segmentation_file,
    statistics_to_table_node,
    table_row,
    tumor_segment_id,
    tumor_to_segmentation_node,
)
from OrganGuidanceLib.crop import CropBox
from OrganGuidanceLib.guidance import GuidanceParameters, MOSSource, run_guidance
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.logic import OrganGuidanceLogic, OrganGuidanceSettings, OrganSourceChoice
from OrganGuidanceLib.morphology import bounding_box
from OrganGuidanceLib.mrml import add_volume_node, image_from_volume_node, segment_mask
from OrganGuidanceLib.validation import InputError

COLON = 20  # TotalSegmentator v2 `total` id (shared/data/README.md)


@pytest.fixture(scope="module")
def tumor(organs) -> Image:
    """A "tumor": the lower 12 slices of the real colon (rectum and sigmoid), on the CT grid."""
    colon = organs.array == COLON
    slices = np.flatnonzero(colon.any(axis=(1, 2)))
    mask = np.zeros(colon.shape, np.uint8)
    low = slices[0]
    mask[low:low + 12] = colon[low:low + 12]
    assert 100 < mask.sum() < colon.sum()
    return organs.with_array(mask, "tumor")


@pytest.fixture
def ct_node(mrml_scene, ct):
    return add_volume_node(mrml_scene, ct, "Case 3 CT")


def crop_around(mask: Image, margin: int = 3) -> CropBox:
    box = bounding_box(mask.array)
    return CropBox(tuple(max(0, s.start - margin) for s in box),
                   tuple(min(n, s.stop + margin) for s, n in zip(box, mask.shape)), mask.shape)


def segment_ras_bounds(node, segment_id) -> np.ndarray:
    bounds = [0.0] * 6
    node.GetSegmentation().GetSegment(segment_id).GetBounds(bounds)
    return np.array(bounds)


def exported_labelmap(scene, node, segment_id, ct_node) -> Image:
    """Slicer's own export of one segment to the CT grid (independent of the code under test)."""
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "export")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(node, ids, labelmap, ct_node)
    return image_from_volume_node(labelmap)


# --- tumor mask -> segment ----------------------------------------------------------
def test_mask_on_a_cropped_grid_lands_where_the_full_grid_mask_lands(mrml_scene, ct, tumor, ct_node):
    box = crop_around(tumor)
    cropped = box.apply(tumor)
    assert cropped.shape != tumor.shape and box.start != (0, 0, 0) and cropped.origin != tumor.origin
    full_node = tumor_to_segmentation_node(mrml_scene, tumor, ct_node)
    crop_node = tumor_to_segmentation_node(mrml_scene, cropped, ct_node)
    full_id, crop_id = tumor_segment_id(full_node), tumor_segment_id(crop_node)

    np.testing.assert_allclose(segment_ras_bounds(crop_node, crop_id), segment_ras_bounds(full_node, full_id), atol=1e-6)
    for node, segment_id in ((full_node, full_id), (crop_node, crop_id)):
        exported = exported_labelmap(mrml_scene, node, segment_id, ct_node)
        assert exported.same_grid(ct)
        np.testing.assert_array_equal(exported.array > 0, tumor.array > 0)
        np.testing.assert_array_equal(segment_mask(node, segment_id, ct), tumor.array > 0)
    # The RAS bounds are those of the voxels themselves (outer edges of the mask's box).
    indices = np.argwhere(tumor.array)[:, ::-1]
    edges = np.array([[*(indices.min(0) - 0.5), 1.0], [*(indices.max(0) + 0.5), 1.0]])
    ras = (ct.index_to_ras @ edges.T).T[:, :3]
    expected = np.stack([ras.min(0), ras.max(0)], axis=1).ravel()
    np.testing.assert_allclose(segment_ras_bounds(crop_node, crop_id), expected, atol=1e-6)


def test_mask_on_a_foreign_grid_keeps_its_own_geometry(mrml_scene, ct, tumor, ct_node):
    # Half-voxel shifted grid: not a sub-grid of the CT; the segment keeps its own geometry.
    shifted = Image(tumor.array, tumor.spacing, tuple(np.add(tumor.origin, (1.5, 0, 0))), tumor.direction, "shifted")
    node = tumor_to_segmentation_node(mrml_scene, shifted, ct_node)
    bounds = segment_ras_bounds(node, tumor_segment_id(node))
    reference = segment_ras_bounds(tumor_to_segmentation_node(mrml_scene, tumor, ct_node), "tumor")
    np.testing.assert_allclose(bounds, reference + np.array([-1.5, -1.5, 0, 0, 0, 0]), atol=1e-6)  # LPS x -> RAS -x


def test_tumor_segment_has_terminology_colour_and_ct_reference(mrml_scene, tumor, ct_node):
    node = tumor_to_segmentation_node(mrml_scene, tumor, ct_node)
    assert node.GetName() == "Case 3 CT tumor segmentation" and node.GetScene() is mrml_scene
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    assert node.GetNodeReference(role).GetID() == ct_node.GetID()
    segment = node.GetSegmentation().GetSegment(tumor_segment_id(node))
    assert segment.GetName() == TUMOR_SEGMENT_NAME and segment.GetColor() == pytest.approx(TUMOR_COLOR)
    assert segment.GetTerminology() == TUMOR_TERMINOLOGY
    entry = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(segment.GetTerminology(), entry)
    assert (entry.GetCategoryObject().GetCodingSchemeDesignator(), entry.GetCategoryObject().GetCodeValue()) == ("SCT", "49755003")
    assert entry.GetCategoryObject().GetCodeMeaning() == "Morphologically Altered Structure"
    assert (entry.GetTypeObject().GetCodingSchemeDesignator(), entry.GetTypeObject().GetCodeValue()) == ("SCT", "86049000")


def test_existing_user_node_keeps_its_other_segments(mrml_scene, ct, tumor, ct_node):
    lesion = np.zeros(ct.shape, bool)
    lesion[60:64, 40:44, 50:54] = True
    stale = np.zeros(ct.shape, bool)
    stale[5:8, 5:8, 5:8] = True
    user = segmentation_from_masks(mrml_scene, ct, {"Lymph node": lesion, TUMOR_SEGMENT_NAME: stale}, "my work")
    segmentation = user.GetSegmentation()
    lesion_id, tumor_id = (segmentation.GetSegmentIdBySegmentName(n) for n in ("Lymph node", TUMOR_SEGMENT_NAME))
    nodes_before = mrml_scene.GetNumberOfNodes()

    out = tumor_to_segmentation_node(mrml_scene, crop_around(tumor).apply(tumor), ct_node, output_node=user)

    assert out is user and mrml_scene.GetNumberOfNodes() == nodes_before
    assert segmentation.GetNumberOfSegments() == 2
    assert tumor_segment_id(user) == tumor_id  # replaced in place, same ID
    np.testing.assert_array_equal(segment_mask(user, lesion_id, ct), lesion)
    np.testing.assert_array_equal(segment_mask(user, tumor_id, ct), tumor.array > 0)


def test_invalid_output_leaves_the_scene_unchanged(mrml_scene, tumor, ct_node):
    nodes_before = mrml_scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="Case 3 CT: is a vtkMRMLScalarVolumeNode, not a segmentation"):
        tumor_to_segmentation_node(mrml_scene, tumor, ct_node, output_node=ct_node)
    assert mrml_scene.GetNumberOfNodes() == nodes_before


# --- statistics -> table ----------------------------------------------------------------
def numpy_statistics(mask: Image) -> dict:
    """Direct computation: voxel count, brute-force in-slice Feret diameter of the voxel corners, z extent."""
    from scipy import ndimage
    from scipy.spatial.distance import pdist

    binary = mask.array > 0
    _, components = ndimage.label(binary, structure=np.ones((3, 3, 3)))
    slices = np.flatnonzero(binary.any(axis=(1, 2)))
    dy, dx = mask.spacing[1], mask.spacing[0]  # axial CT: array axes y, x are in-plane
    diameter = 0.0
    for k in slices:
        centres = np.argwhere(binary[k]).astype(float)
        corners = (centres[:, None, :] + np.array([[-.5, -.5], [-.5, .5], [.5, -.5], [.5, .5]])[None]).reshape(-1, 2)
        diameter = max(diameter, float(pdist(np.unique(corners, axis=0) * (dy, dx)).max()))
    return {
        "volume_ml": binary.sum() * float(np.prod(mask.spacing)) / 1000.0,
        "largest_axial_diameter_mm": diameter,
        "craniocaudal_extent_mm": (slices[-1] - slices[0] + 1) * mask.spacing[2],
        "components": components,
    }


def test_statistics_table_holds_the_numpy_values(mrml_scene, tumor):
    statistics = tumor_statistics(tumor)
    expected = numpy_statistics(tumor)
    for attribute, value in expected.items():
        assert getattr(statistics, attribute) == pytest.approx(value, rel=1e-9), attribute

    table = statistics_to_table_node(mrml_scene, statistics, "tumor statistics")
    row = table_row(table)
    assert row["Segment"] == TUMOR_SEGMENT_NAME
    assert [name for name in row][1:] == [column for column, _, _ in STATISTICS_COLUMNS]
    for column, attribute, unit in STATISTICS_COLUMNS:
        assert row[column] == pytest.approx(getattr(statistics, attribute), rel=1e-12), column
        assert table.GetColumnUnitLabel(column) == unit
    for column, attribute, _ in STATISTICS_COLUMNS:
        assert row[column] == pytest.approx(expected[attribute], rel=1e-9), column

    again = statistics_to_table_node(mrml_scene, statistics, "renamed", table_node=table)  # refilled in place
    assert again is table and table.GetNumberOfRows() == 1 and table.GetName() == "renamed"


# --- export -----------------------------------------------------------------------------
def test_export_writes_readable_seg_nrrd_and_nifti(mrml_scene, ct, tumor, ct_node, tmp_path):
    lesion = np.zeros(ct.shape, bool)
    lesion[60:64, 40:44, 50:54] = True
    user = segmentation_from_masks(mrml_scene, ct, {"Lymph node": lesion}, "Case 3/export")
    node = tumor_to_segmentation_node(mrml_scene, crop_around(tumor).apply(tumor), ct_node, output_node=user)
    files = export_segmentation(node, tmp_path / "out", ct)
    assert files.segmentation.name == "Case_3_export.seg.nrrd" and files.statistics is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Case_3_export.seg.nrrd", "Case_3_export_tumor.nii.gz"]

    label_map = read_image(files.label_map)
    assert label_map.same_grid(ct)
    np.testing.assert_array_equal(label_map.array, (tumor.array > 0).astype(np.uint8))

    back = read_segmentation_file(mrml_scene, files.segmentation)
    assert {back.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)} == {"Lymph node", TUMOR_SEGMENT_NAME}
    back_tumor = back.GetSegmentation().GetSegment(tumor_segment_id(back))
    assert back_tumor.GetTerminology() == TUMOR_TERMINOLOGY
    np.testing.assert_array_equal(segment_mask(back, tumor_segment_id(back), ct), tumor.array > 0)
    lesion_id = back.GetSegmentation().GetSegmentIdBySegmentName("Lymph node")
    np.testing.assert_array_equal(segment_mask(back, lesion_id, ct), lesion)


def test_export_without_a_tumor_segment_is_an_input_error(mrml_scene, ct, tmp_path):
    lesion = np.zeros(ct.shape, bool)
    lesion[60:64, 40:44, 50:54] = True
    user = segmentation_from_masks(mrml_scene, ct, {"Lymph node": lesion}, "no tumor")
    with pytest.raises(InputError, match="no tumor: has no 'Tumor' segment"):
        export_segmentation(user, tmp_path, ct)
    assert not list(tmp_path.iterdir())


# --- guidance from an OrganGuidance segmentation node -----------------------------------
def test_guidance_read_back_from_an_organ_guidance_node(mrml_scene, ct, organs, ts, ct_node):
    label_node = add_volume_node(mrml_scene, organs, "TS organs", labelmap=True)
    settings = OrganGuidanceSettings(primary=OrganSourceChoice(kind="node", node=label_node, convention="totalsegmentator"))
    guidance_node = OrganGuidanceLogic(mrml_scene).process(ct_node, settings)
    expected = run_guidance(ct, [MOSSource(organs, ts)], GuidanceParameters())

    messages = []
    guidance = guidance_from_segmentation_node(guidance_node, ct, ts, messages)
    assert messages == []
    np.testing.assert_array_equal(guidance.ooi.array, expected.ooi.array)
    np.testing.assert_array_equal(guidance.ooi0.array, expected.ooi0.array)
    np.testing.assert_array_equal(guidance.bowel_wall.array, expected.bowel_wall.array)
    np.testing.assert_array_equal(guidance.mos.array, expected.mos.array)
    assert guidance.organ_names == expected.organ_names and guidance.mos.same_grid(ct)
    assert guidance.crop_box == expected.crop_box  # read back from the body-crop ROI


def test_guidance_from_a_user_segmentation_by_names(mrml_scene, ct, organs, ts):
    ooi = np.zeros(ct.shape, bool)
    ooi[30:70, 30:70, 30:70] = True
    masks = {"Colon": organs.array == COLON, "Small bowel": organs.array == 18, "Organs of interest": ooi,
             "Tumour": organs.array == 5}
    user = segmentation_from_masks(mrml_scene, ct, masks, "hand made")
    messages = []
    guidance = guidance_from_segmentation_node(user, ct, ts, messages)
    assert sorted(np.unique(guidance.mos.array)) == [0, 18, COLON]
    np.testing.assert_array_equal(guidance.ooi.array, ooi)
    assert not guidance.bowel_wall.array.any() and guidance.crop_box is None
    assert len(messages) == 1 and "'Tumour'" in messages[0]


def test_guidance_node_without_ooi_is_an_input_error(mrml_scene, ct, organs, ts):
    user = segmentation_from_masks(mrml_scene, ct, {"Colon": organs.array == COLON}, "organs only")
    with pytest.raises(InputError, match="organs only: has no 'Organs of interest' segment"):
        guidance_from_segmentation_node(user, ct, ts)
