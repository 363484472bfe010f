"""Write the DICOM outputs of one case (``crcseg segment --output-type``, the batch, the module's export).

The SR references the SEG segment it measures: when "sr" is asked for without "dicom-seg", the SEG is still built
(in memory only, so its SOP instance UID is referenced but no file is written; a note says so). Then the SR's
reference cannot be resolved from the output folder: ask for both to archive a complete pair.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from pydicom.dataset import Dataset

from CRCSegmentationLib.dicom import FILE_ENDINGS
from CRCSegmentationLib.dicom.codes import segment_code
from CRCSegmentationLib.dicom.rtstruct import build_rtstruct
from CRCSegmentationLib.dicom.seg import Algorithm, build_seg, non_empty_segments
from CRCSegmentationLib.dicom.source import instances_for_slices, read_source_series
from CRCSegmentationLib.dicom.sr import build_sr
from CRCSegmentationLib.measurement.statistics import TumorStatistics
from OrganGuidanceLib.atomic import atomic_path
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.validation import InputError

DICOM_TYPES = tuple(FILE_ENDINGS)
TUMOR = "tumor"


@dataclass
class DicomOutputs:
    files: Dict[str, Path] = field(default_factory=dict)  # output type -> written file
    notes: List[str] = field(default_factory=list)  # what was not written, and why


def _save(dataset: Dataset, path: Path) -> Path:
    with atomic_path(path, ".dcm") as temporary:
        dataset.save_as(str(temporary), enforce_file_format=True)
    return path


def write_dicom_outputs(types: Sequence[str], folder: Path, case: str, source_files: Sequence[Path], ct: Image,
                        segments: Dict[str, np.ndarray], model_name: str, model_version: str,
                        algorithm_type: str = "AUTOMATIC",
                        statistics: Optional[TumorStatistics] = None) -> DicomOutputs:
    """Write ``<case>_seg.dcm``, ``<case>_rtstruct.dcm``, ``<case>_sr.dcm`` (those in ``types``) into ``folder``.

    ``segments``: label name -> 0/1 array on the grid of ``ct``, the CT read from ``source_files``. Empty segments
    are left out; with none left, nothing is written and ``notes`` says so. The SR needs a tumor and ``statistics``.
    """
    unknown = [kind for kind in types if kind not in DICOM_TYPES]
    if unknown:
        raise InputError(f"DICOM output types {unknown}: unknown; choose from {', '.join(DICOM_TYPES)}")
    outputs = DicomOutputs()
    if not types:
        return outputs
    algorithm = Algorithm(model_name, model_version, algorithm_type)
    kept, uncoded = non_empty_segments(segments, ct)
    if uncoded:
        outputs.notes.append(f"{case}: segments {', '.join(uncoded)} have no DICOM code "
                             "(CRCSegmentationLib.dicom.codes): left out of the DICOM outputs")
    folder = Path(folder)
    if not kept:  # checked first: nothing to write needs no source files read
        outputs.notes.append(f"{case}: no segment has voxels (no tumor found): no "
                             f"{', '.join(FILE_ENDINGS[kind][1:] for kind in types)} written")
        return outputs
    has_tumor = TUMOR in {_label(name) for name in kept}
    if "sr" in types and has_tumor and statistics is None:  # checked before anything is written
        raise InputError(f"{case}: a DICOM SR was asked for without tumor statistics")
    sources = instances_for_slices(read_source_series(source_files), ct)
    seg = build_seg(sources, kept, algorithm)
    datasets: Dict[str, Dataset] = {}  # every object is built before the first file is written
    if "dicom-seg" in types:
        datasets["dicom-seg"] = seg
    if "rtstruct" in types:
        datasets["rtstruct"] = build_rtstruct(sources, kept, ct, algorithm)
    if "sr" in types and not has_tumor:
        outputs.notes.append(f"{case}: no tumor found: no SR written")
    elif "sr" in types:
        datasets["sr"] = build_sr(seg, sources, statistics, algorithm, _tumor_name(kept))
        if "dicom-seg" not in types:
            outputs.notes.append(f"{case}: the SR references a SEG that was not written (ask for dicom-seg too)")
    for kind, dataset in datasets.items():
        outputs.files[kind] = _save(dataset, folder / f"{case}{FILE_ENDINGS[kind]}")
    return outputs


def _label(name: str) -> str:
    return segment_code(name).label


def _tumor_name(segments: Dict[str, np.ndarray]) -> str:
    return next(name for name in segments if _label(name) == TUMOR)
