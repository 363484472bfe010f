"""Box, scribble and lasso markups placed in RAS become the expected pixel prompts on the expected slice.

Under slicer-core, on the real CT series ``ts_example_ct_dicom`` (20 slices of 512 x 512, 2 mm) and on an
oblique synthetic volume (rotated 25 degrees about R-L and 15 about S: an axis-aligned reading of RAS
would hit other pixels and other slices). Markups are placed at RAS positions computed from voxel indices
with the volume node's own IJK-to-RAS matrix (Slicer's, not the code under test); the prompts must come
back as those voxels' pixels. ROI = box, open curve = scribble, closed curve = lasso, point lists as today.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import vtk

from CRCSegmentationLib.mrml_points import (
    POINT_ROLE_ATTRIBUTE,
    PROMPT_ROLE_ATTRIBUTE,
    SHAPE_ROLES,
    gather_prompt,
    new_box_node,
    new_lasso_node,
    new_prompt_node,
    new_scribble_node,
    placed_prompts,
    point_list_node,
    prompt_nodes,
    prompt_role,
    remove_shape_nodes,
    view_slice_index,
)
from CRCSegmentationLib.usam.shapes import polygon_mask
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.mrml import add_volume_node, image_from_volume_node
from OrganGuidanceLib.validation import InputError


# --- placing markups at voxels (through Slicer's own matrix) ---------------------------
def node_matrix(ct_node, name: str = "IJKToRAS") -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    getattr(ct_node, f"Get{name}Matrix")(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ras(ct_node, ijk, world: np.ndarray = None) -> np.ndarray:
    """RAS (world, when the CT sits under ``world``) of continuous voxel indices (N x 3)."""
    ijk = np.asarray(ijk, dtype=float).reshape(-1, 3)
    points = (node_matrix(ct_node) @ np.c_[ijk, np.ones(len(ijk))].T).T
    return (points @ world.T)[:, :3] if world is not None else points[:, :3]


def place_curve(node, points_ras) -> None:
    for point in np.asarray(points_ras, dtype=float):
        node.AddControlPoint(vtk.vtkVector3d(*point))


def place_box(roi, ct_node, low_ijk, high_ijk, world: np.ndarray = None) -> None:
    """A ROI rotated with the volume (as Slicer's "rotate to volume plane" draws it) over voxels
    ``low_ijk``..``high_ijk`` (their outer edges); a thin ROI when low and high share a slice."""
    low, high = np.asarray(low_ijk, float) - 0.5, np.asarray(high_ijk, float) + 0.5
    if low[2] + 0.5 == high[2] - 0.5:
        low[2] = high[2] = low[2] + 0.5  # drawn on one slice: no thickness
    to_ras = node_matrix(ct_node) if world is None else world @ node_matrix(ct_node)
    spacing = np.linalg.norm(to_ras[:3, :3], axis=0)
    object_to_node = np.eye(4)
    object_to_node[:3, :3] = to_ras[:3, :3] / spacing
    object_to_node[:3, 3] = (to_ras @ np.r_[(low + high) / 2, 1.0])[:3]
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, object_to_node[r, c])
    roi.SetAndObserveObjectToNodeMatrix(matrix)
    roi.SetSize(*((high - low) * spacing))


def inside_pixels(prompt, ijk_polygon) -> None:
    inside = polygon_mask(np.asarray(ijk_polygon)[:, :2], (512, 512))
    assert 1 <= len(prompt.xy) <= 3 and all(inside[int(y), int(x)] for x, y in prompt.xy)


# --- fixtures ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def dicom_ct(shared_data) -> Image:
    return read_image(shared_data / "ts_example_ct_dicom", name="dicom CT")


@pytest.fixture
def dicom_node(mrml_scene, dicom_ct):
    return add_volume_node(mrml_scene, dicom_ct, "CT")


def oblique_image() -> Image:
    a, b = np.deg2rad(25.0), np.deg2rad(15.0)
    about_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    about_z = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return Image(np.zeros((30, 70, 90), np.int16), (0.7, 0.9, 2.5), (-20.0, 35.0, -110.0), about_z @ about_x, "oblique CT")


# --- the real CT -------------------------------------------------------------------
def test_box_scribble_and_lasso_on_the_real_ct(mrml_scene, dicom_ct, dicom_node):
    image = image_from_volume_node(dicom_node)
    roi = new_box_node(mrml_scene)
    place_box(roi, dicom_node, (200, 300, 12), (260, 340, 12))
    box = gather_prompt(image, [roi], dicom_node)
    assert box.slice_index == 12 and len(box.xy) == 0
    np.testing.assert_array_equal(box.box, [200, 300, 260, 340])

    scribble = new_scribble_node(mrml_scene, positive=False)
    place_curve(scribble, ras(dicom_node, [(230, 310, 9), (230, 310 + 20 / 0.9765625, 9)]))  # 20 mm along A-P
    prompt = gather_prompt(image, [scribble], dicom_node)
    assert prompt.slice_index == 9 and prompt.box is None and prompt.labels.tolist() == [0] * 5
    np.testing.assert_allclose(prompt.xy, [[230, 310 + n * 5 / 0.9765625] for n in range(5)], atol=1e-4)

    lasso = new_lasso_node(mrml_scene)
    outline = [(200.2, 300.2, 15), (240.7, 300.2, 15), (240.7, 330.6, 15), (220, 345.4, 15), (200.2, 330.6, 15)]
    place_curve(lasso, ras(dicom_node, outline))
    prompt = gather_prompt(image, [lasso], dicom_node)
    assert prompt.slice_index == 15 and prompt.labels.tolist() == [1] * len(prompt.xy)
    np.testing.assert_array_equal(prompt.box, [201, 301, 240, 345])  # pixel centres inside the outline
    inside_pixels(prompt, outline)


def test_one_prompt_gathers_the_nodes_on_one_slice(mrml_scene, dicom_node):
    image = image_from_volume_node(dicom_node)
    positive, negative = point_list_node(mrml_scene, "positive"), point_list_node(mrml_scene, "negative")
    positive.AddControlPoint(vtk.vtkVector3d(*ras(dicom_node, (225, 320, 5))[0]))  # another slice: left out
    positive.AddControlPoint(vtk.vtkVector3d(*ras(dicom_node, (228, 322, 12))[0]))
    negative.AddControlPoint(vtk.vtkVector3d(*ras(dicom_node, (250, 338, 12))[0]))
    roi = new_box_node(mrml_scene)
    place_box(roi, dicom_node, (200, 300, 10), (260, 340, 14))  # a thick ROI: prompts every slice it crosses
    scribble = new_scribble_node(mrml_scene, positive=False)
    place_curve(scribble, ras(dicom_node, [(205, 336, 12), (215, 336, 12)]))
    lasso = new_lasso_node(mrml_scene)
    place_curve(lasso, ras(dicom_node, [(100, 100, 3), (140, 100, 3), (140, 140, 3)]))  # slice 3: left out

    nodes = prompt_nodes(mrml_scene, last=positive)  # the point just placed decides the slice
    assert nodes[-1] is positive and len(nodes) == 5
    placed = placed_prompts(image, nodes, dicom_node)
    assert placed.slice_index == 12
    assert sorted(placed.ignored) == sorted([f"{positive.GetName()} point 1", lasso.GetName()])
    prompt = gather_prompt(image, nodes, dicom_node)
    # node order, the point just placed last: the negative point, the scribble's 3 points (9.8 mm), the positive one
    assert prompt.slice_index == 12 and prompt.labels.tolist() == [0, 0, 0, 0, 1]
    np.testing.assert_allclose(prompt.xy[0], [250, 338], atol=1e-6)
    np.testing.assert_allclose(prompt.xy[-1], [228, 322], atol=1e-6)
    np.testing.assert_array_equal(prompt.box, [200, 300, 260, 340])

    on_14 = gather_prompt(image, nodes, dicom_node, slice_index=14)  # the ROI alone reaches slice 14
    assert on_14.slice_index == 14 and len(on_14.xy) == 0 and on_14.box is not None
    # A lasso drawn later on the slice replaces the ROI's box (SAM takes one box); the ROI is reported.
    redrawn = new_lasso_node(mrml_scene)
    place_curve(redrawn, ras(dicom_node, [(210, 305, 12), (230, 305, 12), (230, 325, 12), (210, 325, 12)]))
    placed = placed_prompts(image, prompt_nodes(mrml_scene, last=redrawn), dicom_node)
    assert placed.slice_index == 12 and placed.superseded == [roi.GetName()]
    prompt = gather_prompt(image, prompt_nodes(mrml_scene, last=redrawn), dicom_node)
    np.testing.assert_array_equal(prompt.box, [210, 305, 230, 325])
    assert prompt.labels.tolist() == [1, 0, 0, 0, 0] + [1] * (len(prompt.labels) - 5)  # points, scribble, lasso
    with pytest.raises(InputError, match="nothing placed on slice 2 .placed elsewhere: .*point 1"):
        gather_prompt(image, nodes, dicom_node, slice_index=2)
    with pytest.raises(InputError, match="nothing placed"):
        gather_prompt(image, [new_scribble_node(mrml_scene)], dicom_node)


def test_a_curve_across_slices_is_refused_naming_it(mrml_scene, dicom_node):
    image = image_from_volume_node(dicom_node)
    scribble = new_scribble_node(mrml_scene)
    place_curve(scribble, ras(dicom_node, [(230, 310, 2), (230, 330, 15)]))  # 26 mm head to foot
    with pytest.raises(InputError, match=re.escape(f"scribble '{scribble.GetName()}': spans 26.0 mm across the axial slices")):
        gather_prompt(image, [scribble], dicom_node)


def test_the_view_slice_is_the_slice_at_its_centre(mrml_scene, dicom_node):
    image = image_from_volume_node(dicom_node)
    view = mrml_scene.AddNewNodeByClass("vtkMRMLSliceNode", "Red")
    centre = ras(dicom_node, (256, 256, 7.3))[0]
    view.GetSliceToRAS().SetElement(0, 3, centre[0])
    view.GetSliceToRAS().SetElement(1, 3, centre[1])
    view.GetSliceToRAS().SetElement(2, 3, centre[2])
    assert view_slice_index(image, view, dicom_node) == 7
    view.GetSliceToRAS().SetElement(2, 3, centre[2] + 100.0)
    with pytest.raises(InputError, match="outside the 20 axial slices"):
        view_slice_index(image, view, dicom_node)


# --- an oblique volume, and a CT under a transform ------------------------------------
@pytest.mark.parametrize("under_transform", [False, True])
def test_markups_on_an_oblique_volume_become_its_pixels(mrml_scene, under_transform):
    ct_node = add_volume_node(mrml_scene, oblique_image())
    world = None
    if under_transform:  # the CT registered elsewhere: markups are placed in world coordinates
        angle = np.deg2rad(10.0)
        world = np.eye(4)
        world[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
        world[:3, 3] = (12.0, -7.0, 30.0)
        transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        matrix = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, world[r, c])
        transform.SetMatrixTransformToParent(matrix)
        ct_node.SetAndObserveTransformNodeID(transform.GetID())
    image = image_from_volume_node(ct_node)
    assert image.axial_axis == 0 and not np.allclose(image.direction, np.eye(3))

    roi = new_box_node(mrml_scene)
    place_box(roi, ct_node, (20, 15, 14), (50, 40, 14), world)
    prompt = gather_prompt(image, [roi], ct_node)
    assert prompt.slice_index == 14
    np.testing.assert_array_equal(prompt.box, [20, 15, 50, 40])

    scribble = new_scribble_node(mrml_scene)
    place_curve(scribble, ras(ct_node, [(30, 20, 17), (30 + 10 / 0.7, 20, 17)], world))  # 10 mm along i
    prompt = gather_prompt(image, [scribble], ct_node)
    assert prompt.slice_index == 17 and prompt.labels.tolist() == [1, 1, 1]
    np.testing.assert_allclose(prompt.xy, [[30, 20], [30 + 5 / 0.7, 20], [30 + 10 / 0.7, 20]], atol=1e-4)

    lasso = new_lasso_node(mrml_scene)
    outline = [(40.5, 10.5, 8), (70.5, 10.5, 8), (70.5, 50.5, 8), (40.5, 50.5, 8)]
    place_curve(lasso, ras(ct_node, outline, world))
    prompt = gather_prompt(image, [lasso], ct_node)
    assert prompt.slice_index == 8
    np.testing.assert_array_equal(prompt.box, [41, 11, 70, 50])
    assert all(41 <= x <= 70 and 11 <= y <= 50 for x, y in prompt.xy) and 1 <= len(prompt.xy) <= 3


# --- the nodes the panel places into ---------------------------------------------------
def test_prompt_nodes_are_named_coloured_and_found(mrml_scene):
    scribble, eraser = new_scribble_node(mrml_scene, True), new_scribble_node(mrml_scene, False)
    assert scribble.IsA("vtkMRMLMarkupsCurveNode") and not scribble.IsA("vtkMRMLMarkupsClosedCurveNode")
    assert scribble.GetAttribute(PROMPT_ROLE_ATTRIBUTE) == "scribble" and prompt_role(eraser) == "negative scribble"
    assert scribble.GetName().startswith("Tumor scribble (+)") and eraser.GetName().startswith("Not tumor scribble (-)")
    assert scribble.GetCurveTypeAsString(scribble.GetCurveType()).lower() == "linear"  # the strokes as drawn
    display = eraser.GetDisplayNode()
    if display is not None:  # slicer-core creates one; the code guards for builds that do not
        assert display.GetSelectedColor() == pytest.approx(SHAPE_ROLES["negative scribble"][2])
    kinds = {mode: new_prompt_node(mrml_scene, mode).GetClassName() for mode in ("positive", "negative", "box", "scribble", "lasso")}
    assert kinds == {"positive": "vtkMRMLMarkupsFiducialNode", "negative": "vtkMRMLMarkupsFiducialNode",
                     "box": "vtkMRMLMarkupsROINode", "scribble": "vtkMRMLMarkupsCurveNode",
                     "lasso": "vtkMRMLMarkupsClosedCurveNode"}
    assert new_prompt_node(mrml_scene, "positive") is point_list_node(mrml_scene, "positive")  # one list per role
    assert point_list_node(mrml_scene, "negative").GetAttribute(POINT_ROLE_ATTRIBUTE) == "negative"
    with pytest.raises(InputError, match="prompt mode"):
        new_prompt_node(mrml_scene, "brush")

    unrelated = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsClosedCurveNode", "someone's curve")
    assert prompt_role(unrelated) == "lasso" and unrelated not in prompt_nodes(mrml_scene)  # found only when given
    nodes = prompt_nodes(mrml_scene, last=scribble)
    assert nodes[-1] is scribble and nodes.count(scribble) == 1 and len(nodes) == 7
    assert remove_shape_nodes(mrml_scene) == 5  # two scribbles and the box, scribble, lasso of the modes
    assert [prompt_role(node) for node in prompt_nodes(mrml_scene)] == ["positive", "negative"]
