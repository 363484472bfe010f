"""Image file names: which endings are images, and how a path the operating system gives reaches SimpleITK.

A POSIX file name is bytes; Python hands one that is not valid UTF-8 over as ``str`` with surrogate
escapes (``b"ct_\\xff.nii.gz"`` -> ``"ct_\\udcff.nii.gz"``). SimpleITK cannot encode such a string and
aborts the whole process (SIGABRT, no exception). Every path that goes to SimpleITK goes through
``itk_read_name`` / ``itk_write_name`` here: a name SimpleITK can take is passed as it is; another one is
reached through a symbolic link with an ASCII name in a private temporary folder.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

from OrganGuidanceLib.validation import InputError

PathLike = Union[str, "os.PathLike[str]"]

# The project's one list of image file endings (inputs of every command); a DICOM series is a folder.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
# What we write: the same, plus Slicer's segmentation file.
WRITABLE_SUFFIXES = IMAGE_SUFFIXES + (".seg.nrrd",)


class ImageReadError(InputError):
    """An input file or folder could not be read as a 3D image."""


def image_suffix(path: PathLike) -> Optional[str]:
    """The image ending of ``path`` (``.nii.gz`` counts as one), or None for other files."""
    name = Path(path).name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), None)


def is_hidden(path: PathLike) -> bool:
    """``.DS_Store``, the macOS ``._name`` files copied beside every file (the MSD archives hold them): never input."""
    return Path(path).name.startswith(".")


def printable(path: Union[PathLike, bytes]) -> str:
    """``path`` as text that can be printed and written to UTF-8 files: bytes that are not UTF-8 appear as ``\\xff``."""
    text = os.fsdecode(path)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def itk_can_take(path: PathLike) -> bool:
    """Whether SimpleITK can be given ``path`` as it is (it must encode as UTF-8)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@contextmanager
def _link_folder() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="crcseg-name-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _link(target: Path, link: Path, what: Path, error_type: type = ImageReadError) -> None:
    try:
        os.symlink(os.path.abspath(target), link)
    except OSError as error:  # e.g. Windows without the right to make symbolic links
        raise error_type(f"{printable(what)}: the name is not valid UTF-8 and the image library cannot open it "
                         f"({error.strerror}); rename it") from error


def _metaimage_data_file(header: Path) -> Optional[str]:
    """The separate data file a ``.mhd`` header names (None for LOCAL, LIST or numbered slices)."""
    try:
        with open(header, "rb") as stream:
            text = stream.read(65536).decode("utf-8", "surrogateescape")
    except OSError:
        return None
    found = re.search(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", text, re.MULTILINE)
    if not found or found.group(1) in ("LOCAL", "LIST") or "%" in found.group(1) or " " in found.group(1):
        return None
    return found.group(1)


@contextmanager
def itk_read_name(path: PathLike) -> Iterator[str]:
    """A name under which SimpleITK can read the file ``path`` (see the module's docstring)."""
    path = Path(path)
    if itk_can_take(path):
        yield str(path)
        return
    with _link_folder() as folder:
        link = folder / f"image{image_suffix(path) or ''}"
        _link(path, link, path)
        data = _metaimage_data_file(path) if image_suffix(path) == ".mhd" else None
        if data is not None and itk_can_take(data) and not Path(data).is_absolute():
            _link(path.parent / data, folder / data, path)  # the header names its data file relative to itself
        yield str(link)


@contextmanager
def itk_read_names(paths: Sequence[Path]) -> Iterator[List[str]]:
    """Names under which SimpleITK can read each of ``paths`` (the slices of a DICOM series), in order."""
    if all(itk_can_take(p) for p in paths):
        yield [str(p) for p in paths]
        return
    with _link_folder() as folder:
        names = []
        for index, path in enumerate(paths):
            if itk_can_take(path):
                names.append(str(path))
            else:
                link = folder / f"slice{index:06d}"
                _link(path, link, path)
                names.append(str(link))
        yield names


@contextmanager
def itk_write_name(path: PathLike) -> Iterator[str]:
    """A name under which SimpleITK can write ``path``: its folder reached through a link when the folder's name
    is not UTF-8 (the file's own name is a temporary ASCII one, see ``atomic.atomic_path``)."""
    path = Path(path)
    if itk_can_take(path):
        yield str(path)
        return
    if not itk_can_take(path.name):
        raise OSError(f"{printable(path)}: cannot be written under a name that is not valid UTF-8")
    with _link_folder() as folder:
        _link(path.parent, folder / "folder", path.parent, OSError)
        yield str(folder / "folder" / path.name)
