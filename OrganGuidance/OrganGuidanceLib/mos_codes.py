"""The MOS input channel's organ code, independent of the model that segmented the organs.

A network trained on TotalSegmentator ids would break on a WORD-style map (and on
TotalSegmentator's next relabelling); both training (``CRCTraining.data.prepare_ct``) and
inference (``CRCSegmentationLib``) write the MOS channel in this compact code instead.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from OrganGuidanceLib.image import Image
from OrganGuidanceLib.labels import LabelConvention
from OrganGuidanceLib.validation import check_label_map

MOS_CODES: Dict[int, str] = {
    0: "background", 1: "stomach", 2: "duodenum", 3: "small_bowel", 4: "colon", 5: "rectum", 6: "other_organ",
}
OTHER_ORGAN_CODE = 6


def mos_lookup_table(convention: LabelConvention, largest_value: int) -> np.ndarray:
    """Label value -> compact MOS code, for values 0..``largest_value``."""
    table = np.full(max(largest_value, max(convention.labels, default=0)) + 1, OTHER_ORGAN_CODE, dtype=np.uint8)
    table[0] = 0
    for code in range(1, OTHER_ORGAN_CODE):  # in code order, so colon (4) comes before rectum (5)
        for value in convention.organ_labels.get(MOS_CODES[code], ()):
            if table[value] == OTHER_ORGAN_CODE:  # TotalSegmentator's rectum is colon's id: it stays colon
                table[value] = code
    return table


def compact_mos(label_map: Image, convention: LabelConvention) -> Image:
    """Remap a MOS label map to ``MOS_CODES`` (0 background .. 6 any other organ)."""
    check_label_map(label_map)
    table = mos_lookup_table(convention, int(label_map.array.max()))
    codes = np.empty(label_map.shape, dtype=np.uint8)
    for index, slab in enumerate(label_map.array):  # slab by slab: no full-size int64 index array
        codes[index] = table[slab.astype(np.intp)]
    return label_map.with_array(codes, "MOS (compact code)")
