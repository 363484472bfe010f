"""Patch-centre sampling strategies for nnU-Net v2 training: AG-sampling and the AG-CRC Table VI ablations.

nnU-Net's ``nnUNetDataLoader.get_bbox`` centres a patch on a voxel drawn from ``properties['class_locations']``
when ``force_fg`` is True. :class:`CentreSampledDataset` overrides ``load_case`` so that ``class_locations`` holds
one voxel drawn by our strategy, and the trainer sets ``oversample_foreground_percent = 1.0``: nnU-Net's loader,
augmentation, multi-process and DDP paths run unchanged, only the centre differs.

Strategies (AG-CRC Table VI; "tumor" = the foreground label, FG):

=============== ======================================================================
uniform         centre uniform over the grid
uniform_ooi     centre uniform over OOI voxels
uniform_colon   centre uniform over colon + rectum voxels (MOS codes 4, 5)
hybrid          67 % uniform + 33 % tumor (nnU-Net's default; see AGSamplingTrainerMixin)
hybrid_ooi      67 % OOI + 33 % tumor
hybrid_colon    67 % colon + 33 % tumor
ag              the PSM of AG-CRC Eq. 1-6 (:mod:`CRCTraining.psm`)
=============== ======================================================================

Preprocessed case layout: data (C, Z, Y, X) with channel 0 CT, 1 MOS (compact codes, interpolated: rounded),
2 OOI (interpolated: > 0.5); seg (1, Z, Y, X) with tumor = 1 (-1 "outside" counts as 0).
"""
from __future__ import annotations

from collections import OrderedDict

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from CRCTraining.psm import (MU, TUMOR_WEIGHT, RandomSource, SamplingMap, Shape3, compute_sampling_map,
                             uniform_numbers)
from OrganGuidanceLib.atomic import atomic_path

MOS_CHANNEL = 1
OOI_CHANNEL = 2
COLON_CODES = (4, 5)  # compact MOS codes: 4 colon, 5 rectum
TUMOR_LABEL = 1
HYBRID_TUMOR_SHARE = 0.33  # nnU-Net's oversample_foreground_percent; AG-CRC Table VI "33 % from FG"
MAX_REGION_LOCATIONS = 200_000  # uniform random subset kept per region (nnU-Net keeps >= 10,000 per class)
PSM_DIRNAME = "agcrc_psm"  # <preprocessed config folder>/agcrc_psm/<case>.npz: a subfolder, because
REGIONS_DIRNAME = "agcrc_regions"  # nnUNetDatasetNumpy takes every *.npz next to the data for a case
REGION_FILE_VERSION = 1


@dataclass(frozen=True)
class SamplingStrategy:
    """Where patch centres come from: ``region`` ("all", "ooi", "colon" or "psm") plus a share from the tumor."""

    name: str
    region: str
    tumor_share: float = 0.0


STRATEGIES: Dict[str, SamplingStrategy] = {s.name: s for s in (
    SamplingStrategy("uniform", "all"),
    SamplingStrategy("uniform_ooi", "ooi"),
    SamplingStrategy("uniform_colon", "colon"),
    SamplingStrategy("hybrid", "all", HYBRID_TUMOR_SHARE),
    SamplingStrategy("hybrid_ooi", "ooi", HYBRID_TUMOR_SHARE),
    SamplingStrategy("hybrid_colon", "colon", HYBRID_TUMOR_SHARE),
    SamplingStrategy("ag", "psm"),  # the tumor enters through Eq. 6 (lambda), not through tumor_share
)}


def get_strategy(name: str) -> SamplingStrategy:
    """The strategy called ``name``; a clear error listing the valid names otherwise."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown sampling strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def with_tumor_share(strategy: SamplingStrategy, tumor_share: Optional[float]) -> SamplingStrategy:
    """The hybrid strategy with another tumor share (None: unchanged). nnU-Net's default oversampling of 0.33 is
    decided per batch position, ``round(batch * 0.67)`` samples uniform: with batch 2 that is 50 % tumor, so 0.5
    reproduces what the nnU-Net baseline actually does at batch size 2."""
    if tumor_share is None:
        return strategy
    if strategy.tumor_share == 0 or not 0.0 <= tumor_share <= 1.0:
        raise ValueError(f"tumor share {tumor_share} is for the hybrid strategies with 0 <= share <= 1, "
                         f"not {strategy.name}")
    return dataclasses.replace(strategy, tumor_share=float(tumor_share))


def as_patch_size_3d(patch_size: Sequence[int]) -> Shape3:
    """nnU-Net patch size -> (Z, Y, X); a 2D patch (Y, X) becomes (1, Y, X), like nnUNetDataLoader does."""
    patch = tuple(int(v) for v in patch_size)
    if len(patch) == 2:
        patch = (1,) + patch
    if len(patch) != 3:
        raise ValueError(f"patch size must have 2 or 3 entries, got {patch_size}")
    return patch  # type: ignore[return-value]


# --- masks from a preprocessed case ---------------------------------------------------------------------------
def ooi_mask(data) -> np.ndarray:
    """OOI channel of data (C, Z, Y, X) -> bool (Z, Y, X); resampling interpolated it, so threshold at 0.5."""
    return np.asarray(data[OOI_CHANNEL]) > 0.5


def colon_mask(data, codes: Sequence[int] = COLON_CODES) -> np.ndarray:
    """Colon + rectum from the MOS channel of data (C, Z, Y, X) -> bool (Z, Y, X); codes are rounded first."""
    return np.isin(np.rint(np.asarray(data[MOS_CHANNEL])), codes)


def tumor_mask(seg, label: int = TUMOR_LABEL) -> np.ndarray:
    """Tumor from seg (1, Z, Y, X) -> bool (Z, Y, X); -1 ("outside") counts as background."""
    return np.asarray(seg[0]) == label


def sample_locations(mask: np.ndarray, max_locations: int = MAX_REGION_LOCATIONS, seed: int = 1234) -> np.ndarray:
    """Flat indices of the mask's voxels, a uniform random subset of at most ``max_locations``; int64 (k,)."""
    flat = np.flatnonzero(mask)
    if flat.size > max_locations:
        flat = np.sort(np.random.default_rng(seed).choice(flat, max_locations, replace=False))
    return flat.astype(np.int64)


# --- one case ---------------------------------------------------------------------------------------------------
@dataclass
class CaseSampler:
    """Draws patch centres for one case of ``shape`` (Z, Y, X) with one strategy.

    region: flat voxel indices to draw from (None: the whole grid); tumor: (m, 3) tumor voxels (None or empty: no
    tumor share); psm: the AG map ("ag" only).
    """

    shape: Shape3
    strategy: SamplingStrategy
    region: Optional[np.ndarray] = None
    tumor: Optional[np.ndarray] = None
    psm: Optional[SamplingMap] = None

    def draw(self, rng: RandomSource = None, count: int = 1) -> np.ndarray:
        """``count`` centres, int64 (count, 3) of (z, y, x); ``rng=None``: numpy's global state (as nnU-Net)."""
        if self.strategy.region == "psm":
            return self.psm.draw(rng, count)
        uniforms = uniform_numbers(rng, (count, 2))
        if self.region is None:
            centres = np.floor(uniform_numbers(rng, (count, 3)) * np.asarray(self.shape)).astype(np.int64)
        else:
            picked = self.region[np.minimum((uniforms[:, 0] * self.region.size).astype(np.int64), self.region.size - 1)]
            centres = np.stack(np.unravel_index(picked, self.shape), axis=1).astype(np.int64)
        if self.tumor is not None and len(self.tumor) and self.strategy.tumor_share > 0:
            from_tumor = uniforms[:, 1] < self.strategy.tumor_share
            rows = np.minimum((uniform_numbers(rng, int(from_tumor.sum())) * len(self.tumor)).astype(np.int64),
                              len(self.tumor) - 1)
            centres[from_tumor] = self.tumor[rows]
        return centres


def _region_or_whole_grid(strategy: SamplingStrategy, region: Optional[np.ndarray], case: str) -> Optional[np.ndarray]:
    if strategy.region in ("ooi", "colon") and (region is None or region.size == 0):
        warnings.warn(f"case {case}: no {strategy.region} voxels; strategy {strategy.name} samples uniformly instead",
                      stacklevel=3)
        return None
    return region if strategy.region in ("ooi", "colon") else None


def case_sampler_from_arrays(strategy: str, ooi: np.ndarray, mos: Optional[np.ndarray], tumor: Optional[np.ndarray],
                             patch_size: Optional[Sequence[int]] = None, tumor_weight: float = TUMOR_WEIGHT,
                             max_locations: int = MAX_REGION_LOCATIONS, case: str = "case") -> CaseSampler:
    """Sampler from in-memory masks, all (Z, Y, X): ooi (bool), mos (compact codes), tumor (bool).

    ``patch_size`` (voxels) is needed for "ag" only; ``mos`` for the colon strategies only.
    """
    spec = get_strategy(strategy)
    shape = tuple(int(s) for s in ooi.shape)
    if spec.region == "psm":
        if patch_size is None:
            raise ValueError("strategy 'ag' needs the training patch size")
        psm = compute_sampling_map(ooi, tumor, as_patch_size_3d(patch_size), tumor_weight=tumor_weight)
        return CaseSampler(shape, spec, psm=psm)
    region = None
    if spec.region == "ooi":
        region = sample_locations(ooi, max_locations)
    elif spec.region == "colon":
        if mos is None:
            raise ValueError(f"strategy {strategy!r} needs the MOS label map")
        region = sample_locations(np.isin(np.rint(mos), COLON_CODES), max_locations)
    tumor_voxels = None
    if spec.tumor_share > 0 and tumor is not None:
        tumor_voxels = np.stack(np.unravel_index(sample_locations(tumor, max_locations), shape), axis=1)
    return CaseSampler(shape, spec, region=_region_or_whole_grid(spec, region, case), tumor=tumor_voxels)


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


def _read_psm(path: Path, shape: Sequence[int], patch_size: Shape3, tumor_weight: float) -> Optional[SamplingMap]:
    """The stored map if it exists, is readable and matches the grid, patch size and lambda; else None."""
    if not path.exists():
        return None
    try:
        stored = SamplingMap.load(path)
    except ValueError as error:
        warnings.warn(f"{error}; recomputing it", stacklevel=3)
        return None
    return stored if stored.matches(shape, patch_size, tumor_weight, MU) else None


def compute_case_psm(data, seg, patch_size: Sequence[int], tumor_weight: float = TUMOR_WEIGHT,
                     tumor_label: int = TUMOR_LABEL) -> SamplingMap:
    """PSM of one preprocessed case: data (C, Z, Y, X), seg (1, Z, Y, X)."""
    return compute_sampling_map(ooi_mask(data), tumor_mask(seg, tumor_label), as_patch_size_3d(patch_size),
                                tumor_weight=tumor_weight)


def precompute_sampling_maps(preprocessed_folder: Path, patch_size: Sequence[int], tumor_weight: float = TUMOR_WEIGHT,
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
        if overwrite or _read_psm(path, data.shape[1:], patch, tumor_weight) is None:
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


# --- nnU-Net dataset -----------------------------------------------------------------------------------------------
def _tumor_locations(properties: dict, seg, label: int) -> Optional[np.ndarray]:
    """Tumor voxels (m, 3): nnU-Net's own sample in ``class_locations`` (the same as its FG oversampling)."""
    locations = properties.get("class_locations", {}).get(label)
    if locations is None:
        return np.stack(np.unravel_index(sample_locations(tumor_mask(seg, label)), seg.shape[1:]), axis=1)
    locations = np.asarray(locations)
    return locations[:, 1:].astype(np.int64) if len(locations) else None


class CentreSampledDataset:
    """Mixin over an nnU-Net dataset class: ``load_case`` puts one centre drawn by the strategy in
    ``properties['class_locations']`` (as ``{1: [[0, z, y, x]]}``); use with ``oversample_foreground_percent = 1``.

    Everything it needs is in plain instance attributes, so the dataset pickles into nnU-Net's loader workers.
    Per-case samplers are kept in a small LRU cache per worker (``sampling_cache_cases``): reading a map
    costs about 1 ms per patch, which alone would be ~4 % of an iteration (benchmarks/bench_psm.py).
    """

    sampling_cache_cases = 32  # coarse maps are a few MB each; bounded so many workers stay small

    def __init__(self, folder: str, identifiers: Optional[List[str]] = None,
                 folder_with_segs_from_previous_stage: Optional[str] = None, *, strategy: str = "ag",
                 patch_size: Optional[Sequence[int]] = None, tumor_weight: float = TUMOR_WEIGHT,
                 tumor_label: int = TUMOR_LABEL, tumor_share: Optional[float] = None):
        super().__init__(folder, identifiers, folder_with_segs_from_previous_stage)
        self.sampling_strategy = with_tumor_share(get_strategy(strategy), tumor_share)
        if self.sampling_strategy.region == "psm" and patch_size is None:
            raise ValueError("strategy 'ag' needs the training patch size")
        self.sampling_patch_size = None if patch_size is None else as_patch_size_3d(patch_size)
        self.sampling_tumor_weight = float(tumor_weight)
        self.sampling_tumor_label = int(tumor_label)

    def case_sampler(self, identifier: str, data, seg, properties: dict) -> CaseSampler:
        """The sampler of one case, from its files (computed and stored, with a warning, if missing or stale)."""
        spec = self.sampling_strategy
        shape = tuple(int(s) for s in data.shape[1:])
        if spec.region == "psm":
            path = psm_path(self.source_folder, identifier)
            psm = _read_psm(path, shape, self.sampling_patch_size, self.sampling_tumor_weight)
            if psm is None:
                warnings.warn(f"case {identifier}: no up-to-date sampling map in {path.parent}; computing it now "
                              f"(run precompute_sampling_maps before training)", stacklevel=2)
                psm = compute_case_psm(data, seg, self.sampling_patch_size, self.sampling_tumor_weight,
                                       self.sampling_tumor_label)
                psm.save(path)
            return CaseSampler(shape, spec, psm=psm)
        region = None
        if spec.region in ("ooi", "colon"):
            path = regions_path(self.source_folder, identifier)
            regions = None
            if path.exists():
                try:
                    regions = RegionLocations.load(path)
                except ValueError as error:
                    warnings.warn(str(error), stacklevel=2)
            if regions is None or regions.shape != shape:
                warnings.warn(f"case {identifier}: no up-to-date region file in {path.parent}; computing it now "
                              f"(run precompute_region_locations before training)", stacklevel=2)
                regions = RegionLocations.from_case(data)
                regions.save(path)
            region = regions.ooi if spec.region == "ooi" else regions.colon
        tumor = _tumor_locations(properties, seg, self.sampling_tumor_label) if spec.tumor_share > 0 else None
        return CaseSampler(shape, spec, region=_region_or_whole_grid(spec, region, identifier), tumor=tumor)

    def cached_case_sampler(self, identifier: str, data, seg, properties: dict) -> CaseSampler:
        cache = self.__dict__.setdefault("_sampler_cache", OrderedDict())
        key = (identifier, tuple(int(s) for s in data.shape[1:]))
        sampler = cache.get(key)
        if sampler is None:
            sampler = self.case_sampler(identifier, data, seg, properties)
            cache[key] = sampler
            while len(cache) > self.sampling_cache_cases:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return sampler

    def load_case(self, identifier):
        data, seg, seg_prev, properties = super().load_case(identifier)
        centre = self.cached_case_sampler(identifier, data, seg, properties).draw(None, 1)[0]
        properties = dict(properties)
        properties["class_locations"] = {TUMOR_LABEL: np.array([[0, *centre]], dtype=np.int64)}
        return data, seg, seg_prev, properties


def _dataset_classes():
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, nnUNetDatasetNumpy

    return nnUNetDatasetBlosc2, nnUNetDatasetNumpy


_BLOSC2, _NUMPY = _dataset_classes()


class CentreSampledDatasetBlosc2(CentreSampledDataset, _BLOSC2):
    """nnU-Net's blosc2 dataset (``.b2nd``) with centres drawn by a strategy."""


class CentreSampledDatasetNumpy(CentreSampledDataset, _NUMPY):
    """nnU-Net's numpy dataset (``.npz``/``.npy``) with centres drawn by a strategy."""


def centre_sampled_dataset_class(preprocessed_folder: str):
    """Our subclass of the dataset class nnU-Net infers for the folder (``infer_dataset_class``)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    return {_BLOSC2: CentreSampledDatasetBlosc2, _NUMPY: CentreSampledDatasetNumpy}[infer_dataset_class(
        str(preprocessed_folder))]


def centre_sampled(dataset, **options) -> CentreSampledDataset:
    """The same cases as an nnU-Net dataset instance, as our subclass; ``options``: strategy, patch_size, ..."""
    if isinstance(dataset, CentreSampledDataset):
        return dataset
    for base, ours in ((_BLOSC2, CentreSampledDatasetBlosc2), (_NUMPY, CentreSampledDatasetNumpy)):
        if isinstance(dataset, base):
            return ours(dataset.source_folder, list(dataset.identifiers),
                        dataset.folder_with_segs_from_previous_stage, **options)
    raise TypeError(f"no centre-sampled variant of dataset class {type(dataset).__name__}")


# --- nnU-Net trainer -----------------------------------------------------------------------------------------------
class AGSamplingTrainerMixin:
    """Trainer mixin: patch centres from ``sampling_strategy`` (AG-CRC §III-C, Table VI). Cooperative: put it
    before ``nnUNetTrainer`` (and other mixins) in the bases; every override calls ``super()``.

    "hybrid" is nnU-Net's own default path, untouched: the paper's "Hybrid uniform" row *is* the nnU-Net baseline.
    Every other strategy sets ``oversample_foreground_percent = 1.0`` so that every patch, training and validation
    alike (nnU-Net samples both the same way), is centred on the voxel the strategy drew.
    """

    sampling_strategy: str = "ag"
    sampling_tumor_weight: float = TUMOR_WEIGHT  # AG-CRC Eq. 6, lambda
    sampling_tumor_label: int = TUMOR_LABEL
    sampling_tumor_share: Optional[float] = None  # hybrid_* only; None: 0.33 (see with_tumor_share)

    def _uses_centre_sampling(self) -> bool:
        return get_strategy(self.sampling_strategy).name != "hybrid"

    def _force_centre_sampling(self) -> None:
        if self._uses_centre_sampling():
            self.oversample_foreground_percent = 1.0
            self.probabilistic_oversampling = False

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        self._force_centre_sampling()  # after nnU-Net's per-DDP-worker split: every sample is ours on every worker

    def _sampling_patch_size(self) -> Shape3:
        return as_patch_size_3d(self.configuration_manager.patch_size)

    def _prepare_sampling_files(self, identifiers: Sequence[str]) -> None:
        """Per-case maps/regions written once by rank 0 (the others wait), so loader workers only read them."""
        region = get_strategy(self.sampling_strategy).region
        if self.local_rank == 0 and region in ("psm", "ooi", "colon"):
            self.print_to_log_file(f"AG-CRC sampling ({self.sampling_strategy}): preparing per-case files")
            if region == "psm":
                precompute_sampling_maps(Path(self.preprocessed_dataset_folder), self._sampling_patch_size(),
                                         self.sampling_tumor_weight, identifiers=identifiers,
                                         tumor_label=self.sampling_tumor_label)
            else:
                precompute_region_locations(Path(self.preprocessed_dataset_folder), identifiers=identifiers)
        if self.is_ddp:
            import torch.distributed as dist

            dist.barrier()

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        if not self._uses_centre_sampling():
            return dataset_tr, dataset_val
        self._prepare_sampling_files(sorted(set(dataset_tr.identifiers) | set(dataset_val.identifiers)))
        options = dict(strategy=self.sampling_strategy, patch_size=self._sampling_patch_size(),
                       tumor_weight=self.sampling_tumor_weight, tumor_label=self.sampling_tumor_label,
                       tumor_share=self.sampling_tumor_share)
        return centre_sampled(dataset_tr, **options), centre_sampled(dataset_val, **options)

    def get_dataloaders(self):
        self._force_centre_sampling()
        return super().get_dataloaders()

