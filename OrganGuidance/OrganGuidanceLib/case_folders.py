"""Listing the folders a user hands over, and pairing their images with their labels by case name.

The rules ``crcseg prepare`` keeps, in one place for every command that lists a user's folder:

- hidden entries are ignored (``image_files.is_hidden``): ``.DS_Store``, and the macOS AppleDouble
  ``._colon_001.nii.gz`` files beside every image and label of the MSD archives (DESIGN.md), which are not images;
- a case is named by its file name without the image ending (``.nii.gz`` counts as one), and an image may
  carry nnU-Net's channel suffix ``_0000`` (the CT of ``<case>_0000.nii.gz``); an image may also be a DICOM
  series folder named after its case, as ``prepare`` and ``segment`` take it;
- an image without its label, or a label without its image, is refused with their names: training on the
  others would silently drop a case (and a label without an image is a renamed or misplaced file). Names that
  are not valid UTF-8 appear as ``\\xff`` in messages (``image_files.printable``), never as an error.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Type, Union

from OrganGuidanceLib.dicom_series import is_dicom_series_folder
from OrganGuidanceLib.image_files import IMAGE_SUFFIXES, image_suffix, is_hidden, printable
from OrganGuidanceLib.validation import InputError

CHANNEL_SUFFIX = re.compile(r"_(\d{4})$")  # nnU-Net's "_0000" (one file per input channel)
FIRST_CHANNEL = "_0000"
SHOWN_NAMES = 10  # a message lists this many names, then "and N more"


def visible_entries(folder: Union[str, Path]) -> List[Path]:
    """The folder's entries without the hidden ones, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if not is_hidden(p))


def is_empty_of_visible(folder: Union[str, Path]) -> bool:
    """True for a missing folder or one holding only hidden entries (a Finder's ``.DS_Store``)."""
    folder = Path(folder)
    return not folder.is_dir() or not visible_entries(folder)


def visible_files(folder: Union[str, Path], ending: str) -> List[Path]:
    """The folder's visible files whose name ends with ``ending`` (e.g. ``.npz``), sorted."""
    return [p for p in visible_entries(folder) if p.is_file() and p.name.endswith(ending)]


def image_files(folder: Union[str, Path], ending: Optional[str] = None, series_folders: bool = False) -> List[Path]:
    """The folder's visible image files (``IMAGE_SUFFIXES``, or the one ``ending`` given), sorted; with
    ``series_folders`` also its DICOM series subfolders. [] when the folder does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [p for p in visible_entries(folder)
            if (p.is_file() and (p.name.endswith(ending) if ending else image_suffix(p) is not None))
            or (series_folders and p.is_dir() and is_dicom_series_folder(p))]


def image_stem(path: Union[str, Path], ending: Optional[str] = None) -> str:
    """The file name without its image ending (``ending`` if given): ``colon_001.nii.gz`` -> ``colon_001``;
    ``case_0000.nii.gz`` keeps its channel suffix (``cases.case_name`` drops it); a folder keeps its name."""
    name = Path(path).name
    if Path(path).is_dir():
        return name
    suffix = ending if ending and name.endswith(ending) else image_suffix(name)
    return name[: -len(suffix)] if suffix else name


def name_list(names: Iterable[str], most: int = SHOWN_NAMES) -> str:
    """``a, b, c`` or ``a, b, ... and 7 more``: names in a message, never thousands of them; bytes that are not
    UTF-8 shown as ``\\xff`` (``image_files.printable``)."""
    names = [printable(name) for name in names]
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def files_by_case(folder: Union[str, Path], role: str, ending: Optional[str] = None,
                  error: Type[InputError] = InputError, series_folders: bool = False) -> Dict[str, Path]:
    """The visible image files of ``folder`` (and DICOM series folders, with ``series_folders``) by case name;
    two files of one case (``a.nii.gz`` and ``a.nrrd``) are refused, as nothing tells which one is meant.
    ``role`` names the folder in messages."""
    folder = Path(folder)
    if not folder.is_dir():
        problem = "is a file, not a folder" if folder.exists() else "does not exist"
        raise error(f"{role} {printable(folder)}: {problem}")
    cases: Dict[str, Path] = {}
    for path in image_files(folder, ending, series_folders):
        case = image_stem(path, ending)
        if case in cases:
            raise error(f"{role} {printable(folder)}: case {printable(case)!r} has two files, "
                        f"{printable(cases[case].name)} and {printable(path.name)}; "
                        "keep one")
        cases[case] = path
    return cases


@dataclass(frozen=True)
class CasePair:
    case: str
    image: Path
    label: Path


def pair_images_and_labels(images: Union[str, Path], labels: Union[str, Path], image_role: str = "images",
                           label_role: str = "labels", error: Type[InputError] = InputError) -> List[CasePair]:
    """Every case's image and label: ``labels/<case>.<ext>`` with ``images/<case>.<ext>`` (MSD) or
    ``images/<case>_0000.<ext>`` (nnU-Net; the other channels ``_0001``, ... of a paired case are not
    images of their own) or a DICOM series folder ``images/<case>/``. Any image endings, not necessarily the
    same. Refused (``error``), with the names:
    a folder without images or labels, an image without a label, a label without an image."""
    images, labels = Path(images), Path(labels)
    image_cases = files_by_case(images, image_role, error=error, series_folders=True)
    label_cases = files_by_case(labels, label_role, error=error)
    if not label_cases:
        raise error(f"{label_role} {printable(labels)}: holds no label maps ({', '.join(IMAGE_SUFFIXES)})")
    if not image_cases:
        raise error(f"{image_role} {printable(images)}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    pairs: List[CasePair] = []
    used: set = set()
    without_image: List[str] = []
    for case, label in label_cases.items():
        found = [name for name in (case, case + FIRST_CHANNEL) if name in image_cases]
        if len(found) == 2:
            raise error(f"{image_role} {printable(images)}: case {printable(case)!r} has two images, "
                        f"{image_cases[case].name} and {image_cases[case + FIRST_CHANNEL].name}; keep one")
        if not found:
            without_image.append(label.name)
            continue
        used.add(found[0])
        pairs.append(CasePair(case, image_cases[found[0]], label))
    without_label = [path.name for name, path in image_cases.items()
                     if name not in used and not _other_channel(name, label_cases)]
    problems = []
    if without_label:
        problems.append(f"{len(without_label)} image(s) in {image_role} {printable(images)} without a label map in "
                        f"{label_role} {printable(labels)}: {name_list(without_label)}")
    if without_image:
        problems.append(f"{len(without_image)} label map(s) in {label_role} {printable(labels)} without an image in "
                        f"{image_role} {printable(images)}: {name_list(without_image)}")
    if problems:
        raise error("; ".join(problems) + ". Every case needs an image <case>.nii.gz (or <case>_0000.nii.gz, or "
                    "a DICOM series folder <case>/) and a label map <case>.nii.gz: add the missing files or move "
                    "the unpaired ones out")
    return pairs


def _other_channel(name: str, label_cases: Dict[str, Path]) -> bool:
    """``case_0001``: a further nnU-Net input channel of a labelled case (only its ``_0000`` is the CT)."""
    match = CHANNEL_SUFFIX.search(name)
    return bool(match) and match.group(0) != FIRST_CHANNEL and name[: match.start()] in label_cases
