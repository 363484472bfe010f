"""Export to DICOM from the scene: the segments of a CT that Slicer loaded from DICOM, as SEG, RTSTRUCT and SR.

Slicer's DICOM module marks a volume it loaded with the SOP instance UIDs of its slices (the node attribute
``DICOM.instanceUIDs``) and keeps the files in its database (``slicer.dicomDatabase.fileForInstance``). This
module finds the source files that way and hands the segments, on the CT's grid, to the same writers
``crcseg segment --output-type`` uses (``CRCSegmentationLib.dicom``): same codes, same references. A segment
the point refinement changed is exported as SEMIAUTOMATIC (``ALGORITHM_TYPE_TAG``), else AUTOMATIC.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from OrganGuidanceLib.image_files import printable
from OrganGuidanceLib.validation import InputError

INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"  # set by Slicer's DICOM scalar volume plugin
ALGORITHM_TYPE_TAG = "CRCSegmentation.AlgorithmType"  # segment tag: AUTOMATIC, or SEMIAUTOMATIC once refined
SEMIAUTOMATIC = "SEMIAUTOMATIC"
AUTOMATIC = "AUTOMATIC"
FileForInstance = Callable[[str], str]


def mark_refined(segmentation_node, segment_id: str) -> None:
    """The segment was changed by prompts: its DICOM export says SEMIAUTOMATIC."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is not None:
        segment.SetTag(ALGORITHM_TYPE_TAG, SEMIAUTOMATIC)


def came_from_dicom(volume_node) -> bool:
    """Whether Slicer loaded ``volume_node`` from DICOM (the panels offer "Export to DICOM" then)."""
    return volume_node is not None and bool((volume_node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").strip())


def _database_lookup() -> FileForInstance:
    import slicer

    database = getattr(slicer, "dicomDatabase", None)
    if database is None:
        raise InputError("Export to DICOM: Slicer's DICOM database is not open (open the DICOM module once)")
    return database.fileForInstance


def source_files(volume_node, file_for_instance: Optional[FileForInstance] = None) -> List[Path]:
    """The DICOM files ``volume_node`` was loaded from; ``InputError`` naming the volume when it has none or a file
    is no longer in the database."""
    from OrganGuidanceLib.mrml import node_name

    uids = (volume_node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if not uids:
        raise InputError(f"{node_name(volume_node)}: was not loaded from DICOM (no {INSTANCE_UIDS_ATTRIBUTE}); "
                         "DICOM SEG, RTSTRUCT and SR reference their source series: load the CT with the DICOM module")
    lookup = file_for_instance or _database_lookup()
    files = [lookup(uid) for uid in uids]
    missing = [uid for uid, file in zip(uids, files) if not file or not Path(file).is_file()]
    if missing:
        raise InputError(f"{node_name(volume_node)}: {len(missing)} of its {len(uids)} DICOM files are not in the DICOM "
                         f"database any more (first: SOP instance {missing[0]}); import the series again")
    return [Path(f) for f in files]


def segments_on_ct_grid(segmentation_node, ct) -> Dict[str, np.ndarray]:
    """Each segment with voxels, as a 0/1 array on the CT's grid, by segment name."""
    from OrganGuidanceLib.mrml import segment_mask

    segmentation = segmentation_node.GetSegmentation()
    masks = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        mask = segment_mask(segmentation_node, segment_id, ct)
        if mask.any():
            masks[segmentation.GetSegment(segment_id).GetName()] = mask
    return masks


def algorithm_type(segmentation_node) -> str:
    """SEMIAUTOMATIC when any segment was refined by prompts, else AUTOMATIC."""
    from CRCSegmentationLib.mrml import segment_tag

    segmentation = segmentation_node.GetSegmentation()
    refined = any(segment_tag(segmentation.GetNthSegment(i), ALGORITHM_TYPE_TAG) == SEMIAUTOMATIC
                  for i in range(segmentation.GetNumberOfSegments()))
    return SEMIAUTOMATIC if refined else AUTOMATIC


def export_to_dicom(volume_node, segmentation_node, folder, types: Sequence[str], model_name: str,
                    model_version: str = "", file_for_instance: Optional[FileForInstance] = None):
    """Write ``types`` (``dicom-seg``, ``rtstruct``, ``sr``) for ``segmentation_node`` over ``volume_node`` into
    ``folder``, named after the segmentation as ``export_segmentation`` names its files; returns the writer's ``DicomOutputs``. Touches no node."""
    from CRCSegmentationLib.dicom.export import write_dicom_outputs
    from CRCSegmentationLib.measurement.statistics import tumor_statistics
    from CRCSegmentationLib.mrml import file_base_name
    from OrganGuidanceLib.mrml import image_from_volume_node

    if segmentation_node is None:
        raise InputError("Export to DICOM: no segmentation to export")
    files = source_files(volume_node, file_for_instance)
    ct = image_from_volume_node(volume_node)
    segments = segments_on_ct_grid(segmentation_node, ct)
    tumor = next((mask for name, mask in segments.items() if name.lower() == "tumor"), None)
    statistics = tumor_statistics(ct.with_array(tumor.astype(np.uint8))) if tumor is not None else None
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"Export to DICOM: {printable(folder)} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return write_dicom_outputs(types, folder, file_base_name(segmentation_node), files, ct, segments, model_name, model_version,
                               algorithm_type=algorithm_type(segmentation_node), statistics=statistics)
