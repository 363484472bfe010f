"""Where a CT read from DICOM came from: the series' identity and its instances, in the order of the image's slices.

``io.read_image`` puts a ``DicomSource`` on the ``Image`` of a DICOM series folder (``Image.source``), so the
outputs of a run can reference what they were made from: a DICOM SEG, RTSTRUCT or SR names the study, the
series and each slice's SOP instance (``CRCSegmentationLib.dicom``). The case name of a series comes from
its header (``series_case_name``): patient, study date and series number, as an archive's folder names
(``DICOM/S0001``, UIDs) rarely say which patient a series is.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Tuple

# Header fields of a series (GDCM tag keys "gggg|eeee"), read with the slice geometry (dicom_series._TAGS)
IDENTITY_TAGS = {"patient_id": "0010|0020", "patient_name": "0010|0010", "study_date": "0008|0020",
                 "study_uid": "0020|000d", "sop_uid": "0008|0018", "sop_class": "0008|0016", "modality": "0008|0060",
                 "frame_of_reference": "0020|0052"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class DicomSource:
    """One DICOM series as read: ``files`` and ``sop_instance_uids`` in the order of the image's slices (array
    axis 0 from first to last, as ITK stacks them: ascending along the slice normal)."""

    folder: Path
    files: Tuple[Path, ...]
    sop_instance_uids: Tuple[str, ...]
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    series_number: str = ""
    series_description: str = ""
    modality: str = ""
    frame_of_reference_uid: str = ""

    @property
    def case_name(self) -> str:
        return series_case_name(self.patient_id, self.study_date, self.series_number, self.folder.name)

    def describe(self) -> str:
        """One line for a summary: patient, date, series number and description, slice count."""
        parts = [self.patient_id and f"patient {self.patient_id}", self.study_date and f"study date {self.study_date}",
                 self.series_number and f"series {self.series_number}",
                 self.series_description and f'"{self.series_description}"']
        return ", ".join(p for p in parts if p) + f" ({len(self.files)} slices)"


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text.strip()).strip("._-")


def series_case_name(patient_id: str, study_date: str, series_number: str, folder_name: str) -> str:
    """``<PatientID>_<StudyDate>_s<SeriesNumber>`` in file-name-safe characters (missing parts left out); a series
    without a patient ID (test series, some exports) keeps its folder's name."""
    patient = _safe(patient_id)
    if not patient:
        return folder_name
    parts = [patient, _safe(study_date), f"s{_safe(series_number)}" if _safe(series_number) else ""]
    return "_".join(p for p in parts if p)


def source_from_headers(folder: Path, files: Tuple[Path, ...], values: Tuple[Mapping[str, str], ...]) -> DicomSource:
    """The ``DicomSource`` of a checked series: ``values`` are each file's header fields (dicom_series.SliceHeader)."""
    first = values[0]
    return DicomSource(
        folder=folder, files=files, sop_instance_uids=tuple(v.get("sop_uid", "") for v in values),
        study_instance_uid=first.get("study_uid", ""), series_instance_uid=first.get("uid", ""),
        patient_id=first.get("patient_id", ""), patient_name=first.get("patient_name", ""),
        study_date=first.get("study_date", ""), series_number=first.get("number", ""),
        series_description=first.get("description", ""), modality=first.get("modality", ""),
        frame_of_reference_uid=first.get("frame_of_reference", ""),
    )
