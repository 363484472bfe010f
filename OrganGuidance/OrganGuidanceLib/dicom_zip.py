"""A zip of DICOM series (or of image files) as an input: unpacked once per process, checked as it is unpacked.

PACS and archives hand studies over as zips. ``unpack_zip`` writes one into a private temporary folder that
lives as long as the process (it is removed at exit), so a batch reads the series as folders and the outputs
can still reference the source files while the run writes them. Refused, naming the zip and the member:
a file that is not a zip or whose directory is damaged, a member that would land outside the folder
(an absolute name or ``..``: "zip slip"), a member whose data does not match its checksum (a cut or
damaged download), and a zip that would not fit on the disk.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Dict, List

from OrganGuidanceLib.dicom_series import is_dicom_series_folder
from OrganGuidanceLib.image_files import IMAGE_SUFFIXES, image_suffix, is_hidden, printable
from OrganGuidanceLib.validation import InputError

ZIP_SUFFIX = ".zip"
_UNPACKED: Dict[Path, Path] = {}  # zip (resolved) -> its folder, for this process


def is_zip_input(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ZIP_SUFFIX)


def _remove_all() -> None:
    for folder in _UNPACKED.values():
        shutil.rmtree(folder.parent, ignore_errors=True)
    _UNPACKED.clear()


atexit.register(_remove_all)


def _member_path(root: Path, name: str, shown: str) -> Path:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (parts and parts[0].endswith(":")) or ".." in parts:
        raise InputError(f"{shown}: member '{printable(name)}' would be written outside the folder it is unpacked "
                         "into (an absolute name or '..'); the zip is refused")
    return root.joinpath(*parts)


def unpack_zip(path: Path) -> Path:
    """The folder holding ``path``'s members (unpacked at the first call, then reused); ``InputError`` if refused."""
    key = Path(path).resolve()
    if key in _UNPACKED:
        return _UNPACKED[key]
    shown = printable(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise InputError(f"{shown}: is not a readable zip file ({error})") from error
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        parent = Path(tempfile.mkdtemp(prefix="crcseg-zip-"))
        root = parent / (Path(path).name[: -len(ZIP_SUFFIX)] or "zip")
        needed = sum(m.file_size for m in members)
        if needed > shutil.disk_usage(parent).free:
            shutil.rmtree(parent, ignore_errors=True)
            raise InputError(f"{shown}: unpacks to {needed / 1e9:.1f} GB, more than the free space of "
                             f"{printable(parent.parent)}; set TMPDIR to a larger disk")
        try:
            for member in members:
                target = _member_path(root, member.filename, shown)
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(target, "wb") as destination:
                    shutil.copyfileobj(source, destination)  # zipfile checks the CRC as the data is read
        except (zipfile.BadZipFile, zlib.error, EOFError) as error:  # CRC mismatch, a damaged stream, a cut member
            shutil.rmtree(parent, ignore_errors=True)
            raise InputError(f"{shown}: member '{printable(member.filename)}' is damaged ({error})") from error
        except BaseException:
            shutil.rmtree(parent, ignore_errors=True)
            raise
    root.mkdir(exist_ok=True)
    _UNPACKED[key] = root
    return root


def zip_entries(path: Path) -> List[Path]:
    """The DICOM series folders (at any depth) and image files of a zip, unpacked; ``InputError`` if it has none."""
    root = unpack_zip(path)
    found: List[Path] = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not is_hidden(Path(d)))
        here = Path(folder)
        if is_dicom_series_folder(here):
            found.append(here)
        found.extend(here / f for f in sorted(files) if not is_hidden(here / f) and image_suffix(f) is not None)
    if not found:
        raise InputError(f"{printable(path)}: this zip holds no DICOM series and no image files "
                         f"({', '.join(IMAGE_SUFFIXES)})")
    return found


def single_zip_entry(path: Path) -> Path:
    """The one series or image file of a zip given where one image is read (``io.read_image``)."""
    found = zip_entries(path)
    if len(found) > 1:
        names = ", ".join(printable(p.relative_to(unpack_zip(path))) for p in found[:4])
        raise InputError(f"{printable(path)}: holds {len(found)} series or images ({names}{' ...' if len(found) > 4 else ''}); "
                         "this reads one: unzip it and give one, or give the zip to 'crcseg segment' (one case each)")
    return found[0]
