"""A DICOM series folder: found cheaply, checked slice by slice, then read as one volume.

ITK's GDCM series reader takes whatever a folder holds: a series with a slice missing is put on an
averaged grid (a 2.0 mm series with one gap became 2.111 mm, every slice after the gap misplaced), two
series or two acquisitions in one folder are stacked into one volume. Before the pixels are read, every
file's header is read (``ImageFileReader.ReadImageInformation``, no pixel data) and the folder is refused,
naming the slice positions, when it holds

- several series (several SeriesInstanceUIDs): they are listed with number, description and slice count;
- slices of one series UID in several orientations, or of several acquisitions (acquisition number,
  temporal position, echo number) whose positions interleave;
- the same position twice;
- a gap (one or more slices missing) or any other non-uniform spacing along the slice normal;
- a gantry tilt that would misplace the image (see ``check_tilt``).
"""
from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from OrganGuidanceLib.dicom_source import IDENTITY_TAGS, DicomSource, source_from_headers
from OrganGuidanceLib.image_files import (
    ImageReadError,
    image_suffix,
    is_hidden,
    itk_read_name,
    itk_read_names,
    printable,
)

# A step between two slices may differ from the series' spacing by this fraction of it (positions are written
# with limited precision; one tenth of a slice is far below a missing slice or a change of pitch).
SPACING_TOLERANCE = 0.1
ORIENTATION_TOLERANCE = 1e-3  # direction cosines written with a few decimals still agree to this
TILT_IGNORED_DEGREES = 0.01  # below: rounding of the positions, not a tilt
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")  # names some archives use; most DICOM files have no ending

_TAGS = {"position": "0020|0032", "orientation": "0020|0037", "uid": "0020|000e", "number": "0020|0011",
         "description": "0008|103e", "acquisition": "0020|0012", "temporal": "0020|0100", "echo": "0018|0086",
         "rows": "0028|0010", "columns": "0028|0011", "pixel_spacing": "0028|0030", **IDENTITY_TAGS}
# Tags that tell acquisitions stored under one series UID apart
_ACQUISITION_TAGS = (("acquisition", "acquisition number"), ("temporal", "temporal position"),
                     ("echo", "echo number"))


class DicomSeriesError(ImageReadError):
    """A DICOM folder that is not one regular series; the message names the folder and the slices."""


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as stream:
            return stream.read(132)[128:] == b"DICM"
    except OSError:
        return False


def dicom_candidates(folder: Path) -> List[Path]:
    """The files of ``folder`` that may be DICOM slices: not hidden, not image files of another format."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [p for p in entries if not is_hidden(p) and image_suffix(p) is None and p.is_file()]


def is_dicom_series_folder(folder: Path) -> bool:
    """Whether ``folder`` directly holds DICOM files: cheap, it reads 132 bytes of files until one is DICOM
    (the "DICM" mark of the DICOM file format) or ends in ``.dcm``."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    return any(p.name.lower().endswith(DICOM_SUFFIXES) or _has_dicom_preamble(p) for p in dicom_candidates(folder))


@dataclass
class SliceHeader:
    path: Path
    values: Dict[str, str]
    position: Optional[np.ndarray]  # ImagePositionPatient, mm (LPS)
    orientation: Optional[np.ndarray]  # ImageOrientationPatient: row and column direction cosines

    def get(self, key: str) -> str:
        return self.values.get(key, "")


def _numbers(text: str, count: int) -> Optional[np.ndarray]:
    try:
        values = np.array([float(v) for v in text.split("\\")])
    except ValueError:
        return None
    return values if values.size == count and np.all(np.isfinite(values)) else None


def read_headers(files: Sequence[Path]) -> List[SliceHeader]:
    """The header of each file GDCM reads as an image (other files, e.g. a DICOMDIR or notes, are left out)."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    headers = []
    for path in files:
        with itk_read_name(path) as name:
            reader.SetFileName(name)
            try:
                reader.ReadImageInformation()
            except RuntimeError:
                continue
            keys = set(reader.GetMetaDataKeys())
            values = {key: reader.GetMetaData(tag).strip() for key, tag in _TAGS.items() if tag in keys}
        headers.append(SliceHeader(path, values, _numbers(values.get("position", ""), 3),
                                   _numbers(values.get("orientation", ""), 6)))
    return headers


def _mm(value: float) -> str:
    text = f"{value:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _series_label(headers: List[SliceHeader]) -> str:
    first = headers[0]
    number = f"series {first.get('number')}" if first.get("number") else "a series without a number"
    description = f' "{first.get("description")}"' if first.get("description") else ""
    return f"{number}{description} ({len(headers)} slice{'s' if len(headers) != 1 else ''})"


def _check_one_series(folder: str, headers: List[SliceHeader]) -> None:
    groups: Dict[str, List[SliceHeader]] = defaultdict(list)
    for header in headers:
        groups[header.get("uid")].append(header)
    if len(groups) > 1:
        listed = "; ".join(_series_label(group) for group in sorted(groups.values(), key=lambda g: g[0].get("number")))
        raise DicomSeriesError(f"{folder}: holds {len(groups)} DICOM series: {listed}; put one series per folder "
                               "(a folder of series folders is read as a batch, one case per series)")


def _check_slices_alike(folder: str, headers: List[SliceHeader]) -> None:
    missing = [h for h in headers if h.position is None or h.orientation is None]
    if missing:
        raise DicomSeriesError(f"{folder}: {printable(missing[0].path.name)} has no valid ImagePositionPatient "
                               "(0020,0032) or ImageOrientationPatient (0020,0037); its slices cannot be placed")
    orientations: List[Tuple[np.ndarray, List[SliceHeader]]] = []
    for header in headers:
        for orientation, members in orientations:
            if np.allclose(orientation, header.orientation, atol=ORIENTATION_TOLERANCE):
                members.append(header)
                break
        else:
            orientations.append((header.orientation, [header]))
    if len(orientations) > 1:
        listed = ", ".join(f"{len(m)} slices with orientation ({', '.join(f'{v:.3g}' for v in o)})"
                           for o, m in orientations)
        raise DicomSeriesError(f"{folder}: slices of one series in {len(orientations)} orientations ({listed}): "
                               "two acquisitions mixed in one folder; put each in its own folder")
    sizes = {(h.get("rows"), h.get("columns"), h.get("pixel_spacing")) for h in headers}
    if len(sizes) > 1:
        listed = ", ".join(f"{r} x {c} pixels of {s.replace(chr(92), ' x ')} mm" for r, c, s in sorted(sizes))
        raise DicomSeriesError(f"{folder}: the slices differ in size ({listed}): two acquisitions mixed in one folder")


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """Row x column direction: the axis along which ITK stacks the slices."""
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / (np.linalg.norm(normal) or 1.0)


def _axis(normal: np.ndarray) -> Tuple[str, float]:
    """The patient axis (LPS x, y, z) a normal mostly points along, and the sign that makes it point along it."""
    index = int(np.argmax(np.abs(normal)))
    return "xyz"[index], 1.0 if normal[index] >= 0 else -1.0


def _check_acquisitions(folder: str, headers: List[SliceHeader], along: np.ndarray, axis: str, sign: float) -> None:
    """Several acquisitions under one series UID are refused when their positions interleave (e.g. two phases,
    or two position sets shifted by half a slice); a series whose acquisitions follow each other along the
    body (step-and-shoot) is one volume."""
    for key, what in _ACQUISITION_TAGS:
        groups: Dict[str, List[float]] = defaultdict(list)
        for header, position in zip(headers, along):
            groups[header.get(key)].append(float(position))
        if len(groups) < 2:
            continue
        ranges = sorted((min(v), max(v), k, len(v)) for k, v in groups.items() if len(v) > 1)
        for (low, high, first, count), (low2, high2, second, count2) in zip(ranges, ranges[1:]):
            if low2 <= high:
                def span(a: float, b: float) -> str:
                    return f"{axis} = {_mm(sign * a)} to {_mm(sign * b)} mm"
                raise DicomSeriesError(
                    f"{folder}: two interleaved acquisitions in one series: {what} {first or '(none)'} "
                    f"({count} slices, {span(low, high)}) and {what} {second or '(none)'} ({count2} slices, "
                    f"{span(low2, high2)}); put each acquisition in its own folder")


def _check_spacing(folder: str, positions: np.ndarray, files: List[Path], axis: str, sign: float) -> float:
    """Refuse duplicate positions, gaps and non-uniform steps; return the spacing along the normal."""
    where = [f"{axis} = {_mm(sign * p)}" for p in positions]
    steps = np.diff(positions)
    spacing = float(np.median(steps))
    tolerance = SPACING_TOLERANCE * spacing
    duplicates = [i for i, step in enumerate(steps) if step <= tolerance]
    if duplicates or spacing <= 0:
        i = duplicates[0] if duplicates else 0
        more = f" (and {len(duplicates) - 1} more)" if len(duplicates) > 1 else ""
        raise DicomSeriesError(f"{folder}: two slices at the same position: {where[i]} mm "
                               f"({printable(files[i].name)} and {printable(files[i + 1].name)}){more}; "
                               "a slice stored twice, or two series in one folder")
    problems = []
    for i, step in enumerate(steps):
        if abs(step - spacing) <= tolerance:
            continue
        missing = round(step / spacing) - 1
        if missing >= 1 and abs(step - (missing + 1) * spacing) <= tolerance:
            problems.append(f"gap between {where[i]} and {_mm(sign * positions[i + 1])} mm (spacing {_mm(spacing)} mm "
                            f"elsewhere): {missing} slice{'s' if missing > 1 else ''} missing")
        else:
            problems.append(f"step of {_mm(step)} mm between {where[i]} and {_mm(sign * positions[i + 1])} mm "
                            f"(spacing {_mm(spacing)} mm elsewhere)")
    if not problems:  # steps each within the tolerance can still add up to a drift off the regular grid
        fitted = positions[0] + np.arange(len(positions)) * (positions[-1] - positions[0]) / (len(positions) - 1)
        worst = int(np.argmax(np.abs(positions - fitted)))
        if abs(positions[worst] - fitted[worst]) > tolerance:
            problems.append(f"{where[worst]} mm lies {_mm(abs(positions[worst] - fitted[worst]))} mm off a regular grid "
                            f"of {_mm(spacing)} mm")
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise DicomSeriesError(f"{folder}: the slice spacing is not uniform: {shown}. Read as it is, the series would "
                               "be put on an averaged grid and misplace its slices; export the complete series again")
    return spacing


def check_tilt(folder: str, first: SliceHeader, last: SliceHeader, normal: np.ndarray) -> Optional[str]:
    """Gantry tilt: the slices stack along a line that is not their normal.

    ITK builds the volume's grid from the orientation's normal and the distance between slices, so every
    slice after the first is put off its true place, by up to ``extent x 2 sin(tilt / 2)`` at the last one.
    A mask computed on that grid is misplaced by as much against the anatomy wherever the DICOM positions
    are honoured (3D Slicer regularizes a tilted series before it shows it). So a tilt that moves a slice
    by more than half a pixel is refused (resampling onto a straight grid is the job of the DICOM importer);
    a smaller one is read with a warning (returned) that names the angle."""
    stack = last.position - first.position
    extent = float(np.linalg.norm(stack))
    if extent == 0:
        return None
    angle = math.degrees(math.acos(min(1.0, abs(float(stack @ normal)) / extent)))
    if angle <= TILT_IGNORED_DEGREES:
        return None
    shift = extent * 2 * math.sin(math.radians(angle) / 2)
    pixels = _numbers(first.get("pixel_spacing"), 2)
    pixel = float(min(pixels)) if pixels is not None else 1.0
    text = (f"{folder}: the slices are tilted by {angle:.2f} degrees against their normal (gantry tilt); "
            f"read on ITK's straight grid the last slice would lie {_mm(shift)} mm off its true place")
    if shift > 0.5 * pixel:
        raise DicomSeriesError(f"{text}. Resample the series onto a straight grid first (3D Slicer's DICOM import "
                               "does so when acquisition geometry regularization is on) and pass the resampled file")
    return text + " (less than half a pixel: read as it is)"


def checked_series(folder: Path) -> List[SliceHeader]:
    """The slice headers of the one regular series in ``folder``, ordered as ITK stacks them; else ``DicomSeriesError``."""
    shown = printable(folder)
    headers = read_headers(dicom_candidates(folder))
    if not headers:
        raise ImageReadError(f"{shown}: folder holds no DICOM series")
    _check_one_series(shown, headers)
    if len(headers) < 2:
        raise ImageReadError(f"{shown}: DICOM series has {len(headers)} slice; a 3D volume needs several")
    _check_slices_alike(shown, headers)
    normal = slice_normal(headers[0].orientation)
    # ITK stacks the files in the order given, along the orientation's normal: ascending positions along it.
    order = sorted(range(len(headers)), key=lambda i: (float(headers[i].position @ normal), headers[i].path.name))
    headers = [headers[i] for i in order]
    along = np.array([float(h.position @ normal) for h in headers])
    axis, sign = _axis(normal)
    _check_acquisitions(shown, headers, along, axis, sign)
    _check_spacing(shown, along, [h.path for h in headers], axis, sign)
    warning = check_tilt(shown, headers[0], headers[-1], normal)
    if warning:
        warnings.warn(warning, stacklevel=3)
    return headers


def checked_series_files(folder: Path) -> List[Path]:
    """The slice files of the one regular series in ``folder``, ordered as ITK stacks them; else ``DicomSeriesError``."""
    return [h.path for h in checked_series(folder)]


def series_source(folder: Path, headers: Sequence[SliceHeader]) -> DicomSource:
    """The identity and instances of a checked series (``checked_series``), in its slice order."""
    return source_from_headers(Path(folder), tuple(h.path for h in headers), tuple(h.values for h in headers))


def first_header(folder: Path) -> Optional[SliceHeader]:
    """The header of the first file of ``folder`` that GDCM reads: the series' identity, without checking it."""
    for path in dicom_candidates(folder):
        headers = read_headers([path])
        if headers:
            return headers[0]
    return None


def read_dicom_series(folder: Path) -> Tuple[sitk.Image, DicomSource]:
    """The one regular series of ``folder`` (``checked_series``), read by ITK's GDCM series reader, and where it
    came from (its UIDs and files in slice order)."""
    headers = checked_series(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    with itk_read_names([h.path for h in headers]) as names:
        reader.SetFileNames(names)
        return reader.Execute(), series_source(folder, headers)
