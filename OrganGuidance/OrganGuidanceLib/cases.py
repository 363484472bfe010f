"""Which images a command is given: the one case discovery every batch command uses.

``find_cases`` turns what a user passes (a file, a folder, several of them) into cases:

- an image file -> one case, named after the file without its image ending and without nnU-Net's
  ``_0000`` channel suffix (``case_name``);
- a folder that directly holds DICOM files -> one case (a DICOM series);
- a folder -> its image files and its subfolders that are DICOM series, one case each (a batch);
  hidden files and folders (``.DS_Store``, macOS ``._*`` files) and other subfolders are ignored;
- a zip (``dicom_zip.unpack_zip``) -> every DICOM series folder in it, at any depth, and its image files.

A DICOM series is named from its header: ``<PatientID>_<StudyDate>_s<SeriesNumber>``
(``dicom_source.series_case_name``); a series without a patient ID keeps its folder's name, and two series
that would get the same name get their folder's name appended. Detecting a DICOM series folder reads 132
bytes of files (``dicom_series.is_dicom_series_folder``), naming it one header, no pixels; whether the
series is regular (one series, no gap, uniform spacing) is checked when it is read (``io.read_image``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from OrganGuidanceLib.dicom_series import first_header, is_dicom_series_folder
from OrganGuidanceLib.dicom_source import series_case_name
from OrganGuidanceLib.dicom_zip import is_zip_input, zip_entries
from OrganGuidanceLib.image_files import IMAGE_SUFFIXES, image_suffix, is_hidden, printable
from OrganGuidanceLib.validation import InputError

NNUNET_CHANNEL_SUFFIX = "_0000"  # nnU-Net's imagesTs naming: the CT channel of case <case>
PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["CaseInput", "NNUNET_CHANNEL_SUFFIX", "case_name", "find_case_file", "find_cases", "is_hidden",
           "is_image_entry", "is_dicom_series_folder"]


@dataclass(frozen=True)
class CaseInput:
    """One case of a batch: ``case`` names its outputs (printable text), ``path`` is the file or DICOM folder
    as the operating system gives it."""

    case: str
    path: Path

    @property
    def is_dicom(self) -> bool:
        return self.path.is_dir()


def case_name(path: PathLike) -> str:
    """The case an image file or DICOM series folder holds: the file name without its image ending and without
    nnU-Net's ``_0000`` channel suffix; a DICOM series' patient, study date and series number (its folder's name
    without a patient ID). Printable: bytes that are not UTF-8 appear as ``\\xff``."""
    path = Path(path)
    name = path.name or Path(os.path.abspath(path)).name
    if path.is_dir():
        header = first_header(path)
        if header is not None:
            name = series_case_name(header.get("patient_id"), header.get("study_date"), header.get("number"),
                                    name)
    suffix = image_suffix(name) if not path.is_dir() else None
    if suffix:
        name = name[: -len(suffix)]
    if name.endswith(NNUNET_CHANNEL_SUFFIX) and not path.is_dir():
        name = name[: -len(NNUNET_CHANNEL_SUFFIX)]
    return printable(name)


def is_image_entry(path: Path) -> bool:
    """Whether ``path`` is an input image: a (not hidden) image file, or a folder that is a DICOM series."""
    if is_hidden(path):
        return False
    if path.is_file():
        return image_suffix(path) is not None
    return is_dicom_series_folder(path)


def _folder_cases(folder: Path) -> List[Path]:
    entries: List[Path] = [folder] if is_dicom_series_folder(folder) else []
    try:
        children = sorted(folder.iterdir())
    except OSError as error:
        raise InputError(f"{printable(folder)}: cannot list this folder ({error.strerror})") from error
    return entries + [p for p in children if is_image_entry(p)]


def _unclash(cases: List[CaseInput]) -> List[CaseInput]:
    """Series named alike (one patient, date and series number, e.g. anonymised alike) get their folder's name."""
    counts: Dict[str, int] = {}
    for case in cases:
        counts[case.case] = counts.get(case.case, 0) + 1
    return [CaseInput(f"{c.case}_{printable(c.path.name)}", c.path)
            if counts[c.case] > 1 and c.is_dicom and c.case != printable(c.path.name) else c for c in cases]


def find_cases(inputs: Union[PathLike, Sequence[PathLike]]) -> List[CaseInput]:
    """The cases of ``inputs``: a file, a folder, or a list of them (see the module's docstring).

    ``InputError`` for a path that does not exist, a folder with no image files or DICOM series, and two
    inputs that would give the same case name (their outputs would overwrite each other).
    """
    given = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    paths: List[Path] = []
    for item in given:
        path = Path(item)
        if not path.exists():
            raise InputError(f"{printable(path)}: no such file or folder")
        if path.is_dir():
            found = _folder_cases(path)
            if not found:
                raise InputError(f"{printable(path)}: no image files ({', '.join(IMAGE_SUFFIXES)}) or DICOM series in "
                                 "this folder (DICOM series are looked for in the folder and its direct subfolders)")
            paths.extend(found)
        elif is_zip_input(path):
            paths.extend(zip_entries(path))
        else:
            paths.append(path)
    cases = _unclash([CaseInput(case_name(p), p) for p in paths])
    by_name: Dict[str, List[Path]] = {}
    for case in cases:
        by_name.setdefault(case.case, []).append(case.path)
    clashes = {name: found for name, found in by_name.items() if len(found) > 1}
    if clashes:
        name, found = next(iter(clashes.items()))
        raise InputError(f"{len(found)} inputs have the case name '{name}' ({', '.join(printable(p) for p in found)}): "
                         "their results would have the same name; rename or remove one")
    return cases


def find_case_file(folder: Path, case: str) -> Optional[Path]:
    """``folder/<case><image ending>`` (or ``<case>_0000<ending>``) if it exists: organ maps, references."""
    for ending in IMAGE_SUFFIXES:
        for name in (f"{case}{ending}", f"{case}{NNUNET_CHANNEL_SUFFIX}{ending}"):
            if (folder / name).is_file():
                return folder / name
    if "\\" in case:  # a case named after a file name that is not UTF-8 ("\\xff"): match the printable names
        matches = [p for p in sorted(folder.iterdir()) if p.is_file() and image_suffix(p) and case_name(p) == case]
        return matches[0] if matches else None
    return None
