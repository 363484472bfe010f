"""AG-CRC's sampling maps, computed once per preprocessed case before training (AG-CRC §III-C, Eq. 1-6).

``precompute_sampling_maps`` writes each case's PSM (``psm.compute_sampling_map``) to
``<preprocessed config folder>/agcrc_psm/<case>.npz``; ``precompute_region_locations`` writes the voxels of the
Table VI ablations' regions (OOI, colon, tumor) to ``agcrc_regions/``. Training reads them back
(``nnunet_sampling``) and recomputes nothing.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from CRCTraining.agcrc.psm import (
    MU,
    TUMOR_SHARE,
    SamplingMap,
    Shape3,
    compute_sampling_map,
)
from CRCTraining.agcrc.sampling import (
    MAX_REGION_LOCATIONS,
    TUMOR_LABEL,
    as_patch_size_3d,
    colon_mask,
    ooi_mask,
    sample_locations,
    tumor_mask,
)
from OrganGuidanceLib.atomic import atomic_path

PSM_DIRNAME = "agcrc_psm"  # <preprocessed config folder>/agcrc_psm/<case>.npz: a subfolder, because


REGIONS_DIRNAME = "agcrc_regions"  # nnUNetDatasetNumpy takes every *.npz next to the data for a case


REGION_FILE_VERSION = 1


# --- per-case files in the preprocessed folder -------------------------------------------------------------------
def psm_path(preprocessed_folder: Path, identifier: str) -> Path:
    return Path(preprocessed_folder) / PSM_DIRNAME / f"{identifier}.npz"


def regions_path(preprocessed_folder: Path, identifier: str) -> Path:
    return Path(preprocessed_folder) / REGIONS_DIRNAME / f"{identifier}.npz"


def _open_dataset(preprocessed_folder: Path, identifiers: Optional[Sequence[str]]):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    folder = Path(preprocessed_folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"preprocessed folder {folder} does not exist")
    dataset_class = infer_dataset_class(str(folder))
    return dataset_class(str(folder), None if identifiers is None else list(identifiers))


def read_psm(path: Path, shape: Sequence[int], patch_size: Shape3, tumor_weight: float) -> Optional[SamplingMap]:
    """The stored map if it exists, is readable and matches the grid, patch size and lambda; else None."""
    if not path.exists():
        return None
    try:
        stored = SamplingMap.load(path)
    except ValueError as error:
        warnings.warn(f"{error}; recomputing it", stacklevel=3)
        return None
    return stored if stored.matches(shape, patch_size, tumor_weight, MU) else None


def compute_case_psm(data, seg, patch_size: Sequence[int], tumor_weight: float = TUMOR_SHARE,
                     tumor_label: int = TUMOR_LABEL) -> SamplingMap:
    """PSM of one preprocessed case: data (C, Z, Y, X), seg (1, Z, Y, X)."""
    return compute_sampling_map(ooi_mask(data), tumor_mask(seg, tumor_label), as_patch_size_3d(patch_size),
                                tumor_weight=tumor_weight)


def precompute_sampling_maps(preprocessed_folder: Path, patch_size: Sequence[int], tumor_weight: float = TUMOR_SHARE,
                             overwrite: bool = False, identifiers: Optional[Sequence[str]] = None,
                             tumor_label: int = TUMOR_LABEL) -> List[Path]:
    """Write ``agcrc_psm/<case>.npz`` for every case of a preprocessed nnU-Net configuration folder.

    A file that exists and matches (grid, patch size, lambda, mu) is kept unless ``overwrite``; a stale one (e.g. of
    another patch size) is recomputed. Returns the paths of all maps.
    """
    dataset = _open_dataset(preprocessed_folder, identifiers)
    patch = as_patch_size_3d(patch_size)
    paths = []
    for identifier in tqdm(dataset.identifiers, desc="AG-CRC sampling maps", unit="case"):
        data, seg, _, _ = dataset.load_case(identifier)
        path = psm_path(preprocessed_folder, identifier)
        if overwrite or read_psm(path, data.shape[1:], patch, tumor_weight) is None:
            compute_case_psm(data, seg, patch, tumor_weight, tumor_label).save(path)
        paths.append(path)
    return paths


@dataclass
class RegionLocations:
    """Voxels of the OOI and of colon + rectum of one case (flat indices into ``shape``), for the ablations."""

    shape: Shape3
    ooi: np.ndarray
    colon: np.ndarray

    @classmethod
    def from_case(cls, data, max_locations: int = MAX_REGION_LOCATIONS) -> "RegionLocations":
        return cls(tuple(int(s) for s in data.shape[1:]), sample_locations(ooi_mask(data), max_locations),
                   sample_locations(colon_mask(data), max_locations))

    def save(self, path: Path) -> Path:
        with atomic_path(Path(path), suffix=".npz") as temporary:
            with open(temporary, "wb") as handle:
                np.savez(handle, format_version=np.int64(REGION_FILE_VERSION), shape=np.asarray(self.shape),
                         ooi=self.ooi, colon=self.colon)
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> "RegionLocations":
        try:
            with np.load(path) as data:
                if int(data["format_version"]) != REGION_FILE_VERSION:
                    raise ValueError(f"format version {int(data['format_version'])}")
                return cls(tuple(int(s) for s in data["shape"]), data["ooi"], data["colon"])
        except FileNotFoundError:
            raise
        except Exception as error:
            raise ValueError(f"region file {path} is not readable: {error}") from error


def precompute_region_locations(preprocessed_folder: Path, overwrite: bool = False,
                                identifiers: Optional[Sequence[str]] = None) -> List[Path]:
    """Write ``agcrc_regions/<case>.npz`` (OOI and colon voxels) for the uniform_*/hybrid_* ablations."""
    dataset = _open_dataset(preprocessed_folder, identifiers)
    paths = []
    for identifier in tqdm(dataset.identifiers, desc="AG-CRC sampling regions", unit="case"):
        path = regions_path(preprocessed_folder, identifier)
        data, _, _, _ = dataset.load_case(identifier)
        if overwrite or not path.exists() or RegionLocations.load(path).shape != tuple(data.shape[1:]):
            RegionLocations.from_case(data).save(path)
        paths.append(path)
    return paths
