"""Probabilistic sampling map (PSM) for anatomy-guided patch sampling, AG-CRC §III-C, Eq. 1-6.

For every voxel ``i`` of the preprocessed grid the gain (Eq. 1) is ``g_i = K_i . O``: the inner product of a
binary map ``O`` (OOI or tumor mask) with the truncated Gaussian ``K_i`` centred at ``i`` (Eq. 2). The PSM is
``s_i = g_i / mu + 1/n`` (Eq. 4) projected onto the simplex (Eq. 5), and organ and tumor maps are mixed with
weight ``lambda`` (Eq. 6).

Two facts make this fast and small:

* ``s = (g / mu + 1/n) / (G / mu + 1)`` with ``G = sum_i g_i`` is exactly the mixture
  ``(G/mu) / (G/mu + 1) * (g / G) + 1 / (G/mu + 1) * uniform``. A map is stored as its gain and total ``G``;
  sampling first picks the component (organ gain, tumor gain or uniform), then a voxel from it.
* ``K_i`` has a box support and a diagonal covariance, so it is a product of three 1D kernels and ``g`` is three
  1D correlations. ``g`` varies on the scale of ``sigma`` (several voxels), so we compute it on a grid of cells of
  ``c`` voxels per axis (``sigma / c >= 2``): block sums of ``O`` per cell, correlated with the 1D kernel averaged
  over pairs of voxels of two cells (exact when ``O`` is spread evenly inside a cell; the plain kernel when
  ``c = 1``, so small grids are exact). A centre is drawn as a cell (cumulative sums + ``searchsorted``, first over
  rows of cells, then within the row) and then a voxel inside it, uniformly up to a first-order (linear) correction along each axis taken from the neighbouring
  cells (:func:`within_cell_slopes`).

Arrays are indexed ``(Z, Y, X)`` like nnU-Net's preprocessed data; patch sizes are in voxels of that grid.
"""
from __future__ import annotations

import io
import math
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

from OrganGuidanceLib.atomic import atomic_path
from OrganGuidanceLib.morphology import bounding_box

Shape3 = Tuple[int, int, int]
RandomSource = Union[np.random.Generator, np.random.RandomState, None]

SIGMA_FRACTION = 0.1  # AG-CRC Eq. 2: sigma = 0.1 d
TUMOR_SHARE = 0.33  # AG-CRC Eq. 6, lambda
MU = 1.0  # AG-CRC Eq. 3-4, balancing coefficient mu
CELLS_PER_SIGMA = 2.0  # coarse grid: at least this many cells per standard deviation
FILE_FORMAT_VERSION = 1
HEADER_FIELDS = ("format_version", "shape", "cell_size", "patch_size", "organ_origin", "organ_box", "tumor_origin",
                 "tumor_box", "organ_total", "tumor_total", "tumor_weight", "mu", "sigma_fraction")
_TRIPLE_FIELDS = {"shape", "cell_size", "patch_size", "organ_origin", "organ_box", "tumor_origin", "tumor_box"}


def _as_shape3(values: Sequence[int], name: str) -> Shape3:
    values = tuple(int(v) for v in values)
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"{name} must be three positive integers (Z, Y, X), got {values}")
    return values  # type: ignore[return-value]


def kernel_sigma(patch_size: Sequence[int], sigma_fraction: float = SIGMA_FRACTION) -> np.ndarray:
    """Per-axis sigma of ``K_i`` in voxels, shape (3,).

    The paper writes ``Sigma = diag(sigma)`` with ``sigma = 0.1 d``; we read ``sigma`` as the standard deviation,
    i.e. ``Sigma = diag(sigma**2)`` and ``C = (2 pi)^(-3/2) / (sigma_z sigma_y sigma_x)``: read literally as
    variances, a 192-voxel patch would get a kernel of 4.4 voxels standard deviation, not the "0.1 x patch" width
    the text describes.
    """
    return sigma_fraction * np.asarray(patch_size, dtype=np.float64)


def truncated_gaussian_1d(sigma: float, patch_length: int) -> np.ndarray:
    """1D factor of Eq. 2 on integer offsets ``t`` with ``|t| <= d/2``: ``exp(-t^2 / 2 sigma^2) / (sqrt(2 pi) sigma)``.

    Shape (2 * floor(d/2) + 1,), centred. The product of the three factors is ``C exp(-1/2 q^T Sigma^-1 q)``.
    """
    half = int(math.floor(patch_length / 2.0))
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    return np.exp(-0.5 * (offsets / sigma) ** 2) / (math.sqrt(2.0 * math.pi) * sigma)


def cell_kernel_1d(sigma: float, patch_length: int, cell: int) -> np.ndarray:
    """Kernel between cells ``c`` voxels apart: ``w(D) = 1/c^2 sum_{u,v in [0,c)} k(c D + v - u)``, centred.

    ``w`` is the mean, over a voxel of one cell and a voxel of the other, of the 1D factor ``k`` of Eq. 2, so block
    sums of ``O`` correlated with ``w`` give the mean gain per voxel of each cell. ``c = 1`` gives ``k`` itself.
    """
    k = truncated_gaussian_1d(sigma, patch_length)
    half = (k.size - 1) // 2
    if cell == 1:
        return k
    reach = -(-(half + cell - 1) // cell)  # largest |D| with a non-zero weight
    differences = np.arange(-(cell - 1), cell)  # v - u, each with multiplicity c - |v - u|
    multiplicity = cell - np.abs(differences)
    weights = np.zeros(2 * reach + 1)
    for index, d in enumerate(range(-reach, reach + 1)):
        t = cell * d + differences
        inside = np.abs(t) <= half
        weights[index] = np.sum(multiplicity[inside] * k[t[inside] + half]) / cell**2
    return weights


def default_cell_size(patch_size: Sequence[int], sigma_fraction: float = SIGMA_FRACTION) -> Shape3:
    """Cells of ``floor(sigma / 2)`` voxels per axis (at least 1): ``sigma / c >= 2``; ``c = 1`` for small sigma."""
    sigma = kernel_sigma(patch_size, sigma_fraction)
    return tuple(max(1, int(s // CELLS_PER_SIGMA)) for s in sigma)  # type: ignore[return-value]


def block_sums(mask: np.ndarray, cell_size: Sequence[int]) -> np.ndarray:
    """Number of mask voxels in each cell; (Z, Y, X) -> (ceil(Z/cz), ceil(Y/cy), ceil(X/cx)) float64.

    Only the mask's bounding box (widened to whole cells) is summed; edge cells hold what remains of the grid.
    """
    mask = mask if mask.dtype == np.bool_ else mask != 0
    coarse_shape = tuple(-(-size // int(cell)) for size, cell in zip(mask.shape, cell_size))
    result = np.zeros(coarse_shape)
    box = bounding_box(mask)
    if box is None:
        return result
    first = [(b.start // int(c)) * int(c) for b, c in zip(box, cell_size)]
    counts = mask[first[0]:box[0].stop, first[1]:box[1].stop, first[2]:box[2].stop].view(np.uint8)
    # Largest axis first: shrinks the array fastest. uint16 holds up to 65535 voxels per cell row.
    for axis in (2, 1, 0):
        step = int(cell_size[axis])
        if step > 1:
            dtype = np.uint16 if counts.dtype == np.uint8 and step < 65536 else np.int64
            counts = np.add.reduceat(counts, np.arange(0, counts.shape[axis], step), axis=axis, dtype=dtype)
    origin = [f // int(c) for f, c in zip(first, cell_size)]
    result[origin[0]:origin[0] + counts.shape[0], origin[1]:origin[1] + counts.shape[1],
           origin[2]:origin[2] + counts.shape[2]] = counts
    return result


def coarse_gain(mask: np.ndarray, patch_size: Shape3, cell_size: Shape3, sigma_fraction: float) -> np.ndarray:
    """Mean gain per voxel of every cell (Eq. 1-2), shape (ceil(Z/cz), ceil(Y/cy), ceil(X/cx)), float64.

    Voxels outside the grid count as ``O = 0`` (zero padding).
    """
    gain = block_sums(mask, cell_size)
    if not gain.any():
        return gain
    sigma = kernel_sigma(patch_size, sigma_fraction)
    for axis in range(3):
        weights = cell_kernel_1d(sigma[axis], patch_size[axis], cell_size[axis])
        gain = ndimage.correlate1d(gain, weights, axis=axis, mode="constant", cval=0.0)
    np.maximum(gain, 0.0, out=gain)  # round-off of the correlation may leave -1e-17 far from the mask
    return gain


def cell_extents(shape: Shape3, cell_size: Shape3) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxels per cell along each axis (edge cells may be shorter): three 1D int arrays."""
    return tuple(  # type: ignore[return-value]
        np.minimum(cell, size - np.arange(0, size, cell)) for size, cell in zip(shape, cell_size)
    )


def uniform_numbers(rng: RandomSource, size) -> np.ndarray:
    """Uniform [0, 1) numbers; ``rng=None`` uses numpy's global legacy state, seeded per nnU-Net loader worker."""
    return np.random.random_sample(size) if rng is None else rng.random(size)


def _expand(coarse: np.ndarray, cell_size: Shape3, shape: Shape3) -> np.ndarray:
    """Repeat every cell value over its voxels: coarse grid -> (Z, Y, X)."""
    for axis in range(3):
        coarse = np.repeat(coarse, cell_size[axis], axis=axis)
    return coarse[: shape[0], : shape[1], : shape[2]]


def within_cell_slopes(gain: np.ndarray, index: np.ndarray, axis: int, cell: int) -> np.ndarray:
    """Relative slope of ``g`` per voxel along ``axis`` in the cells ``index`` (k, 3) -> (k,).

    Inside a cell the gain is modelled as ``g_cell * prod_a (1 + slope_a (u_a - mean u_a))`` (u: voxel offset in
    the cell): the mass of the cell is unchanged, and the piecewise-constant error (of order cell / object size,
    ~8 % L1 on a clinical OOI) drops to the error of the cell gains themselves (~1 %). Slopes come from central
    differences of neighbouring cells (one-sided at the grid edge) and are clipped so no voxel gets a negative weight.
    """
    size = gain.shape[axis]
    at = index[:, axis]
    lower, upper = np.maximum(at - 1, 0), np.minimum(at + 1, size - 1)
    coordinates = list(index.T)
    here = gain[tuple(coordinates)].astype(np.float64)
    coordinates[axis] = upper
    difference = gain[tuple(coordinates)].astype(np.float64)
    coordinates[axis] = lower
    difference -= gain[tuple(coordinates)]
    denominator = np.maximum((upper - lower) * cell, 1) * here
    slopes = np.divide(difference, denominator, out=np.zeros(len(at)), where=denominator > 0)
    limit = 2.0 / (cell - 1)  # 1 + slope * (u - (c - 1) / 2) >= 0 on the whole cell
    return np.clip(slopes, -limit, limit)


def _draw_offsets(slopes: np.ndarray, extent: np.ndarray, cell: int, uniforms: np.ndarray) -> np.ndarray:
    """Offset in [0, extent) with probability proportional to ``1 + slope (u - (extent - 1) / 2)``; all (k,)."""
    offsets = np.arange(cell)[None, :]
    weights = 1.0 + slopes[:, None] * (offsets - (extent[:, None] - 1) / 2.0)
    weights = np.where(offsets < extent[:, None], np.maximum(weights, 0.0), 0.0)
    cumulative = np.cumsum(weights, axis=1)
    target = uniforms * cumulative[:, -1]
    return np.minimum((cumulative <= target[:, None]).sum(axis=1), extent - 1)


def read_npz(path: Path) -> Dict[str, np.ndarray]:
    """All members of an uncompressed .npz (what :meth:`SamplingMap.save` writes) as read-only arrays.

    One read of the file and views into it: about 4x faster than ``np.load`` for a map (no per-member zip stream,
    no CRC pass), which matters because the training loader reads one map per patch. Compressed members, and
    anything this reader does not expect, go through ``np.load``.
    """
    buffer = Path(path).read_bytes()
    members: Dict[str, np.ndarray] = {}
    with zipfile.ZipFile(io.BytesIO(buffer)) as archive:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                with np.load(path) as data:
                    return {name: data[name] for name in data.files}
            offset = info.header_offset
            name_length, extra_length = struct.unpack("<HH", buffer[offset + 26:offset + 30])
            start = offset + 30 + name_length + extra_length
            stream = io.BytesIO(buffer[start:start + min(info.file_size, 65536)])
            version = np.lib.format.read_magic(stream)
            shape, fortran_order, dtype = (np.lib.format.read_array_header_1_0(stream) if version == (1, 0)
                                           else np.lib.format.read_array_header_2_0(stream))
            count = int(np.prod(shape))
            if fortran_order or dtype.hasobject or stream.tell() + count * dtype.itemsize > info.file_size:
                raise ValueError(f"member {info.filename} is not a plain C-ordered array")
            members[info.filename[:-4]] = np.frombuffer(buffer, dtype, count, start + stream.tell()).reshape(shape)
    return members


@dataclass
class SamplingMap:
    """A PSM (AG-CRC Eq. 6) on a grid of ``shape`` voxels, stored on cells of ``cell_size`` voxels.

    ``organ_gain``/``tumor_gain``: mean gain ``g`` per voxel of each cell (Eq. 1), shape
    ``ceil(shape / cell_size)``; ``organ_total``/``tumor_total``: ``G = sum_i g_i`` over the grid.
    A map without tumor has ``tumor_gain = None`` and is ``S_organ`` alone.
    """

    shape: Shape3
    cell_size: Shape3
    patch_size: Shape3
    organ_gain: np.ndarray
    organ_total: float
    tumor_gain: Optional[np.ndarray] = None
    tumor_total: float = 0.0
    tumor_weight: float = TUMOR_SHARE  # AG-CRC Eq. 6, lambda
    mu: float = MU  # AG-CRC Eq. 4
    sigma_fraction: float = SIGMA_FRACTION  # AG-CRC Eq. 2
    _cumulative: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.shape))

    @property
    def has_tumor(self) -> bool:
        return self.tumor_gain is not None and self.tumor_total > 0

    def component_weights(self) -> Tuple[float, float, float]:
        """Probabilities of (organ gain, tumor gain, uniform) in the mixture that equals Eq. 6.

        ``S_x = a_x * g_x / G_x + (1 - a_x) * uniform`` with ``a_x = (G_x/mu) / (G_x/mu + 1)`` (Eq. 4-5).
        """
        lam = self.tumor_weight if self.has_tumor else 0.0  # no tumor: S_final = S_organ
        a_organ = (self.organ_total / self.mu) / (self.organ_total / self.mu + 1.0)
        a_tumor = (self.tumor_total / self.mu) / (self.tumor_total / self.mu + 1.0) if self.has_tumor else 0.0
        organ, tumor = (1.0 - lam) * a_organ, lam * a_tumor
        return organ, tumor, 1.0 - organ - tumor

    def cell_voxel_counts(self) -> np.ndarray:
        """Voxels per cell, shape of the coarse grid."""
        z, y, x = cell_extents(self.shape, self.cell_size)
        return z[:, None, None] * y[None, :, None] * x[None, None, :]

    def cell_probabilities(self) -> np.ndarray:
        """Probability of each cell (sum of ``S_final`` over its voxels), shape of the coarse grid."""
        organ, tumor, uniform = self.component_weights()
        counts = self.cell_voxel_counts()
        result = uniform * counts / self.n_voxels
        if organ > 0:
            result = result + organ * self.organ_gain * counts / self.organ_total
        if tumor > 0:
            result = result + tumor * self.tumor_gain * counts / self.tumor_total
        return result

    def probabilities(self) -> np.ndarray:
        """Dense ``S_final`` (Eq. 6) at full resolution as sampled by :meth:`draw`, shape ``shape``, float64.

        Sums to 1; for tests and small grids (it allocates several full-resolution arrays).
        """
        organ, tumor, uniform = self.component_weights()
        dense = np.full(self.shape, uniform / self.n_voxels)
        for weight, gain, total in ((organ, self.organ_gain, self.organ_total),
                                    (tumor, self.tumor_gain, self.tumor_total)):
            if weight > 0:
                dense += (weight / total) * self._dense_gain(gain)
        return dense

    def _dense_gain(self, gain: np.ndarray) -> np.ndarray:
        """Within-cell first-order model of ``g`` at full resolution (see :func:`within_cell_slopes`)."""
        dense = _expand(gain.astype(np.float64), self.cell_size, self.shape)
        everywhere = np.indices(gain.shape).reshape(3, -1).T
        for axis in range(3):
            if self.cell_size[axis] == 1:
                continue
            slopes = within_cell_slopes(gain, everywhere, axis, self.cell_size[axis]).reshape(gain.shape)
            position = np.arange(self.shape[axis])
            offset = position % self.cell_size[axis]
            extent = np.minimum(self.cell_size[axis], self.shape[axis] - (position - offset))
            along = [1, 1, 1]
            along[axis] = -1
            factor = 1.0 + _expand(slopes, self.cell_size, self.shape) * (offset - (extent - 1) / 2.0).reshape(along)
            dense *= factor
        return dense

    def _row_cumulative_mass(self, which: str) -> np.ndarray:
        """Cumulative mass ``g * voxels`` of the (z, y) rows of cells, flat (Zc * Yc,); cached.

        Two-level inverse CDF: a row first (a matrix-vector product and a short cumsum), then a cell in the row;
        about 10x cheaper than a cumsum over all cells, which matters as the loader reads one map per patch.
        """
        if which not in self._cumulative:
            gain = self.organ_gain if which == "organ" else self.tumor_gain
            z, y, x = cell_extents(self.shape, self.cell_size)
            rows = gain.reshape(-1, gain.shape[2]) @ x.astype(gain.dtype)
            self._cumulative[which] = np.cumsum(rows * np.outer(z, y).ravel(), dtype=np.float64)
        return self._cumulative[which]

    def _draw_from_gain(self, which: str, uniforms: np.ndarray) -> np.ndarray:
        """Cells by mass ``g * voxels``, then a voxel inside by the first-order model; uniforms (k, 4) -> (k, 3)."""
        gain = self.organ_gain if which == "organ" else self.tumor_gain
        rows_cumulative = self._row_cumulative_mass(which)
        target = uniforms[:, 0] * rows_cumulative[-1]
        rows = np.minimum(np.searchsorted(rows_cumulative, target, side="right"), rows_cumulative.size - 1)
        before = np.where(rows > 0, rows_cumulative[np.maximum(rows - 1, 0)], 0.0)
        z, y, x = cell_extents(self.shape, self.cell_size)
        row_z, row_y = np.unravel_index(rows, gain.shape[:2])
        mass = gain.reshape(-1, gain.shape[2])[rows] * x * (z[row_z] * y[row_y])[:, None]  # (k, Xc)
        cells_x = (np.cumsum(mass, axis=1) <= (target - before)[:, None]).sum(axis=1)
        last_with_mass = gain.shape[2] - 1 - np.argmax(mass[:, ::-1] > 0, axis=1)  # round-off guard
        index = np.stack([row_z, row_y, np.minimum(cells_x, last_with_mass)], axis=1)
        start = index * np.asarray(self.cell_size)
        extent = np.minimum(np.asarray(self.cell_size), np.asarray(self.shape) - start)
        centres = start.copy()
        for axis in range(3):
            cell = self.cell_size[axis]
            if cell == 1:
                continue
            slopes = within_cell_slopes(gain, index, axis, cell)
            centres[:, axis] += _draw_offsets(slopes, extent[:, axis], cell, uniforms[:, 1 + axis])
        return centres

    def draw(self, rng: RandomSource = None, count: int = 1) -> np.ndarray:
        """Draw ``count`` patch centres from ``S_final``: int64 array (count, 3) of (z, y, x) voxel indices.

        ``rng``: a numpy Generator/RandomState, or None for numpy's global state (what nnU-Net's loader uses).
        """
        organ, tumor, _ = self.component_weights()
        uniforms = uniform_numbers(rng, (count, 5))
        centres = np.floor(uniforms[:, 2:] * np.asarray(self.shape)).astype(np.int64)  # uniform component
        pick_organ = uniforms[:, 0] < organ
        pick_tumor = (uniforms[:, 0] >= organ) & (uniforms[:, 0] < organ + tumor)
        if pick_organ.any():
            centres[pick_organ] = self._draw_from_gain("organ", uniforms[pick_organ, 1:])
        if pick_tumor.any():
            centres[pick_tumor] = self._draw_from_gain("tumor", uniforms[pick_tumor, 1:])
        return np.minimum(centres, np.asarray(self.shape) - 1)

    def matches(self, shape: Sequence[int], patch_size: Sequence[int], tumor_weight: float = TUMOR_SHARE,
                mu: float = MU, sigma_fraction: float = SIGMA_FRACTION) -> bool:
        """True if this map was computed for this grid, patch size and parameters (False: stale)."""
        return (tuple(self.shape) == tuple(int(v) for v in shape)
                and tuple(self.patch_size) == tuple(int(v) for v in patch_size)
                and math.isclose(self.tumor_weight, tumor_weight) and math.isclose(self.mu, mu)
                and math.isclose(self.sigma_fraction, sigma_fraction))

    def save(self, path: Path) -> Path:
        """Write an .npz atomically (temporary file in the same folder, then rename).

        Two members, ``header`` (float64, fields :data:`HEADER_FIELDS`) and ``gains`` (float32: the organ gain, then
        the tumor gain, each cropped to its non-zero box): the training loader reads one map per patch, and every
        member costs a zip lookup.
        """
        header = {"format_version": FILE_FORMAT_VERSION, "shape": self.shape, "cell_size": self.cell_size,
                  "patch_size": self.patch_size, "organ_total": self.organ_total, "tumor_total": self.tumor_total,
                  "tumor_weight": self.tumor_weight, "mu": self.mu, "sigma_fraction": self.sigma_fraction}
        blobs = []
        for name, gain in (("organ", self.organ_gain), ("tumor", self.tumor_gain)):
            box = None if gain is None else bounding_box(gain)
            header[f"{name}_origin"] = (-1, -1, -1) if box is None else tuple(b.start for b in box)
            header[f"{name}_box"] = (0, 0, 0) if box is None else tuple(b.stop - b.start for b in box)
            if box is not None:
                blobs.append(gain[box].ravel())
        values = np.concatenate([np.atleast_1d(np.asarray(header[name], np.float64)) for name in HEADER_FIELDS])
        gains = np.concatenate(blobs).astype(np.float32) if blobs else np.zeros(0, np.float32)
        with atomic_path(Path(path), suffix=".npz") as temporary:
            with open(temporary, "wb") as handle:
                np.savez(handle, header=values, gains=gains)
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> "SamplingMap":
        """Read a map written by :meth:`save`; a clear error for a missing, corrupt or foreign file."""
        path = Path(path)
        try:
            members = read_npz(path)
            values, blob = members["header"], members["gains"]
            header, position = {}, 0
            for name in HEADER_FIELDS:
                width = 3 if name in _TRIPLE_FIELDS else 1
                header[name] = values[position:position + width]
                position += width
            if int(header["format_version"][0]) != FILE_FORMAT_VERSION:
                raise ValueError(f"format version {int(header['format_version'][0])}, expected {FILE_FORMAT_VERSION}")
            shape, cells, patch = (tuple(int(v) for v in header[name]) for name in ("shape", "cell_size", "patch_size"))
            coarse_shape = tuple(-(-s // c) for s, c in zip(shape, cells))
            gains, start = [], 0
            for name in ("organ", "tumor"):
                origin, box = header[f"{name}_origin"].astype(int), header[f"{name}_box"].astype(int)
                if origin[0] < 0:
                    gains.append(None)
                    continue
                gain = np.zeros(coarse_shape, np.float32)
                size = int(np.prod(box))
                gain[tuple(slice(o, o + n) for o, n in zip(origin, box))] = blob[start:start + size].reshape(box)
                start += size
                gains.append(gain)
            if start != blob.size:
                raise ValueError(f"{blob.size} gain values, the header describes {start}")
        except FileNotFoundError:
            raise
        except Exception as error:  # zipfile.BadZipFile, KeyError, ValueError, ...
            raise ValueError(f"sampling map {path} is not a readable PSM file: {error}") from error
        scalars = {name: float(header[name][0]) for name in ("organ_total", "tumor_total", "tumor_weight", "mu",
                                                            "sigma_fraction")}
        return cls(shape=shape, cell_size=cells, patch_size=patch, organ_gain=gains[0], tumor_gain=gains[1],
                   **scalars)


def _check_masks(ooi: np.ndarray, tumor: Optional[np.ndarray]) -> None:
    if ooi.ndim != 3:
        raise ValueError(f"OOI mask must be 3D (Z, Y, X), got shape {ooi.shape}")
    if tumor is not None and tumor.shape != ooi.shape:
        raise ValueError(f"tumor mask shape {tumor.shape} differs from OOI mask shape {ooi.shape}")


def compute_sampling_map(ooi: np.ndarray, tumor: Optional[np.ndarray], patch_size: Sequence[int],
                         tumor_weight: float = TUMOR_SHARE, mu: float = MU,
                         cell_size: Optional[Sequence[int]] = None,
                         sigma_fraction: float = SIGMA_FRACTION) -> SamplingMap:
    """PSM of AG-CRC Eq. 1-6 for one case.

    ooi, tumor: (Z, Y, X) masks (non-zero = inside) on the preprocessed grid; ``tumor`` None or empty gives
    ``S_final = S_organ``; an empty OOI gives a uniform ``S_organ`` (Eq. 4 with g = 0) and a warning.
    patch_size: training patch (Z, Y, X) in voxels; cell_size: coarse cells, default :func:`default_cell_size`.
    """
    _check_masks(ooi, tumor)
    patch = _as_shape3(patch_size, "patch_size")
    cells = _as_shape3(cell_size if cell_size is not None else default_cell_size(patch, sigma_fraction), "cell_size")
    cells = tuple(min(c, s) for c, s in zip(cells, ooi.shape))
    shape = tuple(int(s) for s in ooi.shape)

    def gain_and_total(mask: np.ndarray) -> Tuple[np.ndarray, float]:
        gain = coarse_gain(mask, patch, cells, sigma_fraction)
        z, y, x = cell_extents(shape, cells)
        total = float(np.einsum("zyx,z,y,x->", gain, z.astype(float), y.astype(float), x.astype(float)))
        return gain.astype(np.float32), total

    organ_gain, organ_total = gain_and_total(ooi)
    if organ_total <= 0:
        warnings.warn("OOI mask is empty: S_organ is uniform (AG-CRC Eq. 4 with g = 0)", stacklevel=2)
    tumor_gain, tumor_total = (None, 0.0)
    if tumor is not None and np.any(tumor):
        tumor_gain, tumor_total = gain_and_total(tumor)
    return SamplingMap(shape=shape, cell_size=cells, patch_size=patch, organ_gain=organ_gain,
                       organ_total=organ_total, tumor_gain=tumor_gain, tumor_total=tumor_total,
                       tumor_weight=float(tumor_weight), mu=float(mu), sigma_fraction=float(sigma_fraction))
