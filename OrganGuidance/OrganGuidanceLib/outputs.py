"""Writing a guidance result to a folder (CLI, demo and batch scripts share this)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from OrganGuidanceLib.atomic import staged_folder, write_text_atomic
from OrganGuidanceLib.guidance import GuidanceParameters, GuidanceResult
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import write_image

OUTPUT_FILES = {
    "mos": "mos.nii.gz",
    "ooi": "ooi.nii.gz",
    "ooi0": "ooi0.nii.gz",
    "bowel_wall": "bowel_wall.nii.gz",
    "crop_box": "crop_box.json",
    "overlay": "guidance_overlay.png",
    "summary": "guidance.json",
}
CROPPED_FOLDER = "cropped"


def guidance_owned(name: str) -> bool:
    """Top-level entries of an output folder that ``crcseg guidance`` writes (``--overwrite`` replaces them)."""
    return name in OUTPUT_FILES.values() or name == CROPPED_FOLDER


def guidance_summary(ct: Image, result: GuidanceResult, parameters: GuidanceParameters) -> Dict:
    voxel_ml = float(np.prod(ct.spacing)) / 1000.0
    return {
        "ct": {"name": ct.name, "shape_zyx": list(ct.shape), "spacing_xyz_mm": list(ct.spacing)},
        "parameters": vars(parameters).copy(),
        "organs_present": {str(k): v for k, v in result.organ_names.items()},
        "volumes_ml": {
            "ooi0": round(float(result.ooi0.array.sum()) * voxel_ml, 2),
            "ooi": round(float(result.ooi.array.sum()) * voxel_ml, 2),
            "bowel_wall": round(float(result.bowel_wall.array.sum()) * voxel_ml, 2),
        },
        "crop_box": result.crop_box.to_dict(ct) if result.crop_box else None,
        "warnings": list(result.warnings),
    }


def write_guidance_outputs(
    ct: Image,
    result: GuidanceResult,
    output_dir: Path,
    parameters: GuidanceParameters,
    tumor: Optional[Image] = None,
    overlay: bool = True,
    cropped: bool = False,
) -> Dict[str, Path]:
    """Write MOS, OOI, OOI0, bowel wall (NIfTI, uint8), crop box and summary JSON, QA PNG (and the body crops).

    All files are written into a staging folder and moved into ``output_dir`` together: a failure
    halfway never leaves this run's masks beside an earlier run's summary.
    """
    output_dir = Path(output_dir)
    written: Dict[str, Path] = {}
    with staged_folder(output_dir, last=OUTPUT_FILES["summary"]) as staging:
        for key, image in (("mos", result.mos), ("ooi", result.ooi), ("ooi0", result.ooi0),
                           ("bowel_wall", result.bowel_wall)):
            array = image.array.astype(np.uint8 if image.array.max() < 256 else np.uint16)
            written[key] = write_image(image.with_array(array), staging / OUTPUT_FILES[key])
        if result.crop_box is not None:
            written["crop_box"] = write_text_atomic(staging / OUTPUT_FILES["crop_box"], result.crop_box.to_json(ct))
            if cropped:
                for name, image in (("ct", ct), ("mos", result.mos), ("ooi", result.ooi)):
                    written[f"cropped_{name}"] = write_image(result.crop_box.apply(image),
                                                             staging / CROPPED_FOLDER / f"{name}.nii.gz")
        summary = guidance_summary(ct, result, parameters)
        written["summary"] = write_text_atomic(staging / OUTPUT_FILES["summary"], json.dumps(summary, indent=2))
        if overlay:
            from OrganGuidanceLib.qa import save_guidance_overlay  # matplotlib only when a picture is asked for

            written["overlay"] = save_guidance_overlay(ct, result, staging / OUTPUT_FILES["overlay"], tumor=tumor)
    return {key: output_dir / path.relative_to(staging) for key, path in written.items()}
