"""DICOM SEG of binary masks on the CT grid, with highdicom: one segment per non-empty label, coded from
``codes``, each frame referencing its source CT instance, the algorithm named (family: artificial intelligence)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dicom_codes

from CRCSegmentationLib.dicom.codes import SegmentCode, segment_code
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.validation import InputError

ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC")
MANUFACTURER = "SlicerCRC"
SEG_SERIES_NUMBER = 300  # after the source series; readers sort by it


@dataclass
class Algorithm:
    name: str
    version: str
    type: str = "AUTOMATIC"

    def __post_init__(self) -> None:
        if self.type not in ALGORITHM_TYPES:
            raise InputError(f"algorithm type '{self.type}': choose one of {', '.join(ALGORITHM_TYPES)}")
        if not self.name.strip():
            raise InputError("algorithm name: empty (DICOM SEG names the model that made each segment)")

    def identification(self) -> hd.AlgorithmIdentificationSequence:
        return hd.AlgorithmIdentificationSequence(name=self.name, family=dicom_codes.DCM.ArtificialIntelligence,
                                                  version=self.version or "unknown")


def coded(code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def non_empty_segments(segments: Dict[str, np.ndarray], ct: Image) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """The coded segments with voxels, as booleans, and the names of those without a code (left out: DICOM needs a
    code for each); ``InputError`` for a mask off the CT grid or two names of one code."""
    kept: Dict[str, np.ndarray] = {}
    uncoded = []
    labels: Dict[str, str] = {}
    for name, mask in segments.items():
        mask = np.asarray(mask)
        if mask.shape != ct.shape:
            raise InputError(f"segment '{name}': shape {mask.shape} is not the CT grid {ct.shape}")
        try:
            label = segment_code(name).label
        except ValueError:
            uncoded.append(name)
            continue
        if label in labels:
            raise InputError(f"segments '{labels[label]}' and '{name}': both are {label}; give each structure once")
        labels[label] = name
        if mask.any():
            kept[name] = mask > 0
    return kept, uncoded


def _description(number: int, row: SegmentCode, algorithm: Algorithm) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=row.display_name,
        segmented_property_category=coded(row.category), segmented_property_type=coded(row.type),
        algorithm_type=algorithm.type, algorithm_identification=algorithm.identification(),
        tracking_uid=hd.UID(), tracking_id=row.label,
        display_color=hd.color.CIELabColor.from_rgb(*row.color))


def build_seg(sources: List[Dataset], segments: Dict[str, np.ndarray], algorithm: Algorithm) -> Optional[hd.seg.Segmentation]:
    """A BINARY SEG over ``sources`` (``sources[k]`` = the instance of array slice k, ``source.instances_for_slices``);
    ``segments`` are non-empty masks (``non_empty_segments``); ``None`` when there are none."""
    if not segments:
        return None
    names = list(segments)
    pixels = np.stack([segments[name] for name in names], axis=-1).astype(np.uint8)  # frames, rows, columns, segments
    descriptions = [_description(i + 1, segment_code(name), algorithm) for i, name in enumerate(names)]
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name[:64], software_versions=algorithm.version or "unknown",
        device_serial_number="none", series_description=f"{algorithm.name} segmentation"[:64],
        content_label="SEGMENTATION", content_description=f"{algorithm.type.lower()} segmentation")


def segment_number(seg: Dataset, label: str) -> int:
    """The SegmentNumber of ``label`` (its tracking id) in ``seg``; ``InputError`` when it has none."""
    for item in seg.SegmentSequence:
        if getattr(item, "TrackingID", "") == segment_code(label).label:
            return int(item.SegmentNumber)
    raise InputError(f"DICOM SEG: has no segment '{label}'")


def frame_sources(seg: Dataset) -> Sequence[str]:
    """The source SOP instance UID of each frame (for checks and tests)."""
    return [frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for frame in seg.PerFrameFunctionalGroupsSequence]
