"""Reading our DICOM outputs back with independent readers, for the tests: dcmqi's ``segimage2itkimage`` for SEG,
the RTSTRUCT's contours filled on the CT grid, the SR's content items."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pydicom
import SimpleITK as sitk
from skimage.draw import polygon

from OrganGuidanceLib.image import Image

SEGIMAGE2ITKIMAGE = Path(sys.executable).parent / "segimage2itkimage"  # the dcmqi wheel's console script


def read_with_dcmqi(seg_file: Path, folder: Path) -> Dict[str, Image]:
    """Each segment of ``seg_file`` as dcmqi writes it (one NIfTI per segment), by tracking identifier."""
    folder.mkdir()
    subprocess.run([str(SEGIMAGE2ITKIMAGE), "--inputDICOM", str(seg_file), "--outputDirectory", str(folder),
                    "--outputType", "nifti"], check=True, capture_output=True)
    attributes = json.loads((folder / "meta.json").read_text())["segmentAttributes"]
    images = {}
    for number, (attribute,) in enumerate(attributes, start=1):
        image = sitk.ReadImage(str(folder / f"{number}.nii.gz"))
        images[attribute["TrackingIdentifier"]] = Image(sitk.GetArrayFromImage(image), image.GetSpacing(),
                                                        image.GetOrigin(), np.reshape(image.GetDirection(), (3, 3)))
    return images


def on_ct_grid(image: Image, ct: Image) -> np.ndarray:
    """``image`` (dcmqi keeps only the slices with frames) pasted into the CT's grid: same spacing and direction,
    an offset of whole voxels, so nothing is resampled."""
    assert np.allclose(image.spacing, ct.spacing, atol=1e-3), (image.spacing, ct.spacing)
    assert np.allclose(image.direction, ct.direction, atol=1e-4), (image.direction, ct.direction)
    offset = (np.linalg.inv(ct.index_to_physical) @ np.r_[image.origin, 1.0])[:3]  # x, y, z
    assert np.allclose(offset, np.round(offset), atol=1e-2)
    x, y, z = np.round(offset).astype(int)
    depth, rows, columns = image.shape
    assert x >= 0 and y >= 0 and z >= 0 and z + depth <= ct.shape[0] and (rows, columns) == ct.shape[1:]
    pasted = np.zeros(ct.shape, bool)
    pasted[z: z + depth, y: y + rows, x: x + columns] = image.array > 0
    return pasted


def rasterise(rtstruct: pydicom.Dataset, roi_name: str, ct: Image) -> np.ndarray:
    """The ROI's contours filled on the CT grid (even-odd rule: an inner contour is a hole)."""
    number = next(r.ROINumber for r in rtstruct.StructureSetROISequence if r.ROIName == roi_name)
    contours = next(c for c in rtstruct.ROIContourSequence if c.ReferencedROINumber == number).ContourSequence
    to_index = np.linalg.inv(ct.index_to_physical)
    mask = np.zeros(ct.shape, bool)
    uids = [pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID for f in ct.source.files]
    for contour in contours:
        points = np.asarray(contour.ContourData, float).reshape(-1, 3)
        index = (to_index @ np.c_[points, np.ones(len(points))].T)[:3]
        k = int(round(index[2].mean()))
        assert np.allclose(index[2], k, atol=1e-3)  # planar, on a slice
        assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID == uids[k]
        assert contour.ContourGeometricType == "CLOSED_PLANAR"
        rows, columns = polygon(index[1], index[0], ct.shape[1:])
        plane = np.zeros(ct.shape[1:], bool)
        plane[rows, columns] = True
        mask[k] ^= plane
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def content_items(dataset: pydicom.Dataset) -> List[pydicom.Dataset]:
    items = []
    for item in getattr(dataset, "ContentSequence", []):
        items += [item, *content_items(item)]
    return items
