"""Write a volume as a DICOM series (one CT file per slice, written by SimpleITK/GDCM with the geometry tags
set), for tests that then remove, repeat, interleave or tilt slices as archives sometimes deliver them."""
from __future__ import annotations

import locale
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

import SimpleITK as sitk

from OrganGuidanceLib.image import Image

_ROOT = "1.2.826.0.1.3680043.2.1125.7"  # an example UID root; the test series need only be unique among themselves


@contextmanager
def _kept_locale() -> Iterator[None]:
    """GDCM's writer sets the process's locale to "C": text files opened afterwards (e.g. the output of a child
    ``crcseg``) would then be decoded as ASCII. Put the locale back."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def write_series(image: Image, folder: Path, series: int = 1, description: str = "phantom CT",
                 acquisition: int = 1, slices: Optional[Sequence[int]] = None, z_shift_mm: float = 0.0,
                 tilt_degrees: float = 0.0, uid: Optional[str] = None, prefix: str = "IM", patient_id: str = "",
                 study_date: str = "") -> Path:
    """Write the axial slices ``slices`` (default: all) of ``image`` (identity direction) into ``folder``.

    ``z_shift_mm`` moves every slice along z; ``tilt_degrees`` tilts the slice planes about the x axis while
    the slices still stack along z (a gantry tilt); ``uid`` sets the SeriesInstanceUID (default: per ``series``).
    ``patient_id`` and ``study_date`` (YYYYMMDD) are written when given (a case is then named after them).
    """
    folder.mkdir(parents=True, exist_ok=True)
    volume = sitk.Cast(sitk.GetImageFromArray(image.array), sitk.sitkInt16)
    spacing_x, spacing_y, spacing_z = image.spacing
    angle = math.radians(tilt_degrees)
    orientation = "\\".join(f"{v:.6f}" for v in (1.0, 0.0, 0.0, 0.0, math.cos(angle), math.sin(angle)))
    series_uid = uid or f"{_ROOT}.{series}"
    common = {"0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0020|000d": f"{_ROOT}.0",
              "0020|000e": series_uid, "0020|0011": str(series), "0008|103e": description,
              "0020|0012": str(acquisition), "0020|0037": orientation, "0018|0050": f"{spacing_z:g}",
              "0028|1052": "0", "0028|1053": "1", "0020|0052": f"{_ROOT}.9"}
    common.update({tag: value for tag, value in (("0010|0020", patient_id), ("0008|0020", study_date)) if value})
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    with _kept_locale():
        for k in (range(image.shape[0]) if slices is None else slices):
            plane = volume[:, :, k]
            plane.SetSpacing((spacing_x, spacing_y))
            position = (image.origin[0], image.origin[1], image.origin[2] + k * spacing_z + z_shift_mm)
            tags = {**common, "0008|0018": f"{series_uid}.{acquisition}.{k}", "0020|0013": str(k + 1),
                    "0020|0032": "\\".join(f"{v:.4f}" for v in position)}
            for tag, value in tags.items():
                plane.SetMetaData(tag, value)
            writer.SetFileName(str(folder / f"{prefix}{series:02d}_{acquisition:02d}_{k:04d}.dcm"))
            writer.Execute(plane)
    return folder


def small_ct(image: Image, slices: int = 12, size: int = 48) -> Image:
    """A small block of a phantom CT (fast to write as DICOM), keeping its spacing and physical place."""
    z0 = image.shape[0] // 2 - slices // 2
    y0, x0 = (image.shape[1] - size) // 2, (image.shape[2] - size) // 2
    origin = tuple(o + i * s for o, i, s in zip(image.origin, (x0, y0, z0), image.spacing))
    return Image(image.array[z0: z0 + slices, y0: y0 + size, x0: x0 + size].copy(), image.spacing, origin,
                 image.direction, image.name)
