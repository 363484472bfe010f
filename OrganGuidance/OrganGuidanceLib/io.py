"""Image input/output through SimpleITK (NIfTI, NRRD, MHA, a DICOM series folder).

File IO lives only here and at the CLI edge; every algorithm takes ``Image``.
"""
from __future__ import annotations

import errno
import gzip
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path
from .image import Image
from .validation import InputError

PathLike = Union[str, "os.PathLike[str]"]

# The project's one list of image file endings (inputs of every command); a DICOM series is a folder.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
# What we write: the same, plus Slicer's segmentation file.
WRITABLE_SUFFIXES = IMAGE_SUFFIXES + (".seg.nrrd",)


def image_suffix(path: PathLike) -> Optional[str]:
    """The image ending of ``path`` (``.nii.gz`` counts as one), or None for other files."""
    name = Path(path).name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), None)


class ImageReadError(InputError):
    """An input file or folder could not be read as a 3D image."""


def image_from_sitk(sitk_image: sitk.Image, name: str = "image") -> Image:
    if sitk_image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(
            f"{name}: has {sitk_image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "a scalar 3D image is needed (not RGB or vector data)"
        )
    dimension = sitk_image.GetDimension()
    if dimension == 4 and sitk_image.GetSize()[3] == 1:
        sitk_image = sitk_image[:, :, :, 0]
        dimension = 3
    if dimension != 3:
        raise ImageReadError(f"{name}: is a {dimension}D image of size {sitk_image.GetSize()}; a 3D volume is needed")
    return Image(
        array=sitk.GetArrayFromImage(sitk_image),
        spacing=sitk_image.GetSpacing(),
        origin=sitk_image.GetOrigin(),
        direction=np.array(sitk_image.GetDirection()).reshape(3, 3),
        name=name,
    )


def image_to_sitk(image: Image) -> sitk.Image:
    array = image.array
    if array.dtype == bool:
        array = array.astype(np.uint8)
    sitk_image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    sitk_image.SetSpacing(image.spacing)
    sitk_image.SetOrigin(image.origin)
    sitk_image.SetDirection(tuple(image.direction.ravel()))
    return sitk_image


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series_ids = reader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise ImageReadError(f"{folder}: folder holds no DICOM series")
    # The series with the most slices is the volume a user means by "this folder".
    files = max((reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids), key=len)
    if len(files) < 2:
        raise ImageReadError(f"{folder}: DICOM series has {len(files)} slice; a 3D volume needs several")
    reader.SetFileNames(files)
    return reader.Execute()


def read_image(path: PathLike, name: str | None = None) -> Image:
    """Read a NIfTI/NRRD/MHA file or a DICOM series folder as an ``Image``."""
    path = Path(path)
    name = name or path.name
    if not path.exists():
        raise ImageReadError(f"{name}: no such file or folder: {path}")
    try:
        sitk_image = _read_dicom_series(path) if path.is_dir() else sitk.ReadImage(str(path))
    except RuntimeError as error:  # SimpleITK reports unreadable files as RuntimeError
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise ImageReadError(f"{name}: cannot be read as an image ({first_line})") from error
    return image_from_sitk(sitk_image, name)


def write_image(image: Image, path: PathLike, compress: bool = True) -> Path:
    """Write atomically: a temporary file in the target folder, then a rename."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    if suffix not in WRITABLE_SUFFIXES:
        raise ValueError(f"{path}: unsupported output format {suffix!r}; use one of {WRITABLE_SUFFIXES}")
    with atomic_path(path, suffix) as temporary:
        written = image_to_sitk(image)
        sitk.WriteImage(written, str(temporary), compress)
        _check_written(temporary, written, path)
    return path


def _check_written(temporary: Path, image: "sitk.Image", path: Path) -> None:
    """ITK's NIfTI writer reports a failed write (a full disk, a file-size limit) only on stderr
    ("NWAD: wrote only 0 of ... bytes") and returns: check that the file holds every voxel before
    it replaces ``path``. (ITK's other writers raise on such a failure.)"""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    expected = image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel() * \
        np.dtype(sitk.GetArrayViewFromImage(image).dtype).itemsize
    try:
        opener = gzip.open if name.endswith(".gz") else open
        with opener(temporary, "rb") as stream:
            header = stream.read(352)
            offset = int(np.frombuffer(header[108:112], np.float32)[0]) if len(header) >= 112 else 0
            stream.seek(0)
            length = sum(len(block) for block in iter(lambda: stream.read(1 << 22), b""))
        complete = offset > 0 and length >= offset + expected
    except (OSError, EOFError):
        complete = False
    if not complete:
        raise OSError(errno.EIO, f"writing {path} failed: the file written is incomplete (is the disk full?); "
                                 "the previous file, if any, is unchanged")
