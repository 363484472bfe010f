"""Organ-interference models (FLARE24): their organs are written as segments of their own when kept,
never into the "Tumor" segment (slicer-core, real CT)."""
from __future__ import annotations

import dataclasses

import numpy as np

from CRCSegmentationLib.core.segmentation import TumorSegmentation
from CRCSegmentationLib.logic import CRCSegmentationLogic, CRCSegmentationSettings, SegmentationJob
from CRCSegmentationLib.models.open import open_model
from CRCSegmentationLib.mrml import MODEL_ORGAN_TAG, segment_tag, tumor_segment_id
from OrganGuidanceLib.crop import CropBox
from OrganGuidanceLib.mrml import SEGMENT_TAG as GUIDANCE_SEGMENT_TAG
from OrganGuidanceLib.mrml import add_volume_node, segment_mask

LIVER, COLON = 5, 20  # TotalSegmentator v2 ids in the real CT's organ map


def test_kept_organs_become_their_own_segments(mrml_scene, ct, organs):
    ct_node = add_volume_node(mrml_scene, ct, "CT")
    liver, colon = organs.array == LIVER, organs.array == COLON
    low = int(np.flatnonzero(colon.any(axis=(1, 2)))[0])
    tumor = np.zeros(ct.shape, np.uint8)
    tumor[low:low + 6] = colon[low:low + 6]
    model_organs = np.where(liver, 1, np.where(colon & (tumor == 0), 11, 0)).astype(np.uint8)  # model label values
    model = dataclasses.replace(open_model("demo_phantom"), organ_labels={"liver": 1, "colon": 11})
    job = SegmentationJob(ct=ct, ct_node_id=ct_node.GetID(), settings=CRCSegmentationSettings(model="x"), model=model)
    result = TumorSegmentation(mask=ct.with_array(tumor, "Tumor"), probabilities=None, region=CropBox.full(ct.shape),
                               device="cpu", organs=ct.with_array(model_organs, "Model organs"))
    node = CRCSegmentationLogic(mrml_scene).apply(job, result)
    segmentation = node.GetSegmentation()
    names = sorted(segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments()))
    assert names == ["Tumor", "colon", "liver"]  # organ_display_name keeps the model's label names
    np.testing.assert_array_equal(segment_mask(node, tumor_segment_id(node), ct), tumor > 0)
    liver_id = segmentation.GetSegmentIdBySegmentName("liver")
    np.testing.assert_array_equal(segment_mask(node, liver_id, ct), liver)
    assert segment_tag(segmentation.GetSegment(liver_id), GUIDANCE_SEGMENT_TAG) == MODEL_ORGAN_TAG
    assert segment_tag(segmentation.GetSegment(tumor_segment_id(node)), GUIDANCE_SEGMENT_TAG) != MODEL_ORGAN_TAG
