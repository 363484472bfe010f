"""The segments the CRC Segmentation module writes carry Slicer terminology from the one table of codes
(dicom.codes, which the DICOM SEG uses too): slicer-core, real CT."""
from __future__ import annotations

import numpy as np

from CRCSegmentationLib.dicom.terminology import SLICER_DICOM_CONTEXT, terminology_entry
from CRCSegmentationLib.mrml import TUMOR_TERMINOLOGY, tumor_segment_id, tumor_to_segmentation_node
from OrganGuidanceLib.mrml import add_volume_node

LIVER, COLON = 5, 20  # TotalSegmentator v2 ids in the real CT's organ map


def test_tumor_and_coded_organ_segments_are_tagged_others_keep_theirs(mrml_scene, ct, organs):
    ct_node = add_volume_node(mrml_scene, ct, "CT")
    colon = organs.array == COLON
    tumor = np.zeros(ct.shape, np.uint8)
    low = int(np.flatnonzero(colon.any(axis=(1, 2)))[0])
    tumor[low:low + 4] = colon[low:low + 4]
    other = (organs.array > 0) & (organs.array != LIVER) & (organs.array != COLON)  # named "bones": no code
    model_organs = np.select([organs.array == LIVER, colon & (tumor == 0), other], [1, 2, 3]).astype(np.uint8)
    node = tumor_to_segmentation_node(mrml_scene, ct.with_array(tumor, "Tumor"), ct_node, ct=ct,
                                      organs=ct.with_array(model_organs, "organs"),
                                      organ_names={1: "liver", 2: "colon", 3: "bones"})
    segmentation = node.GetSegmentation()
    assert segmentation.GetSegment(tumor_segment_id(node)).GetTerminology() == TUMOR_TERMINOLOGY
    assert TUMOR_TERMINOLOGY == ("Segmentation category and type - DICOM master list~SCT^49755003^Morphologically "
                                 "Altered Structure~SCT^86049000^Neoplasm, Primary~^^~~^^~^^")
    colon_segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("colon"))
    assert colon_segment.GetTerminology() == terminology_entry("colon", SLICER_DICOM_CONTEXT)
    assert "SCT^71854001^Colon" in colon_segment.GetTerminology()
    liver = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("liver")).GetTerminology()
    assert liver == terminology_entry("liver", SLICER_DICOM_CONTEXT) and "SCT^10200004^Liver" in liver
    bones = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("bones")).GetTerminology()
    assert "~SCT^85756007^Tissue~SCT^85756007^Tissue~" in bones  # no code in our table: Slicer's default stays
