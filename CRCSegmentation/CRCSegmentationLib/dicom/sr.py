"""DICOM SR TID 1500 measurement report of the tumor, with highdicom: volume (ml), largest axial diameter (mm),
cranio-caudal extent (mm) and the number of connected components (``measurement.statistics.TumorStatistics``),
as volumetric ROI measurements that reference the tumor segment of the SEG.

Standard concepts where DICOM has them (SCT 118565006 Volume; SCT 81827009 Diameter derived as SCT 56851009
Maximum); the extent and the component count have none, so they carry codes of this project's private scheme
``99SLICERCRC`` (a "99" designator is private by PS3.16 8.2).
"""
from __future__ import annotations

from typing import List

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dicom_codes

from CRCSegmentationLib.dicom.seg import MANUFACTURER, Algorithm, segment_number
from CRCSegmentationLib.measurement.statistics import TumorStatistics

SR_SERIES_NUMBER = 302
PRIVATE_SCHEME = "99SLICERCRC"
VOLUME = hd.sr.CodedConcept("118565006", "SCT", "Volume")
DIAMETER = hd.sr.CodedConcept("81827009", "SCT", "Diameter")
MAXIMUM = hd.sr.CodedConcept("56851009", "SCT", "Maximum")
CRANIOCAUDAL_EXTENT = hd.sr.CodedConcept("CCEXTENT", PRIVATE_SCHEME, "Cranio-caudal extent")
COMPONENTS = hd.sr.CodedConcept("COMPONENTS", PRIVATE_SCHEME, "Connected components")
MILLILITER = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
MILLIMETER = hd.sr.CodedConcept("mm", "UCUM", "millimeter")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")


def _measurements(statistics: TumorStatistics, algorithm: hd.sr.AlgorithmIdentification) -> List[hd.sr.Measurement]:
    return [
        hd.sr.Measurement(name=VOLUME, value=statistics.volume_ml, unit=MILLILITER, algorithm_id=algorithm),
        hd.sr.Measurement(name=DIAMETER, value=statistics.largest_axial_diameter_mm, unit=MILLIMETER,
                          derivation=MAXIMUM, algorithm_id=algorithm),
        hd.sr.Measurement(name=CRANIOCAUDAL_EXTENT, value=statistics.craniocaudal_extent_mm, unit=MILLIMETER,
                          algorithm_id=algorithm),
        hd.sr.Measurement(name=COMPONENTS, value=statistics.components, unit=NO_UNITS, algorithm_id=algorithm),
    ]


def referenced_segment(seg: Dataset, number: int) -> hd.sr.ReferencedSegment:
    """The SR's reference to segment ``number`` of ``seg`` and the source images its frames derive from.

    highdicom 0.28's ``ReferencedSegment.from_segmentation`` looks for the segment of each frame in the per-frame
    groups; a SEG of one segment keeps it in the shared groups (as highdicom itself writes it), so the source
    images are gathered here from the frames' derivation sequences."""
    if len(seg.SegmentSequence) > 1:
        return hd.sr.ReferencedSegment.from_segmentation(seg, number)
    sources = {}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        for derivation in getattr(frame, "DerivationImageSequence", []):
            for image in derivation.SourceImageSequence:
                sources[image.ReferencedSOPInstanceUID] = image.ReferencedSOPClassUID
    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
        source_images=[hd.sr.SourceImageForSegmentation(cls, uid) for uid, cls in sources.items()])


def build_sr(seg: Dataset, sources: List[Dataset], statistics: TumorStatistics, algorithm: Algorithm,
             label: str = "tumor") -> hd.sr.Comprehensive3DSR:
    """The measurement report of segment ``label`` of ``seg`` (its SOP instance is the one referenced)."""
    algorithm_id = hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version or "unknown")
    observer = hd.sr.ObserverContext(
        observer_type=dicom_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=algorithm.name[:64], manufacturer_name=MANUFACTURER))
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=label),
        referenced_segment=referenced_segment(seg, segment_number(seg, label)),
        finding_type=hd.sr.CodedConcept("86049000", "SCT", "Neoplasm, Primary"),
        measurements=_measurements(statistics, algorithm_id), algorithm_id=algorithm_id)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=dicom_codes.SCT.ComputedTomography, imaging_measurements=[group])
    return hd.sr.Comprehensive3DSR(
        evidence=[seg, *sources], content=report[0], series_instance_uid=hd.UID(), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
        series_description=f"{algorithm.name} measurements"[:64])
