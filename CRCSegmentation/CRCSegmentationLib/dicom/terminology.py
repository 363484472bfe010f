"""Slicer terminology from ``codes``: the "TerminologyEntry" string a segment is tagged with, and the
SegmentationCategoryTypeModifier JSON file shipped in ``CRCSegmentation/Resources`` (generated, never hand-edited:
``python -m CRCSegmentationLib.dicom.terminology`` rewrites it; a test checks it equals the generated one).

Standard library only (the widget tags segments before heavy packages are installed).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Tuple

from CRCSegmentationLib.dicom.codes import SEGMENT_CODES, Code, segment_code

CONTEXT_NAME = "Segmentation category and type - SlicerCRC"
SLICER_DICOM_CONTEXT = "Segmentation category and type - DICOM master list"  # Slicer's own, always loaded
FILE_NAME = "SegmentationCategoryTypeModifier-SlicerCRC.term.json"
SCHEMA = "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#"


def terminology_file() -> Path:
    """Where the module ships it: its ``Resources/`` (beside the Lib; inside the package in a wheel)."""
    from CRCSegmentationLib.core.resources import resources_folder

    return resources_folder() / FILE_NAME


def _triple(code: Optional[Code]) -> str:
    return "^".join((code.scheme, code.value, code.meaning)) if code else "^^"


def terminology_entry(name: str, context: str = CONTEXT_NAME) -> str:
    """Slicer's serialised entry: ``context~category~type~type modifier~anatomic context~region~region modifier``;
    ``ValueError`` for a name without a code."""
    row = segment_code(name)
    return f"{context}~{_triple(row.category)}~{_triple(row.type)}~{_triple(row.modifier)}~~^^~^^"


def _coded(code: Code) -> Dict[str, str]:
    return {"CodeMeaning": code.meaning, "CodingSchemeDesignator": code.scheme, "CodeValue": code.value}


def terminology() -> Dict[str, object]:
    """The context as Slicer's SegmentationCategoryTypeModifier JSON holds it: one category per distinct code, one type
    per distinct code within it; rows that differ by modifier only (left / right kidney) are the type's modifiers."""
    categories: Dict[Code, Dict[str, object]] = {}
    types: Dict[Tuple[Code, Code], Dict[str, object]] = {}
    for row in SEGMENT_CODES:
        category = categories.setdefault(row.category, {**_coded(row.category), "showAnatomy": "false", "Type": []})
        entry = types.get((row.category, row.type))
        if entry is None:
            entry = types[(row.category, row.type)] = {**_coded(row.type), "recommendedDisplayRGBValue": list(row.color)}
            category["Type"].append(entry)  # type: ignore[attr-defined]
        if row.modifier:
            entry["hasModifiers"] = "true"
            entry.setdefault("Modifier", []).append(  # type: ignore[attr-defined]
                {**_coded(row.modifier), "recommendedDisplayRGBValue": list(row.color)})
    return {"SegmentationCategoryTypeContextName": CONTEXT_NAME, "@schema": SCHEMA,
            "SegmentationCodes": {"Category": list(categories.values())}}


def terminology_text() -> str:
    return json.dumps(terminology(), indent=2) + "\n"


def write_terminology_file(path: Optional[Path] = None) -> Path:
    from OrganGuidanceLib.atomic import write_text_atomic

    return write_text_atomic(path or terminology_file(), terminology_text())


if __name__ == "__main__":
    print(write_terminology_file())
