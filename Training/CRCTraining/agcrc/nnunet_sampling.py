"""AG-sampling inside nnU-Net v2's data loader: a dataset whose ``class_locations`` hold our centre, and the mixin.

nnU-Net's ``nnUNetDataLoader.get_bbox`` centres a patch on a voxel drawn from ``properties['class_locations']``
when ``force_fg`` is True. ``CentreSampledDataset`` overrides ``load_case`` so that ``class_locations`` holds one
voxel drawn by the strategy (``sampling``), and ``AGSamplingTrainerMixin`` sets ``oversample_foreground_percent =
1.0``: nnU-Net's loader, augmentation, multi-process and DDP paths run unchanged, only the centre differs.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from CRCTraining.agcrc.psm import TUMOR_SHARE, Shape3
from CRCTraining.agcrc.sampling import (
    TUMOR_LABEL,
    CaseSampler,
    as_patch_size_3d,
    get_strategy,
    region_or_whole_grid,
    sample_locations,
    tumor_mask,
    with_tumor_share,
)
from CRCTraining.agcrc.sampling_maps import (
    RegionLocations,
    compute_case_psm,
    precompute_region_locations,
    precompute_sampling_maps,
    psm_path,
    read_psm,
    regions_path,
)


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
                 patch_size: Optional[Sequence[int]] = None, tumor_weight: float = TUMOR_SHARE,
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
            psm = read_psm(path, shape, self.sampling_patch_size, self.sampling_tumor_weight)
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
        return CaseSampler(shape, spec, region=region_or_whole_grid(spec, region, identifier), tumor=tumor)

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
    from nnunetv2.training.dataloading.nnunet_dataset import (
        nnUNetDatasetBlosc2,
        nnUNetDatasetNumpy,
    )

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
    sampling_tumor_weight: float = TUMOR_SHARE  # AG-CRC Eq. 6, lambda
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
