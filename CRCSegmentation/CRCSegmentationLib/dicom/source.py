"""The source CT series of a DICOM output: read its files, and find the instance behind each slice of the CT grid.

A slice of the array is matched to the file whose ImagePositionPatient, projected on the slice normal, is the
slice's position: the array's slice order may be the files' order reversed (ITK sorts by position), and an
oblique series works the same. The in-plane grid must be the files' own (rows, columns, orientation).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from OrganGuidanceLib.image import Image
from OrganGuidanceLib.image_files import printable
from OrganGuidanceLib.validation import InputError


def _from_file_meta(dataset: Dataset) -> None:
    """Some anonymisers blank SOPClassUID / SOPInstanceUID in the dataset but keep the file meta's copies, which
    PS3.10 7.1 requires to be equal: those identify the stored instance, so they are what an output references."""
    meta = getattr(dataset, "file_meta", None)
    for keyword, meta_keyword in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                  ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
        if not str(dataset.get(keyword, "")).strip() and meta is not None and str(meta.get(meta_keyword, "")).strip():
            setattr(dataset, keyword, meta.get(meta_keyword))


def _drop_spacing_between_slices(dataset: Dataset) -> None:
    """SpacingBetweenSlices (0018,0088) of a single-frame CT is optional and often not the slice spacing (writers put
    1, or the gap between slices); highdicom copies it into the SEG, where readers such as dcmqi stack the frames
    by it. Without it, highdicom computes the spacing from the frames' positions, which the reader has checked."""
    if "SpacingBetweenSlices" in dataset:
        del dataset.SpacingBetweenSlices


def read_source_series(files: Sequence[Path]) -> List[Dataset]:
    """The datasets (pixels included: highdicom checks them) of one single-frame series; ``InputError`` otherwise,
    e.g. for a series whose anonymiser blanked the study or series UID (an output could not reference it)."""
    if not files:
        raise InputError("DICOM output: no source DICOM files were given (the outputs reference their CT series)")
    datasets = []
    for file in files:
        try:
            datasets.append(pydicom.dcmread(str(file)))
            _from_file_meta(datasets[-1])
        except (OSError, pydicom.errors.InvalidDicomError) as error:
            raise InputError(f"DICOM source {printable(Path(file))}: not a readable DICOM file ({error})") from error
    for dataset in datasets:  # in memory only: highdicom then takes the spacing from the positions we checked
        _drop_spacing_between_slices(dataset)
    for tag in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
                "ImagePositionPatient", "ImageOrientationPatient"):
        lacking = [ds for ds in datasets if not str(ds.get(tag, "")).strip()]
        if lacking:
            raise InputError(f"DICOM source {printable(Path(lacking[0].filename))}: has no {tag} (empty or absent; "
                             "anonymised without keeping UIDs?): a DICOM output must reference it")
    series = sorted({ds.SeriesInstanceUID for ds in datasets})
    if len(series) != 1:
        raise InputError(f"DICOM source: the files belong to {len(series)} series ({', '.join(series[:3])}); "
                         "give the files of the one CT series the segmentation was computed on")
    return datasets


def _normal(dataset: Dataset) -> np.ndarray:
    orientation = np.asarray(dataset.ImageOrientationPatient, dtype=float)
    return np.cross(orientation[:3], orientation[3:])


def instances_for_slices(datasets: Sequence[Dataset], ct: Image) -> List[Dataset]:
    """``result[k]`` is the source instance of array slice ``ct.array[k]``; ``InputError`` when the grids differ."""
    first = datasets[0]
    orientation = np.asarray(first.ImageOrientationPatient, dtype=float)
    if not (np.allclose(ct.direction[:, 0], orientation[:3], atol=1e-3)
            and np.allclose(ct.direction[:, 1], orientation[3:], atol=1e-3)):
        raise InputError(f"CT {ct.name}: its row/column directions {ct.direction[:, :2].T.round(4).tolist()} are not "
                         f"the source series' ImageOrientationPatient {orientation.round(4).tolist()}: the masks must "
                         "be on the grid of the CT read from these files")
    if tuple(ct.shape[1:]) != (int(first.Rows), int(first.Columns)):
        raise InputError(f"CT {ct.name}: slices of {ct.shape[1:]} voxels, the source series has "
                         f"{(int(first.Rows), int(first.Columns))} (rows, columns)")
    normal = _normal(first)
    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for ds in datasets])
    heights = positions @ normal
    slice_origins = np.array([(ct.index_to_physical @ np.array([0.0, 0.0, k, 1.0]))[:3] for k in range(ct.shape[0])])
    tolerance = 0.25 * ct.spacing[2]
    chosen = []
    for k, origin in enumerate(slice_origins):
        index = int(np.argmin(np.abs(heights - origin @ normal)))
        in_plane = origin - positions[index]
        if abs(heights[index] - origin @ normal) > tolerance or np.abs(in_plane - (in_plane @ normal) * normal).max() > \
                0.5 * min(ct.spacing[:2]):
            raise InputError(f"CT {ct.name}: slice {k} (at {origin.round(2).tolist()} mm) has no source DICOM file "
                             "at its position: give all files of the series the CT was read from")
        chosen.append(datasets[index])
    if len({ds.SOPInstanceUID for ds in chosen}) != len(chosen):
        raise InputError(f"CT {ct.name}: two slices map to the same source DICOM file (repeated positions?)")
    return chosen
