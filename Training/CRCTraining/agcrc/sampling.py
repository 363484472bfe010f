"""Patch-centre sampling strategies for nnU-Net v2 training: AG-sampling and the AG-CRC Table VI ablations.

What a strategy is and how it draws a centre (``CaseSampler``), on arrays. The maps it reads are computed before
training (``sampling_maps``); nnU-Net's loader draws through them in ``nnunet_sampling``.

Strategies (AG-CRC Table VI; "tumor" = the foreground label, FG):

=============== ======================================================================
uniform         centre uniform over the grid
uniform_ooi     centre uniform over OOI voxels
uniform_colon   centre uniform over colon + rectum voxels (MOS codes 4, 5)
hybrid          67 % uniform + 33 % tumor (nnU-Net's default; see AGSamplingTrainerMixin)
hybrid_ooi      67 % OOI + 33 % tumor
hybrid_colon    67 % colon + 33 % tumor
ag              the PSM of AG-CRC Eq. 1-6 (:mod:`CRCTraining.agcrc.psm`)
=============== ======================================================================

Preprocessed case layout: data (C, Z, Y, X) with channel 0 CT, 1 MOS (compact codes, interpolated: rounded),
2 OOI (interpolated: > 0.5); seg (1, Z, Y, X) with tumor = 1 (-1 "outside" counts as 0).
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np

from CRCTraining.agcrc.psm import (
    TUMOR_SHARE,
    RandomSource,
    SamplingMap,
    Shape3,
    compute_sampling_map,
    uniform_numbers,
)

MOS_CHANNEL = 1
OOI_CHANNEL = 2
COLON_CODES = (4, 5)  # compact MOS codes: 4 colon, 5 rectum
TUMOR_LABEL = 1
HYBRID_TUMOR_SHARE = 0.33  # nnU-Net's oversample_foreground_percent; AG-CRC Table VI "33 % from FG"
MAX_REGION_LOCATIONS = 200_000  # uniform random subset kept per region (nnU-Net keeps >= 10,000 per class)


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


def region_or_whole_grid(strategy: SamplingStrategy, region: Optional[np.ndarray], case: str) -> Optional[np.ndarray]:
    if strategy.region in ("ooi", "colon") and (region is None or region.size == 0):
        warnings.warn(f"case {case}: no {strategy.region} voxels; strategy {strategy.name} samples uniformly instead",
                      stacklevel=3)
        return None
    return region if strategy.region in ("ooi", "colon") else None


def case_sampler_from_arrays(strategy: str, ooi: np.ndarray, mos: Optional[np.ndarray], tumor: Optional[np.ndarray],
                             patch_size: Optional[Sequence[int]] = None, tumor_weight: float = TUMOR_SHARE,
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
    return CaseSampler(shape, spec, region=region_or_whole_grid(spec, region, case), tumor=tumor_voxels)
