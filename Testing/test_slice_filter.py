"""The slice-classifier false-positive filter: HCF's classifier clears another model's tumor on normal slices.

Real networks with set weights (``test_hcf_inference``'s helpers): the classifier calls the bright slices
of the synthetic CT abnormal and the dim ones normal. The filter runs on a given mask, after a model
through the console API and ``crcseg segment --slice-filter``, and in the module logic under slicer-core.
"""
from __future__ import annotations

import csv
import threading

import numpy as np
import pytest
from test_hcf_inference import (
    BRIGHT,
    CPU,
    SHAPE,
    box_mask,
    constant_classifier,
    constant_sanet,
    intensity_classifier,
    make_bundle,
    synthetic_ct,
)

from CRCSegmentationLib.batch import segment_files
from CRCSegmentationLib.core.errors import ModelError
from CRCSegmentationLib.core.segmentation import TumorSegmentation
from CRCSegmentationLib.demo.ct import demo_model_path
from CRCSegmentationLib.models.open import open_model
from CRCSegmentationLib.models.slice_filter import SliceFilter, filter_mask
from OrganGuidanceLib.crop import CropBox
from OrganGuidanceLib.io import read_image, write_image
from OrganGuidanceLib.progress import RunCancelled
from OrganGuidanceLib.validation import InputError

DIM = [k for k in range(SHAPE[0]) if k not in BRIGHT]


@pytest.fixture(scope="module")
def ct():  # the synthetic CT (shadows conftest's real CT on purpose: no shared data needed)
    return synthetic_ct()


@pytest.fixture(scope="module")
def classifier_only(tmp_path_factory):
    """A classifier-only bundle: the intensity rule (bright slices abnormal), 1 fold."""
    return make_bundle(tmp_path_factory.mktemp("filter") / "intensity_classifier", [intensity_classifier()], [])


@pytest.fixture(scope="module")
def everywhere(tmp_path_factory):
    """An HCF model that finds tumor in the body box of every slice (the "3D model" whose result is filtered)."""
    return make_bundle(tmp_path_factory.mktemp("filter") / "tumor_everywhere", [constant_classifier(0.99)],
                       [constant_sanet(True)])


@pytest.fixture(scope="module")
def cleaner(classifier_only):
    return SliceFilter(classifier_only, "cpu")


def tumor(ct, slices=range(1, 15)):
    """A block of tumor on ``slices`` (the first and last slice stay empty)."""
    mask = np.zeros(SHAPE, np.uint8)
    mask[list(slices), 20:30, 15:40] = 1
    return ct.with_array(mask, "some model's tumor")


def test_the_filter_clears_exactly_the_rejected_slices(cleaner, ct):
    mask = tumor(ct)
    filtered, report = cleaner.filter(ct, mask)
    rejected = [k for k in DIM if 1 <= k <= 14]  # dim slices that hold tumor
    assert report.rejected_slices == rejected and report.tumor_slices == 14 and report.total_slices == 16
    assert report.removed_voxels == int(mask.array[rejected].sum()) == len(rejected) * 250
    expected = mask.array.copy()
    expected[rejected] = 0
    np.testing.assert_array_equal(filtered.array, expected)  # nothing changed on the other slices
    assert filtered.same_grid(ct) and filtered.array.dtype == mask.array.dtype
    assert report.summary().startswith(f"slice filter: removed {len(rejected) * 250} voxels on {len(rejected)} of 14 slices")
    assert len(report.probabilities) == 14 and report.axis == 0
    assert mask.array[rejected].any()  # the input is left as it was


def test_only_slices_with_tumor_are_classified_and_an_empty_mask_passes(cleaner, ct):
    filtered, report = cleaner.filter(ct, tumor(ct, slices=[3, 4]))  # both bright
    assert report.rejected_slices == [] and report.removed_voxels == 0 and report.tumor_slices == 2
    assert filtered.array.sum() == 500
    empty, report = cleaner.filter(ct, ct.with_array(np.zeros(SHAPE, np.uint8)))
    assert report.removed_voxels == 0 and report.tumor_slices == 0 and not empty.array.any()


def test_an_hcf_bundle_filters_with_its_classifier_folds(tmp_path, ct):
    bundle = make_bundle(tmp_path / "hcf", [intensity_classifier(), constant_classifier(0.01), constant_classifier(0.01)],
                         [constant_sanet(True)])
    _, report = filter_mask(bundle, ct, tumor(ct), device="cpu")  # 1 of 3 folds says abnormal: every slice normal
    assert report.rejected_slices == list(range(1, 15)) and report.removed_voxels == 14 * 250


def test_apply_filters_a_segmentation_result(cleaner, ct):
    mask = tumor(ct)
    probabilities = ct.with_array(mask.array.astype(np.float32) * 0.8, "Tumor probability")
    result = TumorSegmentation(mask, probabilities, CropBox.full(ct.shape), "cpu", ["earlier warning"])
    filtered = cleaner.apply(ct, result)
    report = filtered.slice_filter
    assert filtered is not result and result.slice_filter is None and result.warnings == ["earlier warning"]
    assert filtered.warnings == ["earlier warning", report.summary()]
    assert not filtered.mask.array[report.rejected_slices].any()
    assert not filtered.probabilities.array[report.rejected_slices].any()
    kept = list(BRIGHT)
    np.testing.assert_array_equal(filtered.probabilities.array[kept], probabilities.array[kept])


def test_wrong_inputs_are_named(cleaner, ct, classifier_only):
    other_grid = synthetic_ct(shape=(16, 64, 32))
    with pytest.raises(InputError, match="not on the grid of the CT"):
        cleaner.filter(ct, other_grid.with_array(np.zeros(other_grid.shape, np.uint8)))
    with pytest.raises(InputError, match="segments CT images"):
        mr = ct.with_array(np.random.default_rng(1).uniform(0, 900, SHAPE).astype(np.float32), "T2 volume")
        cleaner.filter(mr, tumor(ct))
    with pytest.raises(ModelError, match="kind 'nnunet'; the slice filter needs an HCF bundle"):
        SliceFilter(open_model(demo_model_path(), load_checkpoints=False), "cpu")


def test_cancel_stops_the_filter(cleaner, ct):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(RunCancelled, match="slice classifier"):
        cleaner.filter(ct, tumor(ct), cancel)


# --- the three routes ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ct_file(tmp_path_factory, ct):
    return write_image(ct, tmp_path_factory.mktemp("filter_images") / "case1.nii.gz")


def expected_after_filter():
    return box_mask(BRIGHT)  # the model's tumor on every slice, kept on the bright ones only


def test_console_api_and_crcseg_segment_report_the_filter(everywhere, classifier_only, ct_file, tmp_path, capsys):
    unfiltered = segment_files(ct_file, everywhere, tmp_path / "plain", parameters=CPU)
    assert unfiltered.cases[0].slice_filter == "" and unfiltered.cases[0].slices["sanet_slices"] == 16
    everything = read_image(tmp_path / "plain" / "case1_tumor.nii.gz").array
    removed = int(everything[DIM].sum())
    np.testing.assert_array_equal(everything, box_mask(range(16)))

    report = segment_files(ct_file, everywhere, tmp_path / "api", parameters=CPU, slice_filter=classifier_only)
    case = report.cases[0]
    assert case.status == "ok" and case.slices["filter_removed_voxels"] == removed
    assert case.slice_filter.startswith(f"slice filter: removed {removed} voxels on {len(DIM)} of 16 slices")
    np.testing.assert_array_equal(read_image(tmp_path / "api" / "case1_tumor.nii.gz").array, expected_after_filter())

    from CRCTraining.cli import main as crcseg

    out = tmp_path / "cli"
    assert crcseg(["segment", str(ct_file), "-m", str(everywhere), "-o", str(out), "--device", "cpu",
                   "--slice-filter", str(classifier_only)]) == 0
    assert f"case1: slice filter: removed {removed} voxels on {len(DIM)} of 16 slices" in capsys.readouterr().out
    with open(out / "summary.csv") as stream:
        row = next(csv.DictReader(stream))
    assert (row["filter_removed_voxels"], row["filter_rejected_slices"], row["filter_tumor_slices"]) == \
        (str(removed), str(len(DIM)), "16")
    assert "slice filter: removed" in row["warnings"]
    np.testing.assert_array_equal(read_image(out / "case1_tumor.nii.gz").array, expected_after_filter())
    voxel_ml = 3.0 / 1000.0
    assert float(row["volume_ml"]) == pytest.approx(expected_after_filter().sum() * voxel_ml)

    # a filter model that is not HCF is refused before any case runs (exit code 2)
    assert crcseg(["segment", str(ct_file), "-m", str(everywhere), "-o", str(tmp_path / "bad"), "--device", "cpu",
                   "--slice-filter", str(demo_model_path())]) == 2
    assert "the slice filter needs an HCF bundle" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_module_logic_filters_and_a_cancelled_filter_leaves_the_scene(mrml_scene, everywhere, classifier_only, ct):
    from CRCSegmentationLib.logic import CRCSegmentationLogic, CRCSegmentationSettings
    from CRCSegmentationLib.mrml import tumor_segment_id
    from OrganGuidanceLib.mrml import add_volume_node, segment_mask

    logic = CRCSegmentationLogic(mrml_scene)
    node = add_volume_node(mrml_scene, ct, "synthetic CT")
    settings = CRCSegmentationSettings(model=str(everywhere), guidance_source="none", segmentation=CPU,
                                       slice_filter=str(classifier_only))
    job = logic.prepare(node, settings)
    assert job.slice_filter_model is not None and job.slice_filter_model.hcf.sanet.folds == []
    result = logic.compute(job)
    assert result.slice_filter.rejected_slices == DIM
    assert any(m.startswith("slice filter: removed") for m in job.messages)  # what the panel shows
    segmentation = logic.apply(job, result)
    np.testing.assert_array_equal(segment_mask(segmentation, tumor_segment_id(segmentation), ct),
                                  expected_after_filter() > 0)
    assert logic.slice_filter(job.slice_filter_model, "cpu") is logic.slice_filter(job.slice_filter_model, "cpu")

    # cancelled while the filter runs: compute raises, nothing reaches the scene
    nodes_before = mrml_scene.GetNumberOfNodes()
    cancel = threading.Event()
    job = logic.prepare(node, settings)

    def press_cancel(stage, fraction):
        if stage == "slice filter":
            cancel.set()

    with pytest.raises(RunCancelled, match="slice classifier"):
        logic.compute(job, cancel, press_cancel)
    assert mrml_scene.GetNumberOfNodes() == nodes_before

    # a filter model that is not HCF is refused in prepare, before anything runs
    with pytest.raises(ModelError, match="the slice filter needs an HCF bundle"):
        logic.prepare(node, CRCSegmentationSettings(model=str(everywhere), guidance_source="none", segmentation=CPU,
                                                    slice_filter=str(demo_model_path())))
    assert mrml_scene.GetNumberOfNodes() == nodes_before
