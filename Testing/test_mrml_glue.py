"""MRML glue under slicer-core (real MRML classes, no mocks) on the real example CT."""
from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk
from mrml_helpers import segmentation_from_masks

from OrganGuidanceLib import mrml
from OrganGuidanceLib.crop import CropBox
from OrganGuidanceLib.guidance import MOSSource, run_guidance
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.labels import load_convention
from OrganGuidanceLib.morphology import bounding_box
from OrganGuidanceLib.mrml import (
    BOWEL_WALL_SEGMENT_NAME,
    OOI_SEGMENT_NAME,
    ORGAN_COLORS,
    add_volume_node,
    crop_box_to_roi_node,
    guidance_to_segmentation_node,
    image_from_volume_node,
    label_image_from_node,
    new_scene,
    organ_display_name,
    segment_label_value,
    segment_mask,
    update_volume_node_from_image,
)
from OrganGuidanceLib.validation import InputError

COLON = 20  # TotalSegmentator v2 `total` id (see shared/data/README.md)





@pytest.fixture(scope="module")
def result(ct, organs, ts):
    return run_guidance(ct, [MOSSource(organs, ts)])


def ras_bounds(image: Image) -> np.ndarray:
    """Outer voxel-edge bounds (xmin, xmax, ymin, ymax, zmin, zmax) in RAS, from the Image alone."""
    nz, ny, nx = image.shape
    corners = np.array([[i, j, k, 1.0] for i in (-0.5, nx - 0.5) for j in (-0.5, ny - 0.5) for k in (-0.5, nz - 0.5)])
    ras = (image.index_to_ras @ corners.T).T[:, :3]
    return np.stack([ras.min(axis=0), ras.max(axis=0)], axis=1).ravel()


def node_ras_bounds(node) -> np.ndarray:
    bounds = [0.0] * 6
    node.GetRASBounds(bounds)
    return np.array(bounds)



def segment_id(node, name: str) -> str:
    return node.GetSegmentation().GetSegmentIdBySegmentName(name)


# --- volumes ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "source, direction",
    [("ts_example_ct.nii.gz", np.diag([-1.0, -1.0, 1.0])), ("ts_example_ct_dicom", np.eye(3))],
)
def test_volume_round_trip_keeps_voxels_and_geometry(mrml_scene, shared_data, source, direction):
    image = read_image(shared_data / source)
    np.testing.assert_array_equal(image.direction, direction)
    node = add_volume_node(mrml_scene, image, "CT")
    back = image_from_volume_node(node)
    assert back.name == "CT" and back.array.dtype == image.array.dtype
    np.testing.assert_array_equal(back.array, image.array)
    np.testing.assert_allclose(back.spacing, image.spacing, rtol=0, atol=1e-9)
    np.testing.assert_allclose(back.origin, image.origin, rtol=0, atol=1e-9)
    np.testing.assert_allclose(back.direction, image.direction, rtol=0, atol=1e-12)
    np.testing.assert_allclose(node_ras_bounds(node), ras_bounds(image), rtol=0, atol=1e-6)


def test_oblique_anisotropic_geometry_round_trips(mrml_scene):
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    image = Image(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6), (0.7, 0.8, 2.5), (10.0, -20.0, 30.0), rotation, "oblique")
    back = image_from_volume_node(add_volume_node(mrml_scene, image))
    assert back.same_grid(image, tolerance_mm=1e-9)
    np.testing.assert_allclose(back.direction, rotation, atol=1e-12)
    np.testing.assert_array_equal(back.array, image.array)


def test_volume_types_vtk_lacks_are_converted():
    node = slicer.vtkMRMLLabelMapVolumeNode()
    update_volume_node_from_image(node, Image(np.ones((2, 3, 4), dtype=bool)))
    assert image_from_volume_node(node).array.dtype == np.uint8
    update_volume_node_from_image(node, Image(np.full((2, 3, 4), 7, dtype=np.int64)))
    back = image_from_volume_node(node)
    assert back.array.dtype == np.int32 and back.array.max() == 7


def test_empty_volume_node_is_an_input_error():
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName("nothing loaded")
    with pytest.raises(InputError, match="nothing loaded: volume node has no voxels"):
        image_from_volume_node(node)


# --- segmentations -> label maps -----------------------------------------------------
@pytest.mark.parametrize(
    "name, ts_value, word_value",
    [("colon", 20, 10), ("Colon", 20, 10), ("small bowel", 18, 11), ("small_bowel", 18, 11),
     ("Small intestine", 18, 11), ("Rectum", 20, 13), ("Urinary bladder", 21, None), ("Tumour", None, None)],
)
def test_segment_names_map_to_convention_labels(ts, name, ts_value, word_value):
    assert segment_label_value(name, ts) == ts_value
    assert segment_label_value(name, load_convention("word")) == word_value


def test_colon_mask_round_trips_voxel_exact_through_a_segmentation(mrml_scene, ct, organs, ts):
    colon = organs.array == COLON
    node = segmentation_from_masks(mrml_scene, ct, {"Colon": colon}, "user colon")
    labels = label_image_from_node(node, ct, ts)
    assert labels.same_grid(ct) and labels.name == "user colon"
    np.testing.assert_array_equal(labels.array, colon * COLON)


def test_segment_on_a_cropped_grid_is_exported_on_the_ct_grid(mrml_scene, ct, organs, ts):
    colon = organs.with_array((organs.array == COLON).astype(np.uint8))
    tight = bounding_box(colon.array)
    box = CropBox(tuple(max(0, s.start - 2) for s in tight), tuple(s.stop for s in tight), ct.shape)
    assert box.shape != ct.shape and box.start != (0, 0, 0)  # a real sub-grid with another origin
    label = add_volume_node(mrml_scene, box.apply(colon), "cropped colon", labelmap=True)
    node = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "cropped")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label, node)
    node.GetSegmentation().GetNthSegment(0).SetName("colon")
    np.testing.assert_array_equal(label_image_from_node(node, ct, ts).array, colon.array * COLON)


def test_closed_surface_segmentation_is_converted_to_a_labelmap(mrml_scene, ct, organs, ts):
    colon = organs.array == COLON
    node = segmentation_from_masks(mrml_scene, ct, {"colon": colon}, "surface colon")
    segmentation = node.GetSegmentation()
    surface = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    assert segmentation.CreateRepresentation(surface)  # needs the converter rules of the fixture
    segmentation.SetSourceRepresentationName(surface)
    segmentation.RemoveRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    labels = label_image_from_node(node, ct, ts).array == COLON
    dice = 2 * np.count_nonzero(labels & colon) / (np.count_nonzero(labels) + np.count_nonzero(colon))
    assert dice > 0.9  # a surface round trip is not voxel-exact


def test_label_map_node_is_converted_as_is(mrml_scene, ct, organs, ts):
    node = add_volume_node(mrml_scene, organs, "organ labels", labelmap=True)
    labels = label_image_from_node(node, ct, ts)
    assert labels.same_grid(organs)
    np.testing.assert_array_equal(labels.array, organs.array)


def test_unknown_segments_are_skipped_with_a_warning(mrml_scene, ct, organs, ts, caplog):
    tumour = np.zeros(ct.shape, dtype=bool)
    tumour[40:45, 50:55, 60:65] = True
    node = segmentation_from_masks(
        mrml_scene, ct, {"Small bowel": organs.array == 18, "Tumour": tumour, "colon": organs.array == COLON}, "mixed"
    )
    messages = []
    labels = label_image_from_node(node, ct, ts, messages)
    assert sorted(np.unique(labels.array)) == [0, 18, COLON]
    assert np.count_nonzero(labels.array == 18) == np.count_nonzero(organs.array == 18)
    assert "'Tumour'" in caplog.text and len(messages) == 1 and "mixed" in messages[0]


def test_segmentation_without_organ_segments_is_an_input_error(mrml_scene, ct, ts):
    tumour, node_mask = np.zeros(ct.shape, bool), np.zeros(ct.shape, bool)
    tumour[40:45, 50:55, 60:65] = node_mask[20:22, 30:32, 40:42] = True
    masks = {"Tumour": tumour, "Lymph node": node_mask}
    node = segmentation_from_masks(mrml_scene, ct, masks, "lesions only")
    with pytest.raises(InputError, match=r"lesions only: none of its segments \('Tumour', 'Lymph node'\)"):
        label_image_from_node(node, ct, ts)


def test_wrong_node_type_is_an_input_error(mrml_scene, ct, ts):
    roi = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "a box")
    with pytest.raises(InputError, match="a box: is a vtkMRMLMarkupsROINode"):
        label_image_from_node(roi, ct, ts)


# --- guidance result -> segmentation node ------------------------------------------------
def test_guidance_segments_are_named_coloured_and_exact(mrml_scene, ct, result):
    ct_node = add_volume_node(mrml_scene, ct, "Case 7")
    node = guidance_to_segmentation_node(mrml_scene, result, ct_node)
    assert node.GetName() == "Case 7 organ guidance" and node.GetScene() is not None
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    assert node.GetNodeReference(role).GetID() == ct_node.GetID()
    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    organ_names = [organ_display_name(result.organ_names[v]) for v in sorted(result.organ_names)]
    assert names == organ_names + [OOI_SEGMENT_NAME, BOWEL_WALL_SEGMENT_NAME]
    assert {"colon", "small bowel", "stomach", "duodenum", "urinary bladder"} <= set(names)
    assert segmentation.GetNumberOfLayers() == 3  # all organs share one layer
    assert segmentation.GetSegment(segment_id(node, "colon")).GetColor() == ORGAN_COLORS["colon"]
    assert segmentation.GetSegment(segment_id(node, "urinary bladder")).GetColor() == ORGAN_COLORS["urinary_bladder"]

    for name, expected in ((OOI_SEGMENT_NAME, result.ooi.array), (BOWEL_WALL_SEGMENT_NAME, result.bowel_wall.array),
                           ("colon", result.mos.array == COLON), ("small bowel", result.mos.array == 18)):
        mask = segment_mask(node, segment_id(node, name), ct)
        assert np.count_nonzero(mask) == np.count_nonzero(expected) > 0, name
        np.testing.assert_array_equal(mask, expected.astype(bool))


def test_slicer_export_of_the_segments_matches_the_result(mrml_scene, ct, result):
    ct_node = add_volume_node(mrml_scene, ct, "CT")
    node = guidance_to_segmentation_node(mrml_scene, result, ct_node)
    for name, expected in ((OOI_SEGMENT_NAME, result.ooi.array), (BOWEL_WALL_SEGMENT_NAME, result.bowel_wall.array)):
        labelmap = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "export")
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id(node, name))
        assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(node, ids, labelmap, ct_node)
        exported = image_from_volume_node(labelmap)
        assert exported.same_grid(ct)
        np.testing.assert_array_equal(exported.array > 0, expected)


def test_existing_output_node_keeps_the_users_segments(mrml_scene, ct, result):
    ct_node = add_volume_node(mrml_scene, ct, "CT")
    tumour = np.zeros(ct.shape, dtype=bool)
    tumour[30:40, 40:50, 50:60] = True
    stale_wall = np.zeros(ct.shape, dtype=bool)
    stale_wall[5:8, 5:8, 5:8] = True
    user = segmentation_from_masks(mrml_scene, ct, {"My tumour": tumour, BOWEL_WALL_SEGMENT_NAME: stale_wall}, "my work")
    segmentation = user.GetSegmentation()
    tumour_id, wall_id = segment_id(user, "My tumour"), segment_id(user, BOWEL_WALL_SEGMENT_NAME)
    segmentation.GetSegment(tumour_id).SetColor(0.1, 0.2, 0.3)
    nodes_before = mrml_scene.GetNumberOfNodes()

    out = guidance_to_segmentation_node(mrml_scene, result, ct_node, output_node=user)

    assert out is user and user.GetName() == "my work" and mrml_scene.GetNumberOfNodes() == nodes_before
    tumour_segment = segmentation.GetSegment(tumour_id)
    assert tumour_segment.GetName() == "My tumour" and tumour_segment.GetColor() == (0.1, 0.2, 0.3)
    np.testing.assert_array_equal(segment_mask(user, tumour_id, ct), tumour)
    assert segment_id(user, BOWEL_WALL_SEGMENT_NAME) == wall_id  # replaced in place, same ID
    np.testing.assert_array_equal(segment_mask(user, wall_id, ct), result.bowel_wall.array)
    count = segmentation.GetNumberOfSegments()
    assert count == 2 + len(result.organ_names) + 1  # user's 2 + organs + OOI (bowel wall replaced)

    guidance_to_segmentation_node(mrml_scene, result, ct_node, output_node=user)  # a re-run adds nothing
    assert segmentation.GetNumberOfSegments() == count
    np.testing.assert_array_equal(segment_mask(user, tumour_id, ct), tumour)


def test_invalid_output_node_leaves_the_scene_unchanged(mrml_scene, ct, result):
    ct_node = add_volume_node(mrml_scene, ct, "CT")
    nodes_before = mrml_scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="CT: is a vtkMRMLScalarVolumeNode, not a segmentation"):
        guidance_to_segmentation_node(mrml_scene, result, ct_node, output_node=ct_node)
    assert mrml_scene.GetNumberOfNodes() == nodes_before


# --- crop box -> ROI ----------------------------------------------------------------
def test_roi_covers_the_crop_box(mrml_scene, ct, result):
    roi = crop_box_to_roi_node(mrml_scene, result.crop_box, ct, "body crop")
    assert roi.GetScene() is not None and roi.GetName() == "body crop"
    np.testing.assert_allclose(node_ras_bounds(roi), ras_bounds(result.crop_box.apply(ct)), atol=1e-4)


def test_roi_on_an_identity_direction_series_is_axis_aligned(mrml_scene, shared_data):
    image = read_image(shared_data / "ts_example_ct_dicom")
    box = CropBox((2, 100, 50), (18, 400, 300), image.shape)
    roi = crop_box_to_roi_node(mrml_scene, box, image, "dicom crop")
    np.testing.assert_allclose(node_ras_bounds(roi), ras_bounds(box.apply(image)), atol=1e-4)
    matrix = np.array([[roi.GetObjectToNodeMatrix().GetElement(r, c) for c in range(3)] for r in range(3)])
    np.testing.assert_array_equal(matrix, np.eye(3))


def test_roi_of_an_oblique_image_is_rotated_with_it(mrml_scene):
    angle = np.deg2rad(20)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    image = Image(np.zeros((10, 12, 14), np.int16), (1.0, 1.5, 3.0), (5.0, 6.0, 7.0), rotation, "oblique")
    box = CropBox((2, 3, 4), (8, 9, 10), image.shape)
    roi = crop_box_to_roi_node(mrml_scene, box, image, "oblique crop")
    np.testing.assert_allclose(node_ras_bounds(roi), ras_bounds(box.apply(image)), atol=1e-4)
    np.testing.assert_allclose(roi.GetSize(), (6.0, 9.0, 18.0), atol=1e-9)


def test_converter_rules_are_registered_once(monkeypatch):
    new_scene()
    monkeypatch.setattr(mrml, "_rules_registered", False)  # as in Slicer, where the app registered them
    new_scene()
    names = [rule.GetClassName() for rule in slicer.vtkSegmentationConverterFactory.GetInstance().GetConverterRules()]
    assert names.count("vtkBinaryLabelmapToClosedSurfaceConversionRule") == 1
    assert names.count("vtkClosedSurfaceToBinaryLabelmapConversionRule") == 1
