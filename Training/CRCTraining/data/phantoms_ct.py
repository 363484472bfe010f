"""A small synthetic colon-cancer dataset in the MSD layout (like ``Task10_Colon``), made offline.

Each case is ``OrganGuidanceLib.phantom.make_abdominal_phantom`` (a rectal tumor in the
colon wall, TotalSegmentator v2 organ labels) with its own seed: the seed jitters the
small-bowel and colon centrelines and the tumor's lobulation (what ``phantom.py``
exposes). On top of that each case gets its own field of view: a z window and an
in-plane shift drawn from the seed, so the tumor sits at a different place in every
image. Cases are small (default 40 x 96 x 96 voxels, 4 mm slices of 2.9 x 2.9 mm; the field
of view clips the flanks a little) so that nnU-Net plans, preprocesses and trains on them in
seconds on a CPU. In-plane spacing stays below the default 3 mm bowel-wall width
(``GuidanceParameters.wall_width_mm``): the engine builds the wall in whole voxels, and a
wider spacing leaves the AG-SSL bowel wall empty.

Layout written (MSD, plus the organ masks a user would bring)::

    folder/dataset.json
    folder/imagesTr/colon_001.nii.gz   CT (int16 HU)
    folder/labelsTr/colon_001.nii.gz   tumor 0/1
    folder/organsTr/colon_001.nii.gz   TotalSegmentator v2 ``total`` label map (AG-CRC §III-B MOS)
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from OrganGuidanceLib.atomic import write_text_atomic
from OrganGuidanceLib.crop import CropBox
from OrganGuidanceLib.image import as_index3
from OrganGuidanceLib.io import write_image
from OrganGuidanceLib.phantom import ANATOMY_CENTER_Z_MM, Phantom, make_abdominal_phantom

MSD_LABELS = {"0": "background", "1": "colon cancer primaries"}  # MSD Task10_Colon dataset.json
IN_PLANE_SHIFT_MM = 12.0  # largest random shift of the anatomy in x and y, each way
Z_MARGIN_SLICES = 2  # the tumor stays at least this many slices away from the window's ends


def case_id(index: int) -> str:
    """MSD naming: ``colon_001`` for the first case."""
    return f"colon_{index + 1:03d}"


def _tumor_z_range(phantom: Phantom) -> Tuple[int, int]:
    slices = np.flatnonzero(phantom.tumor.array.any(axis=(1, 2)))
    return int(slices[0]), int(slices[-1])


def make_phantom_case(
    index: int,
    seed: int = 0,
    shape_zyx: Tuple[int, int, int] = (40, 96, 96),
    spacing_xyz: Tuple[float, float, float] = (2.9, 2.9, 4.0),
    direction: Optional[np.ndarray] = None,
) -> Phantom:
    """One case: a phantom on a larger grid, cropped to ``shape_zyx`` around the tumor at a seeded offset."""
    nz, ny, nx = (int(n) for n in shape_zyx)
    rng = np.random.default_rng([int(seed), int(index)])
    phantom_seed = int(rng.integers(0, 2**31 - 1))
    pad_y, pad_x = (int(round(IN_PLANE_SHIFT_MM / s)) for s in spacing_xyz[1::-1])
    # The phantom's grid is centred on the anatomy (z = 160 mm); a tall grid reaches the pelvis.
    full_nz = max(nz, int(math.ceil(2 * ANATOMY_CENTER_Z_MM / spacing_xyz[2])) + 2)
    full_shape = (full_nz, ny + 2 * pad_y, nx + 2 * pad_x)
    phantom = make_abdominal_phantom(full_shape, spacing_xyz, seed=phantom_seed, direction=direction)

    first, last = _tumor_z_range(phantom)
    low = max(0, last + Z_MARGIN_SLICES - nz + 1)
    high = min(first - Z_MARGIN_SLICES, full_nz - nz)
    if low > high:
        raise ValueError(
            f"phantom case {index}: {nz} slices of {spacing_xyz[2]} mm cannot hold the tumor "
            f"({last - first + 1} slices) with {Z_MARGIN_SLICES} slices of margin; use more slices"
        )
    z0 = int(rng.integers(low, high + 1))
    y0, x0 = int(rng.integers(0, 2 * pad_y + 1)), int(rng.integers(0, 2 * pad_x + 1))
    box = CropBox(as_index3((z0, y0, x0)), as_index3((z0 + nz, y0 + ny, x0 + nx)), as_index3(full_shape))
    cropped = Phantom(
        ct=box.apply(phantom.ct), labels=box.apply(phantom.labels), tumor=box.apply(phantom.tumor),
    )
    present = {int(v) for v in np.unique(cropped.labels.array) if v}
    cropped.label_names = {v: n for v, n in phantom.label_names.items() if v in present}
    if not cropped.tumor.array.any():  # the z window holds it; an in-plane shift of 12 mm cannot lose it
        raise ValueError(f"phantom case {index}: the field of view {shape_zyx} x {spacing_xyz} mm misses the tumor")
    return cropped


def make_tumor_free_case(index: int, seed: int = 0, shape_zyx: Tuple[int, int, int] = (40, 96, 96),
                         spacing_xyz: Tuple[float, float, float] = (2.9, 2.9, 4.0),
                         direction: Optional[np.ndarray] = None) -> Phantom:
    """A case without tumor: the same phantom, cut above the tumor (upper abdomen: liver, stomach,
    kidneys, bowel), its label all zero. Where FLARE24's organ interference should stop false positives."""
    nz = int(shape_zyx[0])
    rng = np.random.default_rng([int(seed), int(index), 1])
    full_nz = max(nz, int(math.ceil(2 * ANATOMY_CENTER_Z_MM / spacing_xyz[2])) + 2)
    pad_y, pad_x = (int(round(IN_PLANE_SHIFT_MM / s)) for s in spacing_xyz[1::-1])
    full_shape = (full_nz, int(shape_zyx[1]) + 2 * pad_y, int(shape_zyx[2]) + 2 * pad_x)
    phantom = make_abdominal_phantom(full_shape, spacing_xyz, seed=int(rng.integers(0, 2**31 - 1)),
                                     direction=direction)
    first, last = _tumor_z_range(phantom)
    above = [z0 for z0 in (last + Z_MARGIN_SLICES + 1, 0) if 0 <= z0 <= full_nz - nz and
             (z0 > last or z0 + nz <= first - Z_MARGIN_SLICES)]
    if not above:
        raise ValueError(f"tumor-free phantom case {index}: {nz} slices cannot avoid the tumor; use fewer slices")
    z0, y0, x0 = above[0], int(rng.integers(0, 2 * pad_y + 1)), int(rng.integers(0, 2 * pad_x + 1))
    box = CropBox(as_index3((z0, y0, x0)), as_index3((z0 + nz, y0 + int(shape_zyx[1]), x0 + int(shape_zyx[2]))),
                  as_index3(full_shape))
    tumor = box.apply(phantom.tumor)
    if tumor.array.any():
        raise ValueError(f"tumor-free phantom case {index}: the crop holds tumor voxels")
    return Phantom(ct=box.apply(phantom.ct), labels=box.apply(phantom.labels), tumor=tumor)


def make_phantom_dataset(
    folder: Path,
    num_cases: int = 4,
    seed: int = 0,
    shape_zyx: Tuple[int, int, int] = (40, 96, 96),
    spacing_xyz: Tuple[float, float, float] = (2.9, 2.9, 4.0),
    direction: Optional[Sequence[Sequence[float]]] = None,
    tumor_free_cases: int = 0,
) -> Path:
    """Write ``num_cases`` phantom cases in the MSD layout (plus ``organsTr``) to ``folder``; return it.

    Deterministic for a given ``seed``. ``direction``: a diagonal of +-1 (e.g. ``diag(-1, -1, 1)``,
    how ITK reads many NIfTI files); the default is the identity. ``tumor_free_cases`` more cases
    follow, cut above the tumor, with empty labels (``make_tumor_free_case``).
    """
    if num_cases < 1:
        raise ValueError(f"phantom dataset: num_cases must be at least 1, got {num_cases}")
    folder = Path(folder)
    matrix = None if direction is None else np.asarray(direction, dtype=float)
    training = []
    for index in tqdm(range(num_cases + tumor_free_cases), desc="phantom cases", unit="case", leave=False):
        phantom = make_phantom_case(index, seed, shape_zyx, spacing_xyz, matrix) if index < num_cases else \
            make_tumor_free_case(index, seed, shape_zyx, spacing_xyz, matrix)
        name = case_id(index)
        write_image(phantom.ct, folder / "imagesTr" / f"{name}.nii.gz")
        write_image(phantom.tumor, folder / "labelsTr" / f"{name}.nii.gz")
        write_image(phantom.labels, folder / "organsTr" / f"{name}.nii.gz")
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    description = {  # MSD Task10_Colon's dataset.json keys
        "name": "PhantomColon",
        "description": "Synthetic abdominal CT phantoms with a rectal tumor (SlicerCRC, OrganGuidanceLib.phantom)",
        "reference": "generated by CRCTraining.data.phantoms_ct.make_phantom_dataset",
        "licence": "CC0",
        "release": f"seed {seed}",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": dict(MSD_LABELS),
        "numTraining": num_cases + tumor_free_cases,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    write_text_atomic(folder / "dataset.json", json.dumps(description, indent=4) + "\n")
    return folder
