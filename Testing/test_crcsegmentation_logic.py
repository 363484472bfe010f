"""CRCSegmentationLogic under slicer-core on the real example CT (no mocks).

``apply`` is tested with a ``TumorSegmentation`` built from a known mask; ``process``
runs end to end with the shipped demonstration model when it is in the repository.
"""
from __future__ import annotations

import csv
import threading
from pathlib import Path

import numpy as np
import pytest
from mrml_helpers import segmentation_from_masks

from CRCSegmentationLib.core.errors import ModelError
from CRCSegmentationLib.core.segmentation import SegmentationParameters, TumorSegmentation
from CRCSegmentationLib.logic import CRCSegmentationLogic, CRCSegmentationSettings, SegmentationJob
from CRCSegmentationLib.measurement.statistics import tumor_statistics
from CRCSegmentationLib.mrml import (
    STATISTICS_REFERENCE_ROLE,
    TUMOR_SEGMENT_NAME,
    guidance_from_segmentation_node,
    table_row,
    tumor_segment_id,
)
from OrganGuidanceLib.crop import CropBox
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.logic import OrganGuidanceSettings, OrganSourceChoice
from OrganGuidanceLib.mrml import add_volume_node, image_from_volume_node, segment_mask
from OrganGuidanceLib.progress import RunCancelled
from OrganGuidanceLib.validation import InputError

COLON = 20


@pytest.fixture(scope="module")
def tumor(organs):
    colon = organs.array == COLON
    low = int(np.flatnonzero(colon.any(axis=(1, 2)))[0])
    mask = np.zeros(colon.shape, np.uint8)
    mask[low:low + 12] = colon[low:low + 12]
    return organs.with_array(mask, "Tumor")


@pytest.fixture
def ct_node(mrml_scene, ct):
    return add_volume_node(mrml_scene, ct, "Case 5 CT")


@pytest.fixture
def logic(mrml_scene) -> CRCSegmentationLogic:
    return CRCSegmentationLogic(mrml_scene)


@pytest.fixture
def organ_settings(mrml_scene, organs) -> OrganGuidanceSettings:
    label_node = add_volume_node(mrml_scene, organs, "TS organs", labelmap=True)
    return OrganGuidanceSettings(primary=OrganSourceChoice(kind="node", node=label_node, convention="totalsegmentator"))


def known_result(tumor, ct) -> TumorSegmentation:
    return TumorSegmentation(mask=tumor, probabilities=None, region=CropBox.full(ct.shape), device="cpu", warnings=[])


def test_apply_writes_the_tumor_segment_and_its_statistics(mrml_scene, ct, tumor, ct_node, logic):
    job = SegmentationJob(ct=ct, ct_node_id=ct_node.GetID(), settings=CRCSegmentationSettings(model="known"), model=None)
    nodes_before = mrml_scene.GetNumberOfNodes()
    node = logic.apply(job, known_result(tumor, ct))
    assert node.GetName() == "Case 5 CT tumor segmentation"
    assert mrml_scene.GetNumberOfNodes() - nodes_before >= 2  # segmentation + table (+ display/storage nodes)
    np.testing.assert_array_equal(segment_mask(node, tumor_segment_id(node), ct), tumor.array > 0)

    table = node.GetNodeReference(STATISTICS_REFERENCE_ROLE)
    assert table is not None and table.GetName() == "Case 5 CT tumor segmentation statistics"
    expected = tumor_statistics(tumor)
    row = table_row(table)
    assert row["Segment"] == TUMOR_SEGMENT_NAME
    assert row["Volume"] == pytest.approx(expected.volume_ml) and row["Components"] == expected.components
    assert row["Largest axial diameter"] == pytest.approx(expected.largest_axial_diameter_mm)
    assert row["Cranio-caudal extent"] == pytest.approx(expected.craniocaudal_extent_mm)

    # Again into the same output: segment replaced, table refilled in place, nothing new in the scene.
    smaller = tumor.with_array(np.where(np.arange(tumor.shape[0])[:, None, None] < np.flatnonzero(tumor.array.any(axis=(1, 2)))[6],
                                        tumor.array, 0).astype(np.uint8))
    nodes_before = mrml_scene.GetNumberOfNodes()
    again = logic.apply(job, known_result(smaller, ct), output_node=node)
    assert again is node and mrml_scene.GetNumberOfNodes() == nodes_before
    assert node.GetNodeReference(STATISTICS_REFERENCE_ROLE) is table
    assert table_row(table)["Volume"] == pytest.approx(tumor_statistics(smaller).volume_ml)
    assert tumor_statistics(smaller).volume_ml < row["Volume"]
    np.testing.assert_array_equal(segment_mask(node, tumor_segment_id(node), ct), smaller.array > 0)


def test_apply_into_a_user_segmentation_keeps_its_segments(mrml_scene, ct, organs, tumor, ct_node, logic):
    user = segmentation_from_masks(mrml_scene, ct, {"Colon": organs.array == COLON}, "reading session")
    job = SegmentationJob(ct=ct, ct_node_id=ct_node.GetID(), settings=CRCSegmentationSettings(model="known"), model=None)
    out = logic.apply(job, known_result(tumor, ct), output_node=user)
    assert out is user and user.GetSegmentation().GetNumberOfSegments() == 2
    colon_id = user.GetSegmentation().GetSegmentIdBySegmentName("Colon")
    np.testing.assert_array_equal(segment_mask(user, colon_id, ct), organs.array == COLON)


def test_apply_after_the_ct_was_removed_leaves_the_scene(mrml_scene, ct, tumor, ct_node, logic):
    job = SegmentationJob(ct=image_from_volume_node(ct_node), ct_node_id=ct_node.GetID(),
                          settings=CRCSegmentationSettings(model="known"), model=None)
    mrml_scene.RemoveNode(ct_node)
    nodes_before = mrml_scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="Case 5 CT: the CT node was removed"):
        logic.apply(job, known_result(tumor, ct))
    assert mrml_scene.GetNumberOfNodes() == nodes_before


def test_cancel_stops_compute_before_the_model_and_leaves_the_scene(mrml_scene, ct, ct_node, logic, organ_settings):
    job = SegmentationJob(ct=ct, ct_node_id=ct_node.GetID(), settings=CRCSegmentationSettings(model="known"), model=None,
                          guidance_job=logic.guidance_logic.prepare(ct_node, organ_settings))
    cancel = threading.Event()
    cancel.set()
    nodes_before = mrml_scene.GetNumberOfNodes()
    with pytest.raises(RunCancelled):
        logic.compute(job, cancel)
    assert mrml_scene.GetNumberOfNodes() == nodes_before


@pytest.mark.parametrize(
    "settings, reason",
    [
        (CRCSegmentationSettings(), "model: choose a model"),
        (CRCSegmentationSettings(model="m", guidance_source="scene"), "no Organ Guidance segmentation selected"),
        (CRCSegmentationSettings(model="m", guidance_source="atlas"), "guidance source 'atlas'"),
        (CRCSegmentationSettings(model="m", organ_guidance=OrganGuidanceSettings(primary=OrganSourceChoice(kind="file"))),
         "organ guidance: first organ source: no label map file"),
        (CRCSegmentationSettings(model="m", segmentation=SegmentationParameters(device="tpu")), "device 'tpu'"),
        (CRCSegmentationSettings(model="m", segmentation=SegmentationParameters(ooi_margin_mm=-1)), "OOI margin -1"),
    ],
)
def test_invalid_settings_are_explained(settings, reason, ct_node, logic):
    valid, message = settings.is_valid()
    assert not valid and reason in message
    with pytest.raises(InputError, match=reason.split(":")[0]):
        logic.prepare(ct_node, settings)


def test_unknown_model_and_folder_without_plans_are_named(mrml_scene, ct_node, logic, tmp_path):
    nodes_before = mrml_scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="'no_such_model' is neither a model folder nor a catalogue model"):
        logic.prepare(ct_node, CRCSegmentationSettings(model="no_such_model", guidance_source="none"))
    empty = tmp_path / "my_model"
    empty.mkdir()
    with pytest.raises(ModelError, match="my_model"):
        logic.prepare(ct_node, CRCSegmentationSettings(model=str(empty), guidance_source="none"))
    assert mrml_scene.GetNumberOfNodes() == nodes_before


def test_label_map_as_ct_is_rejected(mrml_scene, organs, logic, tmp_path):
    node = add_volume_node(mrml_scene, organs, "organ labels", labelmap=True)
    with pytest.raises(InputError, match="organ labels: is a vtkMRMLLabelMapVolumeNode, not an image volume"):
        logic.prepare(node, CRCSegmentationSettings(model=str(tmp_path), guidance_source="none"))


def test_export_writes_the_files_of_an_applied_result(mrml_scene, ct, tumor, ct_node, logic, tmp_path):
    job = SegmentationJob(ct=ct, ct_node_id=ct_node.GetID(), settings=CRCSegmentationSettings(model="known"), model=None)
    node = logic.apply(job, known_result(tumor, ct))
    files = logic.export(node, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (files.segmentation, files.label_map, files.statistics))  # no temporary files left
    with open(files.statistics, newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected = tumor_statistics(tumor)
    assert len(rows) == 1 and rows[0]["Segment"] == TUMOR_SEGMENT_NAME
    assert float(rows[0]["Volume [ml]"]) == pytest.approx(expected.volume_ml)
    assert float(rows[0]["Largest axial diameter [mm]"]) == pytest.approx(expected.largest_axial_diameter_mm)
    assert float(rows[0]["Cranio-caudal extent [mm]"]) == pytest.approx(expected.craniocaudal_extent_mm)
    assert int(float(rows[0]["Components"])) == expected.components
    np.testing.assert_array_equal(read_image(files.label_map).array, tumor.array)
    assert files.segmentation.stat().st_size > 0


@pytest.fixture(scope="module")
def model_bundle(tmp_path_factory) -> Path:
    """The shipped demo bundle, or a tiny model trained here (Testing/inference_model.py)."""
    from inference_model import load_or_train_model

    return load_or_train_model(tmp_path_factory.mktemp("crcseg_logic_model"))["bundle"]


@pytest.mark.slow
def test_process_end_to_end_with_a_real_model(mrml_scene, ct, ts, ct_node, logic, organ_settings, model_bundle):
    """Guidance computed on the fly and guidance read from an Organ Guidance node give the same tumor."""
    parameters = SegmentationParameters(device="cpu", mirroring=False)
    settings = CRCSegmentationSettings(model=str(model_bundle), guidance_source="compute", organ_guidance=organ_settings,
                                       segmentation=parameters)
    stages = []
    node = logic.process(ct_node, settings, progress=lambda stage, fraction: stages.append((stage, fraction)))
    known = [f for _, f in stages if f is not None]
    assert known == sorted(known) and known[-1] == pytest.approx(1.0)
    assert any(stage.startswith("organ guidance") for stage, _ in stages) and any(stage == "tumor model" for stage, _ in stages)
    computed = segment_mask(node, tumor_segment_id(node), ct)
    row = table_row(node.GetNodeReference(STATISTICS_REFERENCE_ROLE))
    assert row["Volume"] == pytest.approx(computed.sum() * np.prod(ct.spacing) / 1000.0)

    guidance_node = logic.guidance_logic.process(ct_node, organ_settings)
    # The comparison below means something only for a non-empty tumor: on this tumor-free CT the demo model
    # still marks voxels inside the OOI (measured with the shipped model: 4218 voxels, all of them in the OOI).
    ooi = guidance_from_segmentation_node(guidance_node, ct, ts, []).ooi.array > 0
    in_ooi = np.count_nonzero(computed & ooi)
    assert in_ooi > 1000, f"{in_ooi} tumor voxels in the OOI: too few for the comparison of the two routes to mean much"
    from_scene = CRCSegmentationSettings(model=str(model_bundle), guidance_source="scene", guidance_node=guidance_node,
                                         segmentation=parameters)
    again = logic.process(ct_node, from_scene, output_node=node)
    assert again is node and node.GetSegmentation().GetNumberOfSegments() == 1
    np.testing.assert_array_equal(segment_mask(node, tumor_segment_id(node), ct), computed)
