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


# --- prompts with boxes and existing masks (engine) -------------------------------------
def test_slice_points_validate_and_order_the_box():
    from CRCSegmentationLib.usam.refinement import SlicePoints

    prompt = SlicePoints(3, box=[40.0, 30.0, 10.0, 20.0])  # corners in any order
    assert prompt.box.tolist() == [10.0, 20.0, 40.0, 30.0] and prompt.has_target and len(prompt.labels) == 0
    assert not SlicePoints(3, [[1.0, 2.0]], [0]).has_target
    with pytest.raises(InputError, match="labels must be 1"):
        SlicePoints(3, [[1.0, 2.0]], [2])
    with pytest.raises(InputError, match="1 points but 2 labels"):
        SlicePoints(3, [[1.0, 2.0]], [1, 0])
    with pytest.raises(InputError, match=r"slice 3 box: need 4 finite numbers"):
        SlicePoints(3, box=[0.0, 1.0, np.nan, 2.0])


def test_box_reaches_the_model_in_input_pixels_like_points():
    """A box's corners scale like points (SAM's apply_boxes); a box off the slice is refused by name."""
    from usam_stand_ins import DiscModel

    from CRCSegmentationLib.usam.preprocess import SliceTransform
    from CRCSegmentationLib.usam.refinement import SlicePoints

    image = Image(np.zeros((3, 60, 90), np.int16), (1.0, 1.0, 3.0))  # 60 rows x 90 columns: not square
    model = DiscModel()
    engine = InteractiveSegmenter(model)
    mask = engine.segment_prompt(image, SlicePoints(1, [[45.0, 30.0]], [1], box=[20.0, 10.0, 70.0, 50.0]))
    transform = SliceTransform(60, 90, model.config.image_size)
    expected = transform.to_input_xy(np.array([[20.0, 10.0], [70.0, 50.0]])).reshape(4)
    np.testing.assert_allclose(model.boxes[0][0].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(transform.to_slice_xy(model.points[0][0][0].numpy()), [[45.0, 30.0]], atol=1e-4)
    rows, cols = np.nonzero(mask)  # the stand-in's tumor = the box, back on the slice's pixels (resampled: +-1 px)
    np.testing.assert_allclose([rows.min(), rows.max(), cols.min(), cols.max()], [10, 50, 20, 70], atol=1)
    engine.segment_prompt(image, SlicePoints(1, box=[-30.0, -5.0, 200.0, 20.0]))  # clipped to the slice
    np.testing.assert_allclose(model.boxes[-1][0].numpy()[[0, 2]], [-0.5, 223.5], atol=1e-5)
    with pytest.raises(InputError, match=r"slice 1 box \(100.0, 10.0, 120.0, 20.0\) px lies outside"):
        engine.segment_prompt(image, SlicePoints(1, box=[100.0, 10.0, 120.0, 20.0]))
    with pytest.raises(InputError, match="no positive point or box"):
        engine.segment_prompt(image, SlicePoints(1, [[45.0, 30.0]], [0]))


def blob(shape, centre, radius):
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    return np.hypot(rows - centre[0], cols - centre[1]) <= radius


def test_existing_mask_rules_add_remove_and_redraw():
    from CRCSegmentationLib.usam.existing_mask import refine_existing

    shape = (60, 80)
    tumor = blob(shape, (30, 30), 8)
    leak = np.zeros(shape, bool)
    leak[28:33, 38:60] = True  # attached to the tumor
    far = blob(shape, (10, 70), 4)
    none = np.zeros((0, 2))
    # the model draws the tumor only: a negative on the leak cuts it off along the model's boundary
    result = refine_existing(tumor | leak | far, tumor, none, np.array([[55.0, 30.0]]))
    assert np.array_equal(result, tumor | far)
    # the model still calls the clicked pixel tumor: the user's word wins, that component goes
    assert np.array_equal(refine_existing(tumor | far, tumor | far, none, np.array([[70.0, 10.0]])), tumor)
    # a positive adds the model's component under it, and nothing the model drew elsewhere
    extra = blob(shape, (45, 60), 5)
    assert np.array_equal(refine_existing(tumor, extra | far, np.array([[60.0, 45.0]]), none), tumor | extra)
    # a box redraws its inside, keeps the outside
    box = np.array([20.0, 20.0, 45.0, 40.0])  # columns 20..45, rows 20..40
    smaller = blob(shape, (30, 30), 5)
    result = refine_existing(tumor | leak | far, smaller, none, none, box)
    inside = np.zeros(shape, bool)
    inside[20:41, 20:46] = True
    assert np.array_equal(result[inside], smaller[inside]) and np.array_equal(result[~inside], (tumor | leak | far)[~inside])


def test_negative_click_on_an_existing_false_region_removes_it(phantom):
    """Negatives only: the engine gives the network context positives inside the kept tumor."""
    from CRCSegmentationLib.usam.refinement import SlicePoints

    tumor = phantom.tumor.array > 0
    k, _ = seed_click(phantom)
    engine = InteractiveSegmenter(GroundTruthSliceModel(phantom.ct.array, tumor))
    false = blob(tumor.shape[1:], (10, 10), 4) & ~tumor[k]
    row, col = 10, 10
    mask = engine.segment_prompt(phantom.ct, SlicePoints(k, [[col, row]], [0]), tumor[k] | false)
    assert np.array_equal(mask, tumor[k])


def test_one_prompt_to_3d_returns_only_changed_slices(phantom):
    from CRCSegmentationLib.usam.existing_mask import ExistingMask
    from CRCSegmentationLib.usam.refinement import SlicePoints

    tumor = phantom.tumor.array > 0
    first, last = tumor_extent(tumor)
    k, _ = seed_click(phantom)
    row, col = deepest_pixel(tumor[k])
    engine = InteractiveSegmenter(GroundTruthSliceModel(phantom.ct.array, tumor))
    settings = PropagationSettings(max_distance_mm=200.0)

    result = engine.prompt_to_3d(phantom.ct, SlicePoints(k, [[col, row]], [1]), None, settings)
    assert result.slice_indices == list(range(first, last + 1)) and result.seed_slice == k
    volume = np.zeros_like(tumor)
    for index, mask in result.slices.items():
        volume[index] = mask
    assert dice(volume, tumor) > 0.95

    # an existing segment that already holds the middle of the tumor: only the ends change
    existing = tumor.copy()
    existing[: k - 2] = False
    existing[k + 3:] = False
    result = engine.prompt_to_3d(phantom.ct, SlicePoints(k, [[col, row]], [1]), existing, settings)
    assert result.slice_indices == list(range(first, k - 2)) + list(range(k + 3, last + 1))
    for index, mask in result.slices.items():
        assert dice(mask, tumor[index]) > 0.9 and np.all(mask[existing[index]]), index
    # the same as a slab (what the Slicer logic reads): the same answer
    slab = ExistingMask(tumor.shape, existing[k - 5:k + 6], k - 5)
    assert engine.prompt_to_3d(phantom.ct, SlicePoints(k, [[col, row]], [1]), slab, settings).slice_indices \
        == result.slice_indices
    # nothing new (the segment is this prompt's own answer): nothing returned
    assert engine.prompt_to_3d(phantom.ct, SlicePoints(k, [[col, row]], [1]), volume, settings).slices == {}

    # a box alone finds the tumor too
    rows, cols = np.nonzero(tumor[k])
    box = SlicePoints(k, box=[cols.min(), rows.min(), cols.max(), rows.max()])
    assert engine.prompt_to_3d(phantom.ct, box, None, settings).slice_indices == list(range(first, last + 1))

    # negatives only: removes on its slice, not carried
    false = np.zeros_like(tumor)
    false[k - 1:k + 2, 5:12, 5:12] = True
    result = engine.prompt_to_3d(phantom.ct, SlicePoints(k, [[8.0, 8.0]], [0]), tumor | false, settings)
    assert result.slice_indices == [k] and np.array_equal(result.slices[k], tumor[k])
    assert "stays on its slice" in result.stop_reasons["up"]
    with pytest.raises(InputError, match="does not match the CT"):
        engine.prompt_to_3d(phantom.ct, SlicePoints(k, [[col, row]], [1]), tumor[:-1], settings)


def test_embedding_cache_is_bounded_by_bytes():
    from CRCSegmentationLib.usam.embedding_cache import CachedEncoding, EmbeddingCache, EncodingKey

    cache = EmbeddingCache(capacity=10, max_bytes=3 * 4000)
    for k in range(5):
        cache.get_or_compute(EncodingKey("ct", 0, k, (0.0, 1.0)), lambda: CachedEncoding([torch.zeros(1000)], None))
    assert len(cache) == 3 and cache.nbytes == 12000 and cache.misses == 5
    assert EncodingKey("ct", 0, 4, (0.0, 1.0)) in cache and EncodingKey("ct", 0, 1, (0.0, 1.0)) not in cache


def test_real_small_usam_takes_a_box_with_and_without_points(phantom):
    from CRCSegmentationLib.networks.usam import USAM, USAMConfig
    from CRCSegmentationLib.usam.refinement import SlicePoints

    torch.manual_seed(0)
    model = CountingModel(USAM(USAMConfig.preset("small")).eval())
    engine = InteractiveSegmenter(model)
    k, _ = seed_click(phantom)
    box = [20.0, 25.0, 60.0, 70.0]
    for prompt in (SlicePoints(k, box=box), SlicePoints(k, [[40.0, 45.0], [10.0, 10.0]], [1, 0], box=box)):
        assert engine.segment_slice(phantom.ct, prompt).shape == phantom.ct.shape[1:]
    assert (model.encodes, model.decodes) == (1, 2)


def test_next_slice_prompt_on_the_mask_box_equals_the_whole_slice():
    """Propagation samples on the mask's box grown by the negatives' reach: the same points, less work."""
    from CRCSegmentationLib.usam.prompts import sample_points
    from CRCSegmentationLib.usam.propagation import next_slice_prompt

    rng = np.random.default_rng(1)
    for _ in range(40):
        mask = np.zeros((int(rng.integers(20, 160)), int(rng.integers(20, 160))), bool)
        for _ in range(int(rng.integers(1, 4))):  # blobs anywhere, the slice's border included
            mask |= blob(mask.shape, rng.integers(0, mask.shape), int(rng.integers(1, 15)))
        whole = sample_points(mask.astype(np.uint8), classes=(1,), per_class=3, negatives=3, rng=None)
        xy, labels = next_slice_prompt(mask, PropagationSettings())
        np.testing.assert_array_equal(xy, whole.coords_xy)
        assert labels.tolist() == whole.labels.tolist()
