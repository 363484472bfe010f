"""OrganGuidanceLogic end to end under slicer-core, on the real example CT (no mocks)."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from mrml_helpers import segmentation_from_masks

from OrganGuidanceLib.guidance import GuidanceParameters, MOSSource, run_guidance
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import read_image, write_image
from OrganGuidanceLib.labels import word_convention
from OrganGuidanceLib.logic import GuidanceJob, OrganGuidanceLogic, OrganGuidanceSettings, OrganSourceChoice
from OrganGuidanceLib.mrml import (
    BOWEL_WALL_SEGMENT_NAME,
    CROP_BOX_REFERENCE_ROLE,
    OOI_SEGMENT_NAME,
    add_volume_node,
    segment_mask,
)
from OrganGuidanceLib.progress import RunCancelled
from OrganGuidanceLib.providers import MissingWeightsError
from OrganGuidanceLib.validation import InputError

# TotalSegmentator v2 class name -> WORD id (shared/DESIGN.md), to fake a WORD-style second model.
WORD_IDS = {"liver": 1, "spleen": 2, "kidney_left": 3, "kidney_right": 4, "stomach": 5, "gallbladder": 6,
            "esophagus": 7, "pancreas": 8, "duodenum": 9, "colon": 10, "small_bowel": 11, "urinary_bladder": 14}





@pytest.fixture
def word_file(tmp_path, organs, ts) -> Path:
    lookup = np.zeros(int(organs.array.max()) + 1, dtype=np.uint8)
    for value, name in ts.labels.items():
        if name in WORD_IDS and value < len(lookup):
            lookup[value] = WORD_IDS[name]
    return write_image(organs.with_array(lookup[organs.array]), tmp_path / "word_organs.nii.gz")


@pytest.fixture
def ct_node(mrml_scene, ct):
    return add_volume_node(mrml_scene, ct, "Case 1 CT")


@pytest.fixture
def logic(mrml_scene) -> OrganGuidanceLogic:
    return OrganGuidanceLogic(mrml_scene)



def test_label_map_node_plus_word_file_end_to_end(mrml_scene, ct, organs, ts, word_file, ct_node, logic):
    # The first source lacks the colon; only the WORD-style file has it, so the OOI proves the OR-merge.
    without_colon = organs.with_array(np.where(organs.array == 20, 0, organs.array), "TS organs")
    label_node = add_volume_node(mrml_scene, without_colon, "TS organs", labelmap=True)
    settings = OrganGuidanceSettings(
        primary=OrganSourceChoice(kind="node", node=label_node, convention="totalsegmentator"),
        secondary=OrganSourceChoice(kind="file", file_path=str(word_file), convention="word"),
    )
    assert settings.is_valid() == (True, "")

    job = logic.prepare(ct_node, settings)
    assert job.ct_node_id == ct_node.GetID() and job.ct.same_grid(ct)
    assert [s.convention.name for s in job.imported_sources] == ["totalsegmentator", "word"]
    stages = []
    result = logic.compute(job, progress=lambda stage, fraction: stages.append(fraction))
    assert stages == sorted(stages) and stages[-1] == 1.0

    expected = run_guidance(ct, [MOSSource(without_colon, ts), MOSSource(read_image(word_file), word_convention())])
    np.testing.assert_array_equal(result.ooi.array, expected.ooi.array)
    assert result.ooi0.array[organs.array == 20].all()  # colon from the second source
    assert 20 not in result.organ_names  # the MOS channel is the first source's

    nodes_before = mrml_scene.GetNumberOfNodes()
    segmentation_node = logic.apply(job, result)
    assert segmentation_node.GetName() == "Case 1 CT organ guidance"
    np.testing.assert_array_equal(segment_mask(segmentation_node, "organs_of_interest", ct), result.ooi.array)
    roi = segmentation_node.GetNodeReference(CROP_BOX_REFERENCE_ROLE)
    assert roi is not None and roi.GetName() == "Case 1 CT body crop"
    created = mrml_scene.GetNumberOfNodes() - nodes_before

    # Run again into the same output: segments replaced, ROI updated in place, nothing new in the scene.
    segments = segmentation_node.GetSegmentation().GetNumberOfSegments()
    nodes_before = mrml_scene.GetNumberOfNodes()
    again = logic.process(ct_node, settings, output_node=segmentation_node)
    assert again is segmentation_node and created >= 2
    assert mrml_scene.GetNumberOfNodes() == nodes_before
    assert segmentation_node.GetSegmentation().GetNumberOfSegments() == segments
    assert segmentation_node.GetNodeReference(CROP_BOX_REFERENCE_ROLE).GetID() == roi.GetID()


def test_segmentation_node_source_and_worker_thread(mrml_scene, ct, organs, ct_node, logic):
    tumour = np.zeros(ct.shape, dtype=bool)
    tumour[40:45, 50:55, 60:65] = True
    masks = {"Colon": organs.array == 20, "Small bowel": organs.array == 18, "Tumour": tumour}
    user = segmentation_from_masks(mrml_scene, ct, masks, "my organs")
    settings = OrganGuidanceSettings(
        primary=OrganSourceChoice(kind="node", node=user, convention="totalsegmentator"),
        guidance=GuidanceParameters(body_crop=False),
    )
    job = logic.prepare(ct_node, settings)
    assert any("'Tumour'" in message for message in job.messages)
    assert sorted(np.unique(job.imported_sources[0].label_map.array)) == [0, 18, 20]

    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(result=logic.compute(job)))  # as the widget does
    worker.start()
    worker.join(timeout=120)
    segmentation_node = logic.apply(job, outcome["result"])
    names = {segmentation_node.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(segmentation_node.GetSegmentation().GetNumberOfSegments())}
    assert names == {"colon", "small bowel", OOI_SEGMENT_NAME, BOWEL_WALL_SEGMENT_NAME}
    assert segmentation_node.GetNodeReference(CROP_BOX_REFERENCE_ROLE) is None  # body crop off


def test_missing_totalsegmentator_weights_leave_the_scene_unchanged(mrml_scene, ct, ct_node, logic, tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path))
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path))
    nodes_before = mrml_scene.GetNumberOfNodes()
    with pytest.raises(MissingWeightsError, match="totalseg_download_weights"):
        logic.process(ct_node)  # default settings: TotalSegmentator
    assert mrml_scene.GetNumberOfNodes() == nodes_before
    # compute refuses too (a job made without prepare), before any subprocess starts.
    with pytest.raises(MissingWeightsError, match=str(tmp_path)):
        logic.compute(GuidanceJob(ct, ct_node.GetID(), OrganGuidanceSettings(), []))
    assert mrml_scene.GetNumberOfNodes() == nodes_before


def test_two_dimensional_volume_is_rejected_by_name(mrml_scene, ct, word_file, logic):
    single = add_volume_node(mrml_scene, Image(ct.array[50:51], ct.spacing, ct.origin, ct.direction), "Scout slice")
    settings = OrganGuidanceSettings(primary=OrganSourceChoice(kind="file", file_path=str(word_file), convention="word"))
    with pytest.raises(InputError, match="Scout slice: .*single slice"):
        logic.prepare(single, settings)


def test_segmentation_without_organs_is_rejected_and_scene_unchanged(mrml_scene, ct, ct_node, logic):
    tumour = np.zeros(ct.shape, dtype=bool)
    tumour[40:45, 50:55, 60:65] = True
    lesions = segmentation_from_masks(mrml_scene, ct, {"Tumor": tumour}, "Lesions only")
    settings = OrganGuidanceSettings(primary=OrganSourceChoice(kind="node", node=lesions, convention="totalsegmentator"))
    nodes_before = mrml_scene.GetNumberOfNodes()
    with pytest.raises(InputError, match=r"Lesions only: none of its segments \('Tumor'\)"):
        logic.process(ct_node, settings)
    assert mrml_scene.GetNumberOfNodes() == nodes_before


def test_label_map_as_ct_is_rejected(mrml_scene, organs, word_file, logic):
    node = add_volume_node(mrml_scene, organs, "organ labels", labelmap=True)
    settings = OrganGuidanceSettings(primary=OrganSourceChoice(kind="file", file_path=str(word_file), convention="word"))
    with pytest.raises(InputError, match="organ labels: is a vtkMRMLLabelMapVolumeNode, not a CT"):
        logic.prepare(node, settings)


def test_cancel_stops_compute_and_leaves_the_scene(mrml_scene, word_file, ct_node, logic):
    settings = OrganGuidanceSettings(primary=OrganSourceChoice(kind="file", file_path=str(word_file), convention="word"))
    job = logic.prepare(ct_node, settings)
    cancel = threading.Event()
    cancel.set()
    nodes_before = mrml_scene.GetNumberOfNodes()
    with pytest.raises(RunCancelled):
        logic.compute(job, cancel)
    assert mrml_scene.GetNumberOfNodes() == nodes_before


def test_cancel_during_guidance_stops_at_the_next_step(word_file, ct_node, logic):
    settings = OrganGuidanceSettings(primary=OrganSourceChoice(kind="file", file_path=str(word_file), convention="word"))
    job = logic.prepare(ct_node, settings)
    cancel = threading.Event()
    stages = []

    def progress(stage, fraction):
        stages.append(stage)
        cancel.set()  # the user presses Cancel while the first step runs

    with pytest.raises(RunCancelled, match="bowel wall"):
        logic.compute(job, cancel, progress)
    assert stages == ["organs of interest"]


@pytest.mark.parametrize(
    "settings, reason",
    [
        (OrganGuidanceSettings(primary=OrganSourceChoice(kind="none")), "first organ source: choose"),
        (OrganGuidanceSettings(primary=OrganSourceChoice(kind="node")), "first organ source: no label map or segmentation node"),
        (OrganGuidanceSettings(primary=OrganSourceChoice(kind="file")), "first organ source: no label map file"),
        (OrganGuidanceSettings(secondary=OrganSourceChoice(kind="file", file_path="/no/such.nii.gz")), "second organ source: file /no/such.nii.gz does not exist"),
        (OrganGuidanceSettings(secondary=OrganSourceChoice(kind="totalsegmentator")), "already the first source"),
        (OrganGuidanceSettings(device="tpu"), "device 'tpu'"),
        (OrganGuidanceSettings(guidance=GuidanceParameters(dilation_mm=-1)), "OOI dilation -1"),
    ],
)
def test_invalid_settings_are_explained(settings, reason, ct_node, logic):
    valid, message = settings.is_valid()
    assert not valid and reason in message
    with pytest.raises(InputError, match=reason.split(":")[0]):
        logic.prepare(ct_node, settings)


def test_bad_convention_and_unreadable_file_name_the_source(tmp_path, ct_node, logic, word_file):
    settings = OrganGuidanceSettings(primary=OrganSourceChoice(kind="file", file_path=str(word_file), convention="nnunet"))
    assert "label convention 'nnunet'" in settings.is_valid()[1]
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    settings = OrganGuidanceSettings(primary=OrganSourceChoice(kind="file", file_path=str(broken), convention="word"))
    with pytest.raises(InputError, match="first organ source: broken.nii.gz: cannot be read"):
        logic.prepare(ct_node, settings)
