"""One prompt to 3D in MRML under slicer-core: the segment gets only the changed slices; undo and redo.

On a generated CT phantom (``CRCTraining.data.phantoms_ct``, a seed the demonstration model never
saw). The 3D Dice needs a trained U-SAM: the shipped ``demo_usam_phantom`` (skipped, naming it,
while it is not shipped). The history (prompts, box, negatives, propagation; undo and redo voxel
for voxel) runs with ``GroundTruthSliceModel``, an ideal point/box-prompted segmenter of the
phantom; the speed of one prompt to 3D over 20 slices is measured with the small U-SAM preset.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import slicer
import torch
import vtk
from usam_stand_ins import GroundTruthSliceModel, TumorBiasedModel

from CRCSegmentationLib.logic import PointRefinementLogic
from CRCSegmentationLib.mrml import tumor_segment_id, tumor_to_segmentation_node
from CRCSegmentationLib.mrml_points import point_list_node
from CRCSegmentationLib.usam.refinement import InteractiveSegmenter, PropagationSettings, SlicePoints
from CRCTraining.data.phantoms_ct import make_phantom_case
from OrganGuidanceLib.mrml import add_volume_node, image_from_volume_node

HELD_OUT_SEED = 2027  # phantoms_ct seeds its cases from (seed, index); the demonstration model trained on others
DEMO_MODEL = "demo_usam_phantom"


@pytest.fixture(scope="module")
def phantom():
    return make_phantom_case(0, seed=HELD_OUT_SEED)  # 40 x 96 x 96, 2.9 x 2.9 x 4 mm


def exported(scene, node, ct_node) -> np.ndarray:
    """Slicer's own export of the tumor segment to the CT grid (independent of the code under test)."""
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "export")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(tumor_segment_id(node))
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(node, ids, labelmap, ct_node)
    array = image_from_volume_node(labelmap).array > 0
    scene.RemoveNode(labelmap)
    return array


def changed_slices(before: np.ndarray, after: np.ndarray) -> list:
    return np.flatnonzero((before != after).any(axis=(1, 2))).tolist()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def central_click(tumor: np.ndarray) -> SlicePoints:
    """A positive point at the deepest pixel of the tumor's largest slice (CARE's first click)."""
    from scipy import ndimage

    k = int(np.argmax(tumor.sum(axis=(1, 2))))
    distance = ndimage.distance_transform_edt(tumor[k])
    row, col = np.unravel_index(np.argmax(distance), distance.shape)
    return SlicePoints(k, [[float(col), float(row)]], [1])


def test_history_of_prompts_undoes_and_redoes_voxel_for_voxel(mrml_scene, phantom):
    tumor = phantom.tumor.array > 0
    first, last = (int(v) for v in np.flatnonzero(tumor.any(axis=(1, 2)))[[0, -1]])
    ct_node = add_volume_node(mrml_scene, phantom.ct, "CT")
    click = central_click(tumor)
    k = click.slice_index
    # The automatic result: the tumor's middle slices and a false region next to it on three slices.
    automatic = tumor.copy()
    automatic[:k - 2] = False
    automatic[k + 3:] = False
    automatic[k - 1:k + 2, 4:12, 4:12] = True
    node = tumor_to_segmentation_node(mrml_scene, phantom.ct.with_array(automatic.astype(np.uint8)), ct_node,
                                      None, phantom.ct)
    logic = PointRefinementLogic(mrml_scene, GroundTruthSliceModel(phantom.ct.array, tumor))
    assert not logic.can_undo and not logic.can_redo
    states = [exported(mrml_scene, node, ct_node)]
    settings = PropagationSettings(max_distance_mm=200.0)

    # 1. one positive click to 3D: only the tumor's missing ends are written
    _, result = logic.prompt(ct_node, node, click, settings=settings)
    states.append(exported(mrml_scene, node, ct_node))
    written = changed_slices(states[0], states[1])
    assert written == result.slice_indices  # only the changed slices are written, all of them
    ends = set(range(first, k - 2)) | set(range(k + 3, last + 1))  # what the automatic result lacks
    assert ends - {first, last} <= set(written) <= ends, (written, first, last)  # an end slice of 5 px may be lost
    print(f"\none click to 3D: {len(written)} of {tumor.shape[0]} slices written ({result.stop_reasons})")
    assert dice(states[1] & ~states[0], tumor & ~automatic) > 0.9

    # 2. a negative click on the false region (2D): removes it on that slice only
    _, result = logic.prompt(ct_node, node, SlicePoints(k, [[8.0, 8.0]], [0]), to_3d=False)
    states.append(exported(mrml_scene, node, ct_node))
    assert changed_slices(states[1], states[2]) == [k] and not states[2][k, 4:12, 4:12].any()

    # 3. a negative point list (markups) on the next slice, to 3D: stays on its slice
    negative = point_list_node(mrml_scene, "negative")
    negative.AddControlPoint(vtk.vtkVector3d(*(phantom.ct.index_to_ras @ [8.0, 8.0, k + 1, 1.0])[:3]))
    _, result = logic.prompt(ct_node, node, [negative], to_3d=True)
    states.append(exported(mrml_scene, node, ct_node))
    assert result.seed_slice == k + 1 and changed_slices(states[2], states[3]) == [k + 1]

    # 4. a box on a slice the false region still holds: the inside is redrawn, the region outside it kept
    rows, cols = np.nonzero(tumor[k - 1])
    box = SlicePoints(k - 1, box=[cols.min(), rows.min(), cols.max(), rows.max()])
    logic.prompt(ct_node, node, box, to_3d=False)
    states.append(exported(mrml_scene, node, ct_node))
    assert set(changed_slices(states[3], states[4])) <= {k - 1} and states[4][k - 1, 4:12, 4:12].all()

    # 5. propagation from the last prompted slice (the first API): one more step when it changes anything
    logic.propagate(ct_node, node, settings=settings)
    states.append(exported(mrml_scene, node, ct_node))
    steps = [step.action for step in logic.undo_stack]
    assert steps[:3] == ["prompt", "prompt", "prompt"] and set(steps[3:]) <= {"prompt", "propagation"}, steps
    history = [state for n, state in enumerate(states) if n == 0 or not np.array_equal(state, states[n - 1])]
    assert len(history) == len(steps) + 1  # a step that changes nothing is not kept
    packed = sum(step.before.nbytes + step.after.nbytes for step in logic.undo_stack)
    print(f"history: {len(steps)} steps {steps}, {packed} bytes packed")

    # undo all the way, then redo all the way: every state voxel for voxel
    for expected in reversed(history[:-1]):  # the last state is the current one
        assert logic.undo() and np.array_equal(exported(mrml_scene, node, ct_node), expected)
    assert not logic.can_undo and not logic.undo() and logic.can_redo
    for expected in history[1:]:
        assert logic.redo() and np.array_equal(exported(mrml_scene, node, ct_node), expected)
    assert not logic.can_redo and not logic.redo()
    # a new step after an undo ends the undone branch
    while len(logic.undo_stack) > 1:  # back to the state after the first click: the false region is there
        assert logic.undo()
    assert np.array_equal(exported(mrml_scene, node, ct_node), history[1]) and logic.can_redo
    logic.prompt(ct_node, node, SlicePoints(k, [[8.0, 8.0]], [0]), to_3d=False)
    assert not logic.can_redo and np.array_equal(exported(mrml_scene, node, ct_node), history[2])


def test_one_prompt_to_3d_with_the_shipped_model(mrml_scene, phantom):
    from CRCSegmentationLib.models.catalogue import list_models

    if DEMO_MODEL not in [entry.name for entry in list_models()]:
        pytest.skip(f"the shipped U-SAM model {DEMO_MODEL!r} is not in the catalogue yet")
    tumor = phantom.tumor.array > 0
    ct_node = add_volume_node(mrml_scene, phantom.ct, "CT")
    torch.set_num_threads(1)
    logic = PointRefinementLogic(mrml_scene)
    logic.load_model(DEMO_MODEL, "cpu")
    click = central_click(tumor)
    start = time.perf_counter()
    node, result = logic.prompt(ct_node, None, click)
    seconds = time.perf_counter() - start
    after = exported(mrml_scene, node, ct_node)
    score = dice(after, tumor)
    written = changed_slices(np.zeros_like(after), after)
    print(f"\n{DEMO_MODEL}: one click on slice {click.slice_index} -> {len(written)} slices "
          f"(tumor: {int(tumor.any(axis=(1, 2)).sum())}), 3D Dice {score:.3f}, {seconds:.2f} s, {result.stop_reasons}")
    assert score >= 0.75
    assert written == result.slice_indices  # only changed slices were written, all of them
    assert logic.undo() and not exported(mrml_scene, node, ct_node).any()
    assert logic.redo() and np.array_equal(exported(mrml_scene, node, ct_node), after)


def test_prompt_to_3d_speed_over_20_slices_with_the_small_preset(phantom):
    """The small preset's cost per slice (encoder + decoder + resampling), 1 torch thread; printed, not asserted."""
    from CRCSegmentationLib.networks.usam import USAM, USAMConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        engine = InteractiveSegmenter(TumorBiasedModel(USAM(USAMConfig.preset("small")).eval()))
        tumor = phantom.tumor.array > 0
        click = central_click(tumor)
        # Random weights with the tumor logit raised: a mask on every slice, so the walk goes 10 slices each way.
        settings = PropagationSettings(max_distance_mm=10 * phantom.ct.spacing[2])
        start = time.perf_counter()
        result = engine.prompt_to_3d(phantom.ct, click, None, settings)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    visited = engine.cache.misses
    print(f"\nsmall preset, 1 thread: one prompt to 3D over {visited} slices of 96 x 96 in {seconds:.2f} s "
          f"({1000 * seconds / visited:.0f} ms a slice; stops: {result.stop_reasons})")
    assert visited == 21, result.stop_reasons


def test_packed_slices_round_trip_and_stay_small():
    from CRCSegmentationLib.refinement_logic import PackedSlices

    rows, cols = np.mgrid[:512, :512]
    masks = {k: np.hypot(rows - 250 - k, cols - 260) <= 20 + k for k in range(20)}  # 20 slices of a 512 x 512 tumor
    packed = PackedSlices.pack(masks, (512, 512))
    unpacked = packed.unpack()
    assert sorted(unpacked) == list(range(20)) and all(np.array_equal(unpacked[k], masks[k]) for k in masks)
    assert packed.nbytes < 20 * 1024  # 20 slices in under 1 KB each (5 MB as bool arrays)
    print(f"\n20 slices of 512 x 512: {packed.nbytes} bytes packed")
