"""The one table of segment codes: label name -> SNOMED CT category / type (+ modifier), colour, RT ROI type.

Standard library only: the panel imports it before heavy packages. The codes are those of Slicer's DICOM master
list and TotalSegmentator's ``totalsegmentator_snomed_mapping.csv`` (organs: category SCT 123037004 "Anatomical
Structure"); the tumor is SCT 49755003 "Morphologically Altered Structure" / 86049000 "Neoplasm, Primary", as
``CRCSegmentationLib.mrml`` tags the tumor segment. The colours of the organs are TotalSegmentator's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

SCT = "SCT"


@dataclass(frozen=True)
class Code:
    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class SegmentCode:
    """How one label is named in DICOM SEG, RTSTRUCT and Slicer's terminology."""

    label: str  # canonical label name (lower case, underscores)
    display_name: str  # SEG segment label, RT ROI name
    category: Code
    type: Code
    modifier: Optional[Code]
    color: Tuple[int, int, int]  # RGB 0-255
    rt_roi_type: str  # RTROIInterpretedType (C.8.8.8: GTV, ORGAN, ...)
    aliases: Tuple[str, ...] = ()


MORPHOLOGICALLY_ALTERED = Code("49755003", SCT, "Morphologically Altered Structure")
ANATOMICAL_STRUCTURE = Code("123037004", SCT, "Anatomical Structure")


LEFT, RIGHT = Code("7771000", SCT, "Left"), Code("24028007", SCT, "Right")


def _organ(label: str, name: str, value: str, meaning: str, color: Tuple[int, int, int],
           aliases: Tuple[str, ...] = (), modifier: Optional[Code] = None) -> SegmentCode:
    return SegmentCode(label, name, ANATOMICAL_STRUCTURE, Code(value, SCT, meaning), modifier, color, "ORGAN", aliases)


SEGMENT_CODES: Tuple[SegmentCode, ...] = (
    SegmentCode("tumor", "GTV", MORPHOLOGICALLY_ALTERED, Code("86049000", SCT, "Neoplasm, Primary"), None,
                (217, 51, 51), "GTV", ("tumour", "gtv", "colorectal_tumor", "rectal_tumor", "colon_cancer")),
    _organ("rectum", "Rectum", "34402009", "Rectum", (185, 102, 83)),
    _organ("colon", "Colon", "71854001", "Colon", (150, 40, 170), ("large_bowel", "large_intestine", "sigmoid")),
    _organ("small_bowel", "Small bowel", "30315005", "Small Intestine", (160, 60, 180),
           ("small_intestine", "intestine", "smallbowel")),
    _organ("duodenum", "Duodenum", "38848004", "Duodenum", (170, 80, 190)),
    _organ("stomach", "Stomach", "69695003", "Stomach", (180, 70, 160)),
    _organ("esophagus", "Esophagus", "32849002", "Esophagus", (190, 90, 170)),
    _organ("urinary_bladder", "Urinary bladder", "89837001", "Urinary bladder", (54, 94, 216), ("bladder",)),
    _organ("prostate", "Prostate", "41216001", "Prostate", (91, 253, 156)),
    _organ("uterus", "Uterus", "35039007", "Uterus", (255, 181, 158)),
    # the other abdominal organs an organ-interference model (FLARE24: 13 organs) may keep as segments
    _organ("liver", "Liver", "10200004", "Liver", (40, 140, 40)),
    _organ("spleen", "Spleen", "78961009", "Spleen", (50, 170, 60)),
    _organ("pancreas", "Pancreas", "15776009", "Pancreas", (60, 150, 80)),
    _organ("gallbladder", "Gallbladder", "28231008", "Gallbladder", (54, 216, 119), ("gall_bladder",)),
    _organ("aorta", "Aorta", "15825003", "Aorta", (216, 108, 54)),
    _organ("inferior_vena_cava", "Inferior vena cava", "64131007", "Inferior vena cava", (0, 70, 200),
           ("ivc", "postcava")),
    _organ("kidney_left", "Left kidney", "64033007", "Kidney", (46, 138, 184), ("left_kidney",), LEFT),
    _organ("kidney_right", "Right kidney", "64033007", "Kidney", (34, 102, 136), ("right_kidney",), RIGHT),
    _organ("adrenal_gland_left", "Left adrenal gland", "23451007", "Adrenal gland", (241, 172, 34),
           ("left_adrenal_gland",), LEFT),
    _organ("adrenal_gland_right", "Right adrenal gland", "23451007", "Adrenal gland", (178, 128, 26),
           ("right_adrenal_gland",), RIGHT),
)
_BY_NAME: Dict[str, SegmentCode] = {name: row for row in SEGMENT_CODES for name in (row.label, *row.aliases)}
if len(_BY_NAME) != sum(1 + len(row.aliases) for row in SEGMENT_CODES):
    raise RuntimeError("dicom.codes: a label name or alias is listed twice")


def canonical_label(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def segment_code(name: str) -> SegmentCode:
    """The codes of label ``name`` (any case, spaces or underscores, known aliases); ``ValueError`` naming it."""
    row = _BY_NAME.get(canonical_label(name))
    if row is None:
        raise ValueError(f"segment '{name}': no DICOM code is known for it; known labels: "
                         f"{', '.join(row.label for row in SEGMENT_CODES)}")
    return row
