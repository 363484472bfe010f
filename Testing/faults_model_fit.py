"""Fault catalogue rows: model-input fit: MR thick axis, CT intensity range (``CRCSegmentationLib.core.model_fit``).

An input the model was not trained for, but still a CT / an MR volume, is segmented (exit 0) with a warning that
says what the model expected; what is no CT at all stays refused by ``check_ct`` (exit 2). The absence of a
warning on inputs that fit is checked in ``test_model_fit.py`` (a row checks words that are present).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import List

import numpy as np
from fault_catalogue import BAD_INPUT, FAILED, OK, Argv, Fault, Workspace, segment
from scipy import ndimage

from CRCSegmentationLib.demo.ct import demo_model_path
from CRCSegmentationLib.demo.mr_phantom import make_sagittal_t2_phantom
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import read_image, write_image
from OrganGuidanceLib.phantom import make_abdominal_phantom

TOPIC = "model_fit"
MR_MODEL = "demo_mr_phantom"
SMALL_SAGITTAL = (12, 64, 96)  # slices x rows x columns: the phantom's pelvis, clipped (a few tiles on the CPU)


# --- inputs (also used by test_model_fit.py) ----------------------------------------------------------
def sagittal_mr(seed: int = 21, storage: str = "acquisition") -> Image:
    """A sagittal T2 phantom as the MR demonstration model was trained on (``storage="resampled"``: reoriented
    to LPS, its thick left-right axis stored as array axis 2)."""
    return make_sagittal_t2_phantom(seed=seed, shape=SMALL_SAGITTAL, thick_axis=storage).image


def axial_mr(seed: int = 21, slice_mm: float = 5.0, in_plane_mm: float = 1.0) -> Image:
    """The same pelvis sliced axially, as an abdominal MR is: thick superior-inferior slices (array axis 0),
    ``in_plane_mm`` left-right, 0.875 mm anterior-posterior (resliced from the LPS-stored phantom)."""
    image = make_sagittal_t2_phantom(seed=seed, shape=(18, 64, 96), thick_axis="resampled").image
    spacing_zyx = np.asarray(image.spacing_zyx, dtype=float)  # (S-I 0.875, A-P 0.875, L-R 4.0)
    zoom = spacing_zyx / np.array([slice_mm, spacing_zyx[1], in_plane_mm])
    array = ndimage.zoom(image.array.astype(np.float32), zoom, order=1)
    spacing = spacing_zyx * np.asarray(image.shape) / np.asarray(array.shape)
    return Image(np.clip(np.rint(array), 0, 32767).astype(np.int16), tuple(spacing[::-1]), image.origin,
                 image.direction, "axial T2 phantom")


def _copy_bundle(source: Path, target: Path, **changes) -> None:
    shutil.copytree(source, target)
    path = target / "crcseg_model.json"
    data = json.loads(path.read_text())
    data.update(changes)
    for key, value in changes.items():
        if value is None:
            del data[key]
    path.write_text(json.dumps(data, indent=2))


def make_inputs(folder: Path) -> None:
    """Write this topic's inputs into ``folder / "model_fit"``."""
    root = folder / TOPIC
    root.mkdir(exist_ok=True)
    write_image(axial_mr(), root / "mr_axial.nii.gz")
    write_image(sagittal_mr(storage="resampled"), root / "mr_sagittal_lps.nii.gz")
    ct = read_image(folder / "ct.nii.gz") if (folder / "ct.nii.gz").is_file() else make_abdominal_phantom().ct
    values = ct.array.astype(np.int32)
    write_image(ct.with_array((values - 1024).astype(np.int16)), root / "ct_shifted_down.nii.gz")  # intercept twice
    write_image(ct.with_array((values + 400).astype(np.int16)), root / "ct_wrong_intercept.nii.gz")  # air at -600
    write_image(ct.with_array((values + 1024).astype(np.uint16)), root / "ct_unsigned.nii.gz")  # no intercept
    write_image(ct.with_array(np.clip((values + 1024) / 4096.0, 0, 1).astype(np.float32)),
                root / "ct_normalised.nii.gz")
    mr_bundle = demo_model_path().parent / MR_MODEL
    _copy_bundle(mr_bundle, root / "mr_bundle_format2", thick_axis=None, format_version=2)
    broken = json.loads((mr_bundle / "crcseg_model.json").read_text())["thick_axis"]
    _copy_bundle(mr_bundle, root / "mr_bundle_bad_thick_axis", thick_axis={**broken, "runs": "up-down"})
    _copy_bundle(demo_model_path(), root / "ct_bundle_thick_axis", thick_axis=broken, format_version=3)


def mr_segment(w: Workspace, image: str, model: str = MR_MODEL) -> Argv:
    model_path = model if model == MR_MODEL else w[f"{TOPIC}/{model}"]
    return ["segment", w[f"{TOPIC}/{image}"], "-m", model_path, "-o", w.out(), "--no-mirroring", "--device", "cpu"]


def ct_segment(w: Workspace, image: str, model: str = "demo_phantom") -> Argv:
    return segment(w, model if model == "demo_phantom" else w[f"{TOPIC}/{model}"], ct=w[f"{TOPIC}/{image}"])


ROWS: List[Fault] = [
    # MR: the plane of the slices (the case: an axial volume given to the sagittal T2 model)
    Fault("fit-mr-axial-volume-to-sagittal-model", lambda w: mr_segment(w, "mr_axial.nii.gz"), OK,
          ("1 of 1 cases segmented", "runs left-right (sagittal slices)", "runs superior-inferior (axial slices)",
           "expect a wrong result")),
    Fault("fit-mr-sagittal-stored-as-lps", lambda w: mr_segment(w, "mr_sagittal_lps.nii.gz"), OK,
          ("1 of 1 cases segmented", "stored as array axis 2", "array axis 0", "expect a wrong result")),
    # a format-2 MR bundle (no thick_axis): the plans still give the array axis; the patient axis is unknown
    Fault("fit-mr-bundle-without-thick-axis-lps",
          lambda w: mr_segment(w, "mr_sagittal_lps.nii.gz", "mr_bundle_format2"), OK,
          ("1 of 1 cases segmented", "not recorded in the model", "expect a degraded result")),
    Fault("fit-mr-bundle-bad-thick-axis", lambda w: mr_segment(w, "mr_axial.nii.gz", "mr_bundle_bad_thick_axis"),
          BAD_INPUT, ("crcseg_model.json", "thick_axis.runs", "up-down")),
    Fault("fit-ct-bundle-with-thick-axis", lambda w: ct_segment(w, "ct_wrong_intercept.nii.gz", "ct_bundle_thick_axis"),
          BAD_INPUT, ("crcseg_model.json", "thick_axis", "MR models only")),
    # CT: the intensity range of the model's training data (a wrong rescale intercept: air at -600 HU)
    Fault("fit-ct-wrong-intercept", lambda w: ct_segment(w, "ct_wrong_intercept.nii.gz"), OK,
          ("1 of 1 cases segmented", "-444..84 HU", "shifted or rescaled", "expect a wrong result")),
    # the intercept applied twice (-1024): the phantom's densest voxel falls below 50 HU, organ guidance finds no body
    Fault("fit-ct-shifted-by-minus-1024", lambda w: ct_segment(w, "ct_shifted_down.nii.gz"), FAILED,
          ("0 of 1 cases segmented", "ct_shifted_down", "no voxel above 50")),
    # no air at all: no CT in Hounsfield units; check_ct refuses these per case before the model's own check
    Fault("fit-ct-unsigned-without-intercept", lambda w: ct_segment(w, "ct_unsigned.nii.gz"), FAILED,
          ("0 of 1 cases segmented", "ct_unsigned", "not a CT in Hounsfield units", "rescaled CT")),
    Fault("fit-ct-normalised-0-to-1", lambda w: ct_segment(w, "ct_normalised.nii.gz"), FAILED,
          ("0 of 1 cases segmented", "ct_normalised", "not a CT in Hounsfield units")),
]
