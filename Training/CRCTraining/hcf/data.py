"""HCF training data: CT volumes and label maps (or CARE slices) as slices, the case split, the engine's view.

Label maps ``labels/<case>.nii.gz`` beside ``images/<case>[_0000].nii.gz`` (tumor = label > 0 or
``tumor_label``), axial slices along ``Image.axial_axis`` (as inference cuts them), or a
folder of CARE ``.npz`` slices. Cross-validation by case (Sec. 4.1, five folds at the patient level):
``split_cases`` sorts the cases and deals them into ``folds`` groups by a permutation drawn from
``split_seed``, so every stage and every fold sees the same split; fold F trains on the others and
validates on F. ``fold=None`` trains on every case without validation (nor early stopping).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from CRCTraining.hcf.augment import AugmentationSettings, augment_slice
from CRCTraining.hcf.settings import HCFTrainingSettings
from CRCTraining.hcf.slices import SliceDataset, SliceRecord
from OrganGuidanceLib.case_folders import pair_images_and_labels
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.validation import InputError, check_ct, check_label_map


def paired_volume_files(images: Path, labels: Path, roles: Tuple[str, str] = ("--images", "--labels")
                        ) -> List[Tuple[str, Path, Path]]:
    """(case, image, label) for every label map ``labels/<case>.<ext>`` with ``images/<case>[_0000].<ext>``.

    Hidden files (the MSD archives' ``._*``) are ignored; an image without a label map, or a label map
    without an image, is refused with the names (``OrganGuidanceLib.case_folders``), as ``prepare`` does.
    ``roles``: the two folders' names in messages (the command's options).
    """
    pairs = pair_images_and_labels(images, labels, *roles)
    return [(pair.case, pair.image, pair.label) for pair in pairs]


def read_volumes(images: Path, labels: Path, roles: Tuple[str, str] = ("--images", "--labels")
                 ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Every case's CT and label array with the axial axis first (``Image.axial_axis``, as inference slices)."""
    volumes: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    for case, image_path, label_path in paired_volume_files(images, labels, roles):
        ct, label = read_image(image_path), read_image(label_path)
        check_ct(ct)
        check_label_map(label)
        if not ct.same_grid(label):
            raise InputError(f"{label_path}: not on the grid of its CT {image_path}")
        axis = ct.axial_axis
        volumes[case] = (np.moveaxis(ct.array, axis, 0), np.moveaxis(label.array, axis, 0))
    return volumes


def load_slices(settings: HCFTrainingSettings, roles: Tuple[str, str] = ("--images", "--labels")) -> SliceDataset:
    """The settings' slice data: volumes (``images`` + ``labels``) or CARE slices (``npz``); ``roles``: the
    volume folders' names in messages."""
    if settings.npz is not None:
        if settings.images is not None or settings.labels is not None:
            raise InputError("HCF training: give either --npz DIR or --images DIR --labels DIR, not both")
        if not Path(settings.npz).is_dir():
            raise InputError(f"--npz {settings.npz}: " + ("is a file; give the folder of .npz slices (crcseg "
                             "usam-slices)" if Path(settings.npz).exists() else "does not exist"))
        return SliceDataset.from_npz_folder(Path(settings.npz), settings.slice_config())
    if settings.images is None or settings.labels is None:
        raise InputError("HCF training: give --images DIR and --labels DIR (or --npz DIR)")
    return SliceDataset(read_volumes(settings.images, settings.labels, roles), settings.slice_config(),
                        settings.tumor_label)


def split_cases(cases: Sequence[str], folds: int, seed: int = 0) -> List[List[str]]:
    """Cases dealt into ``folds`` groups (sizes differ by at most one), by a permutation of the sorted names."""
    names = sorted(set(str(c) for c in cases))
    if folds < 1:
        raise InputError(f"HCF training: folds must be at least 1, got {folds}")
    if len(names) < folds:
        raise InputError(f"HCF training: {len(names)} cases cannot be split into {folds} folds; use --folds "
                         f"{max(1, len(names))} or fewer (or --fold all)")
    order = np.random.default_rng([int(seed), 17]).permutation(len(names))
    return [sorted(names[int(i)] for i in part) for part in np.array_split(order, folds)]


def fold_cases(cases: Sequence[str], fold: Optional[int], folds: int, seed: int = 0) -> Tuple[List[str], List[str]]:
    """(training cases, validation cases) of ``fold``; ``fold=None``: every case trains, none validates."""
    names = sorted(set(str(c) for c in cases))
    if fold is None:
        return names, []
    if folds < 2:
        raise InputError(f"HCF training: fold {fold} needs at least 2 folds, got {folds} (or use --fold all)")
    if not 0 <= int(fold) < folds:
        raise InputError(f"HCF training: fold {fold} is not in 0..{folds - 1}")
    groups = split_cases(names, folds, seed)
    validation = groups[int(fold)]
    return [c for c in names if c not in validation], validation


class EngineSlices(torch.utils.data.Dataset):
    """The slices ``indices`` of a ``SliceDataset``, by engine key ``(i, sample seed)`` or plain ``i``.

    With a seed and augmentation, the item is augmented (``augment``) from that seed; an abnormal
    slice whose tumor the geometric augmentation moved out of view counts as normal.
    """

    def __init__(self, base: SliceDataset, indices: Sequence[int],
                 augmentation: Optional[AugmentationSettings] = None) -> None:
        self.base, self.indices, self.augmentation = base, [int(i) for i in indices], augmentation
        self.records: List[SliceRecord] = [base.records[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        item = self.base[self.indices[int(index)]]
        if seed is not None and self.augmentation is not None:
            label = item["label"].numpy()
            image, moved = augment_slice(item["image"].numpy(), label, np.random.default_rng(int(seed)),
                                         self.augmentation)
            item["image"], item["label"] = torch.from_numpy(image), torch.from_numpy(moved.astype(np.int64))
            item["abnormal"] = int(bool(item["abnormal"]) and (bool(moved.any()) or not label.any()))
        return item


def batches(dataset: torch.utils.data.Dataset, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    """The slices in order, unshuffled: for validation."""
    return torch.utils.data.DataLoader(dataset, batch_size=max(1, int(batch_size)), shuffle=False,
                                       num_workers=int(workers))
