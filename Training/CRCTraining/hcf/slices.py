"""HCF / SANet 2D slice data: preprocessing, slice records and the balance-sampling strategy (BSS).

Paper: Shi et al., "Automatic GTV segmentation with a heterogeneous cascade framework (HCF) and
SANet" (/work/shared/papers/HCF_SANet_GTV_decoupling.txt).

- Preprocessing (Sec. 4.2, implementation details): foreground mask by thresholding, keep the largest
  connected region, crop to its bounding box (the public code adds a margin), resize to 512 x 512.
- Slices (Sec. 3.1, Sec. 4.1 / Table 1): an *abnormal* slice holds visible GTV, a *normal* one none.
  The slice classifier learns abnormal vs normal; SANet segments the GTV in abnormal slices.
- BSS (Sec. 3.4, Table 3): random undersampling of the normal slices to a fixed ratio to the abnormal
  ones. theta_0: abnormal only; theta_1, theta_2, theta_4: 1, 2, 4 normal slices per abnormal slice;
  theta_n: all slices (the original ratio).

Arrays are numpy ``(z, y, x)``; an axial slice is ``volume[k]`` (array axis 0). The preprocessing
(``SliceDatasetConfig``, ``body_box``, ``to_network_input``, ``label_to_input``) is inference code too and
lives in ``CRCSegmentationLib.hcf.preprocessing``; it is imported from there and re-exported here.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from CRCSegmentationLib.hcf.preprocessing import (  # noqa: F401 - re-exported: the slice preprocessing lives in the Lib
    Box,
    SliceDatasetConfig,
    body_box,
    input_to_slice,
    label_to_input,
    to_network_input,
)
from OrganGuidanceLib.io import image_suffix, read_image
from OrganGuidanceLib.validation import InputError

Ratio = Union[int, str]
ALL_SLICES = "n"  # theta_n
CARE_TUMOR = 2  # CARE npz labels: 0 background, 1 normal rectum, 2 tumor


# --- slice records -------------------------------------------------------------------

@dataclass(frozen=True)
class SliceRecord:
    """One axial slice: its case, index along array axis 0, and whether it holds tumor (GTV)."""

    case: str
    index: int
    abnormal: bool


def _tumor_mask(label: np.ndarray, tumor_label: Optional[int]) -> np.ndarray:
    label = np.asarray(label)
    return label > 0 if tumor_label is None else label == tumor_label


def slice_records(volume_labels: Dict[str, np.ndarray], tumor_label: Optional[int] = None) -> List[SliceRecord]:
    """All axial slices of ``(z, y, x)`` label volumes; abnormal = holds tumor (label > 0, or == ``tumor_label``)."""
    records: List[SliceRecord] = []
    for case, label in volume_labels.items():
        label = np.asarray(label)
        if label.ndim != 3:
            raise InputError(f"case {case}: a 3D (z, y, x) label volume is needed, got shape {label.shape}")
        present = _tumor_mask(label, tumor_label).reshape(label.shape[0], -1).any(axis=1)
        records.extend(SliceRecord(str(case), int(k), bool(present[k])) for k in range(label.shape[0]))
    return records


# --- balance sampling ----------------------------------------------------------------

def _check_ratio(ratio: Ratio) -> Ratio:
    if isinstance(ratio, str):
        if ratio.lower() != ALL_SLICES:
            raise ValueError(f"BSS ratio {ratio!r}: use 0, 1, 2, 4 (normal per abnormal slice) or 'n' (all slices)")
        return ALL_SLICES
    if isinstance(ratio, bool) or not isinstance(ratio, (int, np.integer)) or ratio < 0:
        raise ValueError(f"BSS ratio {ratio!r}: use 0, 1, 2, 4 (normal per abnormal slice) or 'n' (all slices)")
    return int(ratio)


class BalanceSampler(torch.utils.data.Sampler):
    """Balance-sampling strategy (paper Sec. 3.4, Table 3) over ``SliceRecord`` s.

    ``ratio``: 0 -> theta_0 (abnormal slices only; meant for SANet), 1 / 2 / 4 -> theta_1 / theta_2 /
    theta_4 (that many randomly drawn normal slices per abnormal slice), ``"n"`` -> theta_n (all
    slices). Every epoch holds every abnormal slice once and exactly ``ratio x #abnormal`` distinct
    normal slices; if fewer normal slices exist, all are taken (with a warning).

    ``per_epoch``: the paper says BSS achieves "dynamic adjustment of the data ratio by randomly
    undersampling the normal slice set" (Sec. 3.4). "Dynamic" most naturally reads as redrawing the
    normal subset during training (``per_epoch=True``: a new subset each epoch, from ``seed`` and the
    epoch), but the paper never says so; it may as well mean that the ratio is adjustable. The public
    code draws the subset once before training (``per_epoch=False``, the default here, as it produced
    Table 3): the same subset every epoch, only the order is reshuffled.

    Iteration yields record indices in a shuffled order that is a pure function of ``(seed, epoch)``;
    call ``set_epoch(e)`` before each epoch (as with ``DistributedSampler``). ``epoch_indices(epoch)``
    gives the epoch's list so that a distributed sampler can split it across ranks.
    """

    def __init__(self, records: Sequence[SliceRecord], ratio: Ratio, seed: int = 0, per_epoch: bool = False) -> None:
        super().__init__()
        self.ratio = _check_ratio(ratio)
        self.seed, self.per_epoch, self.epoch = int(seed), bool(per_epoch), 0
        self.abnormal = [i for i, record in enumerate(records) if record.abnormal]
        self.normal = [i for i, record in enumerate(records) if not record.abnormal]
        self.num_records = len(records)
        if self.ratio == ALL_SLICES:
            self.num_normal = len(self.normal)
        else:
            wanted = self.ratio * len(self.abnormal)
            self.num_normal = min(wanted, len(self.normal))
            if wanted > len(self.normal):
                warnings.warn(f"balance sampling theta_{self.ratio}: {wanted} normal slices asked for "
                              f"({self.ratio} per abnormal slice x {len(self.abnormal)}), only {len(self.normal)} "
                              "exist; taking all of them", RuntimeWarning, stacklevel=2)
        if not self.abnormal:
            warnings.warn("balance sampling: no abnormal (tumor) slices", RuntimeWarning, stacklevel=2)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose subset (``per_epoch=True``) and order ``__iter__`` yields."""
        self.epoch = int(epoch)

    def normal_subset(self, epoch: int) -> List[int]:
        """The epoch's normal slices (record indices, sorted); the same for every epoch if not ``per_epoch``."""
        if self.num_normal == len(self.normal):
            return list(self.normal)
        draw = np.random.default_rng([self.seed, int(epoch) if self.per_epoch else 0, 0])
        chosen = draw.choice(len(self.normal), size=self.num_normal, replace=False)
        return sorted(self.normal[int(i)] for i in chosen)

    def epoch_indices(self, epoch: int) -> List[int]:
        """All record indices of ``epoch`` (abnormal + drawn normal, no duplicates), shuffled by ``(seed, epoch)``."""
        indices = np.asarray(self.abnormal + self.normal_subset(epoch), dtype=np.int64)
        order = np.random.default_rng([self.seed, int(epoch), 1]).permutation(len(indices))
        return [int(i) for i in indices[order]]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices(self.epoch))

    def __len__(self) -> int:
        return len(self.abnormal) + self.num_normal


# --- dataset -------------------------------------------------------------------------

def _case_name(path: Path) -> str:
    suffix = image_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.stem


class SliceDataset(torch.utils.data.Dataset):
    """Axial CT slices for the HCF slice classifier and SANet (paper Sec. 3.1, 4.2).

    Item: ``image`` (1, S, S) float32 in [0, 1], ``label`` (S, S) int64 tumor mask (1 GTV, 0 else),
    ``abnormal`` 0/1, ``case``, ``index`` (slice along array axis 0). ``records[i]`` describes item ``i``;
    pass ``records`` to ``BalanceSampler``.
    """

    def __init__(self, volumes: Dict[str, Tuple[np.ndarray, np.ndarray]],
                 config: Optional[SliceDatasetConfig] = None, tumor_label: Optional[int] = None) -> None:
        self.config = config or SliceDatasetConfig()
        self.tumor_label = tumor_label
        self._volumes: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        for case, (ct, label) in volumes.items():
            ct, label = np.asarray(ct), np.asarray(label)
            if ct.ndim != 3 or ct.shape != label.shape:
                raise InputError(f"case {case}: CT {ct.shape} and label {label.shape} must be equal 3D (z, y, x) shapes")
            self._volumes[str(case)] = (ct, _tumor_mask(label, tumor_label).astype(np.uint8))
        self.records = slice_records({case: mask for case, (_, mask) in self._volumes.items()}, tumor_label=1)
        self._npz = None  # set by from_npz_folder

    @classmethod
    def from_files(cls, images: List[Path], labels: List[Path], config: Optional[SliceDatasetConfig] = None,
                   tumor_label: Optional[int] = None) -> "SliceDataset":
        """CT and label volumes from files (``OrganGuidanceLib.io.read_image``); case = the image file's name."""
        if len(images) != len(labels):
            raise InputError(f"{len(images)} images but {len(labels)} labels")
        volumes: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        for image_path, label_path in zip(images, labels):
            ct, label = read_image(image_path), read_image(label_path)
            if not ct.same_grid(label):
                raise InputError(f"{label_path}: not on the grid of {image_path}")
            case = _case_name(Path(image_path))
            if case in volumes:
                raise InputError(f"case {case}: given twice")
            volumes[case] = (ct.array, label.array)
        return cls(volumes, config, tumor_label)

    @classmethod
    def from_npz_folder(cls, folder: Path, config: Optional[SliceDatasetConfig] = None) -> "SliceDataset":
        """CARE-layout ``<case>_<slice>.npz`` files (``image`` HU, ``label`` 0/1/2); abnormal = has label 2.

        Reads with the project's CARE reader (``CRCTraining.usam.data.USAMSliceDataset.load``: checks,
        labels above 2 count as tumor, as the public loader does).
        """
        from CRCTraining.usam.data import PromptSettings, USAMSliceDataset

        config = config or SliceDatasetConfig()
        reader = USAMSliceDataset(Path(folder), config.size, config.hu_window, PromptSettings(),
                                  intensity="hu", augmentation=False)
        dataset = cls({}, config, tumor_label=CARE_TUMOR)
        records = []
        for i, path in enumerate(reader.files):
            case, _, number = path.stem.rpartition("_")
            index = int(number) if number.isdigit() else i
            _, label = reader.load(i)
            records.append(SliceRecord(case or path.stem, index, bool((label == CARE_TUMOR).any())))
        dataset.records, dataset._npz = records, reader
        return dataset

    def __len__(self) -> int:
        return len(self.records)

    def slice(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """Item ``i`` before preprocessing: HU slice and tumor mask (0/1), rows x cols."""
        if self._npz is not None:
            image, label = self._npz.load(int(i))
            return image, (label == CARE_TUMOR).astype(np.uint8)
        record = self.records[int(i)]
        ct, mask = self._volumes[record.case]
        return ct[record.index], mask[record.index]

    def __getitem__(self, i: int) -> dict:
        record = self.records[int(i)]
        hu, mask = self.slice(int(i))
        image, box = to_network_input(hu, self.config)
        label = label_to_input(mask, box, self.config.size)
        return {"image": torch.from_numpy(image[None].copy()),
                "label": torch.from_numpy(label.astype(np.int64)),
                "abnormal": int(record.abnormal), "case": record.case, "index": record.index}
