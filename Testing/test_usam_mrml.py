"""Point refinement in MRML under slicer-core: markups -> voxels, slice-limited segment updates, undo.

On the real example CT (direction diag(-1, -1, 1), 101 x 122 slices: sign and row/column
mix-ups show). ``DiscModel`` (tumor = disc around each positive point, records what it
gets) checks the wiring exactly; the real random-init U-SAM runs the same path end to end.
"""
from __future__ import annotations

import numpy as np
import pytest
import slicer
import torch
import vtk
from mrml_helpers import segmentation_from_masks
from scipy import ndimage
from usam_stand_ins import CountingModel, DiscModel

from CRCSegmentationLib.logic import PointRefinementLogic
from CRCSegmentationLib.mrml import STATISTICS_REFERENCE_ROLE, table_row, tumor_segment_id, tumor_to_segmentation_node
from CRCSegmentationLib.mrml_points import POINT_ROLE_ATTRIBUTE, point_list_node, prompt_points
from CRCSegmentationLib.usam import slice_to_input, usam_with_sam_weights
from CRCSegmentationLib.usam.refinement import PropagationSettings
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.mrml import add_volume_node, image_from_volume_node
from OrganGuidanceLib.validation import InputError

VOXEL = (70, 40, 60)  # (i, j, k) inside the body, off-centre in both in-plane axes


@pytest.fixture
def ct_node(mrml_scene, ct):
    return add_volume_node(mrml_scene, ct, "CT")


@pytest.fixture
def points(mrml_scene):
    return point_list_node(mrml_scene, "positive"), point_list_node(mrml_scene, "negative")


def voxel_ras(image: Image, i: float, j: float, k: float) -> np.ndarray:
    return (image.index_to_ras @ np.array([i, j, k, 1.0]))[:3]


def exported(scene, node, segment_id, ct_node) -> np.ndarray:
    """Slicer's own export of one segment to the CT grid (independent of the code under test)."""
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "export")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(node, ids, labelmap, ct_node)
    array = image_from_volume_node(labelmap).array > 0
    scene.RemoveNode(labelmap)
    return array


def automatic_result(scene, ct, ct_node):
    """A user segmentation with a "Colon" segment, plus an automatic "Tumor" box over slices 55..64."""
    colon = np.zeros(ct.shape, bool)
    colon[50:70, 30:60, 50:90] = True
    node = segmentation_from_masks(scene, ct, {"Colon": colon}, "Case segmentation")
    tumor = np.zeros(ct.shape, np.uint8)
    tumor[55:65, 35:50, 62:80] = 1
    tumor_to_segmentation_node(scene, ct.with_array(tumor), ct_node, node, ct)
    return node


# --- markups ----------------------------------------------------------------------
def test_point_lists_are_found_by_role_and_coloured(mrml_scene, points):
    positive, negative = points
    assert positive.GetAttribute(POINT_ROLE_ATTRIBUTE) == "positive" and positive.IsA("vtkMRMLMarkupsFiducialNode")
    assert point_list_node(mrml_scene, "positive") is positive and point_list_node(mrml_scene, "negative") is negative
    display = positive.GetDisplayNode()
    if display is not None:  # slicer-core creates one; the code guards for builds that do not
        assert display.GetSelectedColor() == pytest.approx((0.15, 0.80, 0.20))
        assert negative.GetDisplayNode().GetSelectedColor() == pytest.approx((0.90, 0.15, 0.15))
    with pytest.raises(InputError, match="role"):
        point_list_node(mrml_scene, "maybe")


def test_fiducial_at_a_voxel_centre_reaches_the_model_as_that_voxel(mrml_scene, ct, ct_node, points):
    positive, negative = points
    i, j, k = VOXEL
    positive.AddControlPoint(vtk.vtkVector3d(*voxel_ras(ct, i, j, k)))
    negative.AddControlPoint(vtk.vtkVector3d(*voxel_ras(ct, i + 9, j - 5, k)))
    negative.AddControlPoint(vtk.vtkVector3d(*voxel_ras(ct, i, j, k + 3)))  # another slice: ignored
    ras, labels = prompt_points(positive, negative, ct_node, last_role="positive")
    assert labels.tolist() == [0, 0, 1]  # the last placed point last

    model = DiscModel()
    logic = PointRefinementLogic(mrml_scene, model)
    node, result = logic.refine(ct_node, None, positive, negative, last_role="positive")
    assert result.seed_slice == k and result.slice_indices == [k] and result.ignored_points == [1]
    expected_pixels, transform = slice_to_input(ct.array[k].astype(np.float32), model.config.hu_window, 224)
    np.testing.assert_allclose(model.images[0][0].numpy(), expected_pixels, atol=1e-6)  # slice k, not a flipped one
    coords, sam_labels = model.points[0]
    np.testing.assert_allclose(transform.to_slice_xy(coords[0].numpy()), [[i + 9, j - 5], [i, j]], atol=1e-4)
    assert sam_labels[0].tolist() == [0, 1]
    mask = exported(mrml_scene, node, tumor_segment_id(node), ct_node)  # from scratch: a new "Tumor" segment
    assert np.flatnonzero(mask.any(axis=(1, 2))).tolist() == [k] and mask[k, j, i]


def check_statistics_table(node, tumor: np.ndarray, ct) -> None:
    """The segmentation's statistics table follows the refined tumor (volume and components from numpy)."""
    table = node.GetNodeReference(STATISTICS_REFERENCE_ROLE)
    assert table is not None
    row = table_row(table)
    assert row["Volume"] == pytest.approx(tumor.sum() * np.prod(ct.spacing) / 1000.0)
    assert row["Components"] == ndimage.label(tumor, structure=np.ones((3, 3, 3)))[1]


def test_refinement_replaces_only_its_slices_and_undo_restores_exactly(mrml_scene, ct, ct_node, points):
    positive, negative = points
    node = automatic_result(mrml_scene, ct, ct_node)
    tumor_id = tumor_segment_id(node)
    colon_id = node.GetSegmentation().GetSegmentIdBySegmentName("Colon")
    before_tumor = exported(mrml_scene, node, tumor_id, ct_node)
    before_colon = exported(mrml_scene, node, colon_id, ct_node)
    logic = PointRefinementLogic(mrml_scene, DiscModel(radius=8.0))

    i, j, k = VOXEL
    positive.AddControlPoint(vtk.vtkVector3d(*voxel_ras(ct, i, j, k)))
    _, clicked = logic.refine(ct_node, node, positive, negative, last_role="positive")
    after = exported(mrml_scene, node, tumor_id, ct_node)
    changed = np.flatnonzero((after != before_tumor).any(axis=(1, 2))).tolist()
    assert changed == [k] and np.array_equal(after[k], clicked.slices[k])
    keep = np.ones(ct.shape[0], bool)
    keep[k] = False
    assert np.array_equal(after[keep], before_tumor[keep])

    _, propagated = logic.propagate(ct_node, node, settings=PropagationSettings(max_distance_mm=6.0))
    assert propagated.slice_indices == [k - 2, k - 1, k + 1, k + 2]  # 3 mm slices; the disc never vanishes
    after_propagation = exported(mrml_scene, node, tumor_id, ct_node)
    changed = np.flatnonzero((after_propagation != after).any(axis=(1, 2))).tolist()
    assert set(changed) <= set(propagated.slice_indices) and changed
    for index, mask in propagated.slices.items():
        assert np.array_equal(after_propagation[index], mask)
    assert np.array_equal(exported(mrml_scene, node, colon_id, ct_node), before_colon)  # other segments untouched

    check_statistics_table(node, after_propagation, ct)

    assert logic.undo() and np.array_equal(exported(mrml_scene, node, tumor_id, ct_node), after)
    check_statistics_table(node, after, ct)
    assert logic.undo() and np.array_equal(exported(mrml_scene, node, tumor_id, ct_node), before_tumor)
    check_statistics_table(node, before_tumor, ct)
    assert not logic.undo()
    assert np.array_equal(exported(mrml_scene, node, colon_id, ct_node), before_colon)


def test_bad_inputs_get_clear_errors(mrml_scene, ct, ct_node, points, tmp_path):
    positive, negative = points
    logic = PointRefinementLogic(mrml_scene)
    with pytest.raises(InputError, match="no model"):
        logic.refine(ct_node, None, positive, negative)
    with pytest.raises(InputError, match="no file chosen"):
        logic.load_model("")
    with pytest.raises(InputError, match="no such checkpoint file or bundle folder"):
        logic.load_model(str(tmp_path / "usam.pt"))
    with pytest.raises(InputError, match="not_a_model"):
        logic.load_model("not_a_model")  # neither a file nor a catalogue name
    logic.set_model(DiscModel())
    positive.AddControlPoint(vtk.vtkVector3d(*voxel_ras(ct, 10, 10, ct.shape[0] + 2)))  # above the volume
    with pytest.raises(InputError, match="outside the volume CT"):
        logic.refine(ct_node, None, positive, negative)
    with pytest.raises(InputError, match="refine a slice first"):
        logic.propagate(ct_node, None)


def test_real_usam_end_to_end_respects_the_limit_and_touches_only_its_slices(mrml_scene, ct, ct_node, points):
    """Random-init U-SAM: its masks mean nothing, but it must run through the same path and keep to the rules."""
    positive, negative = points
    torch.manual_seed(0)
    usam, _ = usam_with_sam_weights()
    model = CountingModel(usam.eval())
    node = automatic_result(mrml_scene, ct, ct_node)
    tumor_id = tumor_segment_id(node)
    before = exported(mrml_scene, node, tumor_id, ct_node)
    logic = PointRefinementLogic(mrml_scene, model)
    k = 60  # an automatic-tumor slice: propagate from it
    _, result = logic.propagate(ct_node, node, slice_index=k,
                                settings=PropagationSettings(max_distance_mm=3.0, keep_connected=False))
    # 3 mm slices, 3 mm limit: one slice each way at most; random logits leave tumor pixels (not vacuous).
    assert result.slices and set(result.slices) <= {k - 1, k + 1} and (model.encodes, model.decodes) == (2, 2)
    after = exported(mrml_scene, node, tumor_id, ct_node)
    changed = set(np.flatnonzero((after != before).any(axis=(1, 2))).tolist())
    assert changed <= set(result.slices)
    for index, mask in result.slices.items():
        assert np.array_equal(after[index], mask)
    positive.AddControlPoint(vtk.vtkVector3d(*voxel_ras(ct, 75, 45, k)))
    logic.refine(ct_node, node, positive, negative, last_role="positive")
    assert (model.encodes, model.decodes) == (3, 3)
    while logic.undo():
        pass
    assert np.array_equal(exported(mrml_scene, node, tumor_id, ct_node), before)
