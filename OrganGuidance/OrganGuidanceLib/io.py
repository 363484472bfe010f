"""Image input/output through SimpleITK (NIfTI, NRRD, MHA, a DICOM series folder).

File IO lives only here and at the CLI edge; every algorithm takes ``Image``. Before SimpleITK reads a file,
``image_integrity.check_complete`` makes sure its data is all there; a DICOM series folder is checked slice by
slice (``dicom_series``); every name reaches SimpleITK through ``image_files`` (a name that is not UTF-8
would abort the process).
"""
from __future__ import annotations

import errno
import gzip
import os
from pathlib import Path
from typing import Union

import numpy as np
import SimpleITK as sitk

from OrganGuidanceLib.atomic import atomic_path
from OrganGuidanceLib.dicom_series import read_dicom_series
from OrganGuidanceLib.dicom_zip import is_zip_input, single_zip_entry
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.image_files import (  # noqa: F401 - IMAGE_SUFFIXES, ImageReadError: re-exported for readers
    IMAGE_SUFFIXES,
    WRITABLE_SUFFIXES,
    ImageReadError,
    image_suffix,
    itk_read_name,
    itk_write_name,
    printable,
)
from OrganGuidanceLib.image_integrity import check_complete, nrrd_message

PathLike = Union[str, "os.PathLike[str]"]


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


def _error_text(error: RuntimeError) -> str:
    """The informative line of a SimpleITK error (ITK's last line is sometimes a stale errno text)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Reason:", "Exception thrown in SimpleITK"))]
    return (useful or lines or ["unknown error"])[-1]


def read_image(path: PathLike, name: str | None = None) -> Image:
    """Read a NIfTI/NRRD/MHA file, a DICOM series folder or a zip holding one of them as an ``Image``.

    Refused with ``ImageReadError`` (its message names the file and the problem): a file whose data ends
    early, a folder that is not one regular DICOM series (a gap, a duplicate, several series, ...), a file
    ITK cannot read. The name is taken as the operating system gives it (bytes that are not UTF-8 too).
    A DICOM series' image carries where it came from (``Image.source``: UIDs and files in slice order).
    """
    path = Path(path)
    name = printable(name or path.name or path)
    shown = name if printable(path.name) in name else f"{name} ({printable(path.name)})"
    if not path.exists():
        raise ImageReadError(f"{name}: no such file or folder: {printable(path)}")
    if is_zip_input(path):
        path = single_zip_entry(path)
    source = None
    try:
        if path.is_dir():
            sitk_image, source = read_dicom_series(path)
        else:
            check_complete(path, shown)
            with itk_read_name(path) as readable:
                sitk_image = sitk.ReadImage(readable)
    except RuntimeError as error:  # SimpleITK reports unreadable files as RuntimeError
        message = nrrd_message(str(error), shown) if image_suffix(path) == ".nrrd" else None
        raise ImageReadError(message or f"{name}: cannot be read as an image ({_error_text(error)})") from error
    image = image_from_sitk(sitk_image, name)
    image.source = source
    return image


def write_image(image: Image, path: PathLike, compress: bool = True) -> Path:
    """Write atomically: a temporary file in the target folder, then a rename."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    if suffix not in WRITABLE_SUFFIXES:
        raise ValueError(f"{printable(path)}: unsupported output format {suffix!r}; use one of {WRITABLE_SUFFIXES}")
    with atomic_path(path, suffix) as temporary:
        written = image_to_sitk(image)
        with itk_write_name(temporary) as writable:
            sitk.WriteImage(written, writable, compress)
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
        raise OSError(errno.EIO, f"writing {printable(path)} failed: the file written is incomplete (is the disk full?); "
                                 "the previous file, if any, is unchanged")
