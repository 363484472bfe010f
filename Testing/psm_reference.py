"""The literal AG-CRC Eq. 1-6 sampling map at full resolution: the slow, independent test reference.

``CRCTraining.agcrc.psm`` computes the same map on a coarse cell grid; the tests compare the two.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from CRCTraining.agcrc.psm import MU, SIGMA_FRACTION, TUMOR_SHARE, kernel_sigma


def truncated_gaussian_3d(patch_size: Sequence[int], sigma_fraction: float = SIGMA_FRACTION) -> np.ndarray:
    """``K`` of Eq. 2 written out in 3D: ``C exp(-1/2 q^T Sigma^-1 q)`` on ``|q| <= d/2``, Sigma = diag(sigma^2)."""
    patch = tuple(int(d) for d in patch_size)
    sigma = kernel_sigma(patch, sigma_fraction)
    halves = [int(math.floor(d / 2.0)) for d in patch]
    q = np.meshgrid(*[np.arange(-h, h + 1, dtype=np.float64) for h in halves], indexing="ij")
    quadratic = sum((q[a] / sigma[a]) ** 2 for a in range(3))
    normaliser = (2.0 * math.pi) ** -1.5 / float(np.prod(sigma))  # C = (2 pi)^-3/2 det(Sigma)^-1/2
    return normaliser * np.exp(-0.5 * quadratic)


def direct_gain(mask: np.ndarray, patch_size: Sequence[int], sigma_fraction: float = SIGMA_FRACTION) -> np.ndarray:
    """Literal Eq. 1: ``g_i = K_i . O`` at every voxel, (Z, Y, X) float64. Slow; the test reference.

    Adds the kernel around every voxel of ``O`` when ``O`` is sparse, else runs ``ndimage.correlate``.
    """
    kernel = truncated_gaussian_3d(patch_size, sigma_fraction)
    halves = [(k - 1) // 2 for k in kernel.shape]
    inside = np.argwhere(mask)
    if len(inside) > mask.size // 8:
        return ndimage.correlate(mask.astype(np.float64), kernel, mode="constant", cval=0.0)
    padded = np.zeros([s + 2 * h for s, h in zip(mask.shape, halves)])
    kz, ky, kx = kernel.shape
    for z, y, x in inside:  # K is symmetric: voxel q adds K(i - q) = K(q - i) to every i around it
        padded[z:z + kz, y:y + ky, x:x + kx] += kernel
    return padded[halves[0]:halves[0] + mask.shape[0], halves[1]:halves[1] + mask.shape[1],
                  halves[2]:halves[2] + mask.shape[2]]


def direct_psm(ooi: np.ndarray, tumor: Optional[np.ndarray], patch_size: Sequence[int],
               tumor_weight: float = TUMOR_SHARE, mu: float = MU,
               sigma_fraction: float = SIGMA_FRACTION) -> np.ndarray:
    """Literal AG-CRC Eq. 1-6 at full resolution: dense ``S_final`` (Z, Y, X) float64. Test reference only."""
    n = ooi.size

    def psm(mask: np.ndarray) -> np.ndarray:
        s = direct_gain(mask, patch_size, sigma_fraction) / mu + 1.0 / n  # Eq. 4, mean of S = 1/n
        return s / s.sum()  # Eq. 5

    organ = psm(ooi)
    if tumor is None or not np.any(tumor):
        return organ
    return (1.0 - tumor_weight) * organ + tumor_weight * psm(tumor)  # Eq. 6
