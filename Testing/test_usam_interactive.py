"""U-SAM interactive engine: RAS points -> slice pixels, refinement, propagation, embedding cache.

Propagation logic runs on a phantom tumor spanning several 4 mm slices with
``GroundTruthSliceModel`` (an ideal point-prompted segmenter built from the phantom's
ground truth: a real U-SAM cannot be trained on it within CI time on a CPU). The cache
is checked with the real (random-init) U-SAM, its encoder calls counted.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from usam_stand_ins import CountingModel, GroundTruthSliceModel

from CRCSegmentationLib.usam import usam_with_sam_weights
from CRCSegmentationLib.usam.refinement import (
    InteractiveSegmenter,
    PropagationSettings,
    points_on_slice,
    ras_to_ijk,
    volume_ras_bounds,
)
from CRCTraining.data.phantoms_ct import make_phantom_case
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.validation import InputError


@pytest.fixture(scope="module")
def phantom():
    case = make_phantom_case(0, seed=0)  # 40 x 96 x 96, 4 mm slices; the tumor spans 14 slices
    assert case.ct.spacing[2] == 4.0 and case.tumor.array.any(axis=(1, 2)).sum() >= 5
    return case


@pytest.fixture(scope="module")
def random_usam():
    torch.manual_seed(0)
    model, report = usam_with_sam_weights()  # no SAM weights here: random init
    assert report.warnings
    return model.eval()


def voxel_ras(image: Image, i: float, j: float, k: float) -> np.ndarray:
    return (image.index_to_ras @ np.array([i, j, k, 1.0]))[:3]


def tumor_extent(mask: np.ndarray):
    slices = np.flatnonzero(mask.any(axis=(1, 2)))
    return int(slices[0]), int(slices[-1])


def deepest_pixel(mask2d: np.ndarray):
    distance = ndimage.distance_transform_edt(mask2d)
    row, col = np.unravel_index(np.argmax(distance), mask2d.shape)
    return int(row), int(col)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


# --- RAS -> slice pixels --------------------------------------------------------
def test_ras_point_maps_to_slice_column_row_on_a_flipped_grid():
    direction = np.diag([-1.0, -1.0, 1.0])  # as ITK reads many NIfTI files
    image = Image(np.zeros((7, 11, 13), np.int16), (0.8, 0.9, 2.5), (10.0, -20.0, 30.0), direction, "grid")
    ras = np.array([voxel_ras(image, 4, 9, 5), voxel_ras(image, 12, 0, 5), voxel_ras(image, 1, 2, 3)])
    np.testing.assert_allclose(ras_to_ijk(image, ras), [[4, 9, 5], [12, 0, 5], [1, 2, 3]], atol=1e-9)
    points, ignored = points_on_slice(image, ras, [1, 0, 1], slice_index=5)
    assert points.slice_index == 5 and ignored == [2]
    np.testing.assert_allclose(points.xy, [[4, 9], [12, 0]], atol=1e-9)  # (col, row) = (i, j)
    assert points.labels.tolist() == [1, 0]
    last, _ = points_on_slice(image, ras, [1, 0, 1])  # default: the last point's slice
    assert last.slice_index == 3
    np.testing.assert_allclose(last.xy, [[1.0, 2.0]], atol=1e-9)


def test_point_outside_the_volume_is_named_with_the_bounds():
    image = Image(np.zeros((4, 5, 6), np.int16), (1.0, 1.0, 3.0))
    low, high = volume_ras_bounds(image)
    inside = voxel_ras(image, 0, 0, 0)
    outside = inside + np.array([0.0, 0.0, -4.0])  # below the first slice's lower edge
    with pytest.raises(InputError, match=r"point 2 at RAS \(0.0, 0.0, -4.0\) mm is outside the volume image \(RAS bounds R -5.5..0.5, A -4.5..0.5, S -1.5..10.5 mm\)"):
        ras_to_ijk(image, np.array([inside, outside]))
    edge = voxel_ras(image, -0.49, 4.49, 3.49)  # just inside the outer voxel edges
    assert ras_to_ijk(image, edge[None]).shape == (1, 3)
    assert np.all(low <= edge) and np.all(edge <= high)
    with pytest.raises(InputError, match="no positive point"):
        InteractiveSegmenter(GroundTruthSliceModel(image.array, image.array)).refine(image, inside[None], [0])


# --- refinement and propagation (ideal stand-in segmenter) -------------------------
def seed_click(phantom):
    tumor = phantom.tumor.array > 0
    k = int(np.argmax(tumor.sum(axis=(1, 2))))
    row, col = deepest_pixel(tumor[k])
    return k, voxel_ras(phantom.ct, col, row, k)


def test_click_refines_its_slice_and_propagation_recovers_the_craniocaudal_extent(phantom):
    tumor = phantom.tumor.array > 0
    model = GroundTruthSliceModel(phantom.ct.array, tumor)
    engine = InteractiveSegmenter(model)
    k, ras = seed_click(phantom)
    clicked = engine.refine(phantom.ct, ras[None], [1])
    assert clicked.slice_indices == [k] and clicked.seed_slice == k
    assert dice(clicked.slices[k], tumor[k]) > 0.95

    result = engine.propagate(phantom.ct, k, clicked.slices[k], PropagationSettings(max_distance_mm=200.0))
    assert k not in result.slices  # only the new slices
    refined = sorted(set(result.slices) | {k})
    assert refined == list(range(refined[0], refined[-1] + 1))  # contiguous
    first, last = tumor_extent(tumor)
    assert abs(refined[0] - first) <= 1 and abs(refined[-1] - last) <= 1, (refined, (first, last))
    assert "vanished" in result.stop_reasons["up"] and "vanished" in result.stop_reasons["down"]
    for index, mask in result.slices.items():
        assert mask.shape == tumor.shape[1:] and dice(mask, tumor[index]) > 0.8, index


def test_propagation_stops_at_the_distance_limit(phantom):
    tumor = phantom.tumor.array > 0
    engine = InteractiveSegmenter(GroundTruthSliceModel(phantom.ct.array, tumor))
    k, _ = seed_click(phantom)
    result = engine.propagate(phantom.ct, k, tumor[k], PropagationSettings(max_distance_mm=8.0))  # 2 slices of 4 mm
    assert result.slice_indices == [k - 2, k - 1, k + 1, k + 2]
    assert result.stop_reasons == {"down": "distance limit 8 mm", "up": "distance limit 8 mm"}
    assert engine.propagate(phantom.ct, k, tumor[k], PropagationSettings(max_distance_mm=3.9)).slices == {}
    with pytest.raises(InputError, match="empty"):
        engine.propagate(phantom.ct, k, np.zeros_like(tumor[k]))


# --- embedding cache (real U-SAM) ---------------------------------------------------
def test_second_click_reuses_the_encoding_and_a_changed_volume_does_not(phantom, random_usam):
    model = CountingModel(random_usam)
    engine = InteractiveSegmenter(model, cache_size=2)
    k, ras = seed_click(phantom)
    first = engine.refine(phantom.ct, ras[None], [1], volume_key="ct", modified=1)
    near = ras + np.array([2.9, 0.0, 0.0])
    second = engine.refine(phantom.ct, np.array([ras, near]), [1, 0], volume_key="ct", modified=1)
    assert (model.encodes, model.decodes) == (1, 2)
    assert first.slices[k].shape == second.slices[k].shape == phantom.ct.shape[1:]
    engine.refine(phantom.ct, ras[None], [1], volume_key="ct", modified=2)  # the voxels changed
    assert model.encodes == 2 and engine.cache.hits == 1


def test_cache_keeps_the_most_recently_used_slices(phantom):
    model = GroundTruthSliceModel(phantom.ct.array, phantom.tumor.array)
    engine = InteractiveSegmenter(model, cache_size=2)
    k, ras = seed_click(phantom)

    def click(slice_index: int) -> None:  # a positive point on another slice (4 mm apart, z = S here)
        engine.refine(phantom.ct, (ras + [0.0, 0.0, 4.0 * (slice_index - k)])[None], [1], volume_key="ct")

    click(k)
    click(k + 1)
    click(k)  # still cached
    assert model.encodes == 2 and engine.cache.hits == 1
    click(k + 2)  # evicts k + 1 (least recently used of 2)
    click(k)
    click(k + 1)
    assert model.encodes == 4 and len(engine.cache) == 2 and model.decodes == 6
    engine.refine(phantom.ct, ras[None], [1], volume_key="another ct")  # same voxels, other volume: new key
    assert model.encodes == 5


def test_widget_propagation_default_and_range_match_the_engine():
    """The panel's parameter node (read statically: it needs Slicer's Qt) and the engine agree."""
    import ast
    from pathlib import Path

    widget = Path(__file__).resolve().parents[1] / "CRCSegmentation" / "CRCSegmentationLib" / "widget.py"
    fields = {node.target.id: node for node in ast.walk(ast.parse(widget.read_text(encoding="utf-8")))
              if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}
    field = fields["propagationMm"]
    assert ast.literal_eval(field.value) == PropagationSettings().max_distance_mm
    bounds = [ast.literal_eval(arg) for call in ast.walk(field.annotation)
              if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "WithinRange" for arg in call.args]
    assert len(bounds) == 2
    for bound in bounds:
        assert PropagationSettings(max_distance_mm=bound).is_valid()[0], bound
    assert not PropagationSettings(max_distance_mm=-1.0).is_valid()[0]


def test_is_argmax_equals_torch_argmax_with_ties():
    from CRCSegmentationLib.usam.refinement import is_argmax

    logits = torch.randint(0, 3, (3, 40, 50), generator=torch.Generator().manual_seed(0)).float()  # many ties
    for index in range(3):
        assert torch.equal(is_argmax(logits, index), logits.argmax(dim=0) == index)


def test_propagation_reports_progress_and_cancels_between_slices(phantom):
    import threading

    from OrganGuidanceLib.progress import RunCancelled

    tumor = phantom.tumor.array > 0
    engine = InteractiveSegmenter(GroundTruthSliceModel(phantom.ct.array, tumor))
    k, _ = seed_click(phantom)
    seen = []
    result = engine.propagate(phantom.ct, k, tumor[k], PropagationSettings(max_distance_mm=8.0),
                              progress=lambda stage, fraction: seen.append((stage, fraction)))
    assert [stage for stage, _ in seen] == [f"propagation down: slice {k - 1}", f"propagation down: slice {k - 2}",
                                            f"propagation up: slice {k + 1}", f"propagation up: slice {k + 2}"]
    assert [fraction for _, fraction in seen] == [0.25, 0.5, 0.75, 1.0] and len(result.slices) == 4
    cancel = threading.Event()

    def cancel_after_the_first_slice(stage: str, fraction: float) -> None:
        cancel.set()

    with pytest.raises(RunCancelled, match=f"before slice {k - 2}"):
        engine.propagate(phantom.ct, k, tumor[k], PropagationSettings(max_distance_mm=8.0),
                         progress=cancel_after_the_first_slice, cancel=cancel)
