"""FLARE24 class-first patch sampling (FLARE24 §2.2; DESIGN.md "Facts for the three remaining methods").

For every patch of a batch (training and validation alike, as nnU-Net samples both the same way):

1. a class c is drawn among the foreground classes with probability w_c / Σ w (1 per organ, 5 for the tumour:
   with 13 organs the tumour gets 5/18 ≈ 0.28 of the patches);
2. a case is drawn uniformly among the cases that contain c;
3. the patch is centred on one of that case's stored voxels of c (nnU-Net's ``class_locations``), uniformly:
   every sample is foreground-forced.

So P(c, case) = w_c / Σ w · 1 / n_c, with n_c the number of cases that contain c. nnU-Net's own sampling differs
in order: it draws the case uniformly, then (for the oversampled share of the batch) a class uniformly among that
case's classes.

How it sits in nnU-Net v2 (2.8.1): :class:`ClassFirstDataLoader` is nnU-Net's ``nnUNetDataLoader`` with two
methods changed, ``get_indices`` (step 1 and 2; nnU-Net draws cases uniformly there) and ``get_bbox`` (step 3:
nnU-Net's own ``get_bbox`` with ``force_fg=True`` and ``overwrite_class=c``, so the voxel comes from nnU-Net's
``class_locations`` as in its foreground oversampling). The per-class case lists travel with the dataset
(:class:`ClassFirstDataset`, nnU-Net's dataset classes otherwise unchanged), and come from the cases'
``class_locations`` (stored in the ``.pkl`` next to each case; summarised once in
``flare24_class_first/class_presence.json``).
Loading, cropping, augmentation, multi-process loading and DDP are nnU-Net's.
"""
from __future__ import annotations

import json
import sys
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, nnUNetDatasetNumpy

from CRCTraining.flare24.class_weights import OTHER_WEIGHT, TUMOR_CLASS_WEIGHT, class_weights, segmentation_labels
from OrganGuidanceLib.atomic import write_text_atomic

# <preprocessed configuration folder>/flare24_class_first/class_presence.json: in a subfolder, because nnU-Net's
# infer_dataset_class refuses a configuration folder with files of more than one ending (besides .pkl/.npy)
PRESENCE_DIRNAME = "flare24_class_first"
PRESENCE_FILENAME = "class_presence.json"
PRESENCE_VERSION = 1

Presence = Dict[str, Dict[int, int]]  # case -> {label: number of stored class_locations voxels}


# --- which case contains which class -----------------------------------------------------------------------------
def _properties_file(folder: Path, identifier: str) -> Path:
    return Path(folder) / f"{identifier}.pkl"  # nnUNetDatasetBlosc2 and nnUNetDatasetNumpy both keep it there


def _stamp(path: Path) -> List[int]:
    status = path.stat()
    return [int(status.st_mtime_ns), int(status.st_size)]


def case_presence(properties: Mapping) -> Dict[int, int]:
    """``{label: stored voxels}`` of the labels with at least one voxel in nnU-Net's ``class_locations``
    (integer keys only: the ignore-label "annotated" key is a tuple and no class of its own)."""
    locations = properties.get("class_locations") or {}
    return {int(k): int(len(v)) for k, v in locations.items()
            if not isinstance(k, tuple) and v is not None and len(v) > 0}


def presence_path(folder: Path) -> Path:
    """Where the class-presence summary of a preprocessed configuration folder lives."""
    return Path(folder) / PRESENCE_DIRNAME / PRESENCE_FILENAME


def class_presence(folder: Path, identifiers: Sequence[str], write: bool = True) -> Presence:
    """Classes present in each case, from the summary (:func:`presence_path`) where its entry matches the case's ``.pkl``
    (modification time and size), else read from the ``.pkl``; ``write``: store the updated summary (rank 0)."""
    from batchgenerators.utilities.file_and_folder_operations import load_pickle

    folder = Path(folder)
    summary_path = presence_path(folder)
    stored: dict = {}
    if summary_path.exists():
        try:
            content = json.loads(summary_path.read_text())
            if content.get("version") == PRESENCE_VERSION:
                stored = content.get("cases", {})
        except (OSError, ValueError) as error:
            warnings.warn(f"{summary_path} is not readable ({error}); reading every case's class_locations",
                          stacklevel=2)
    presence: Presence = {}
    changed = False
    for identifier in identifiers:
        pkl = _properties_file(folder, identifier)
        if not pkl.exists():
            raise FileNotFoundError(f"case {identifier}: no {pkl.name} in {folder} (nnU-Net's preprocessed "
                                    f"properties with class_locations); rerun nnU-Net preprocessing")
        stamp = _stamp(pkl)
        entry = stored.get(identifier)
        if entry is None or entry.get("stamp") != stamp:
            entry = {"stamp": stamp, "classes": {str(k): v for k, v in case_presence(load_pickle(str(pkl))).items()}}
            stored[identifier] = entry
            changed = True
        presence[identifier] = {int(k): int(v) for k, v in entry["classes"].items()}
    if write and changed:
        write_text_atomic(summary_path, json.dumps({"version": PRESENCE_VERSION, "cases": stored}, sort_keys=True))
    return presence


# --- step 1 and 2: class, then case ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassFirstIndex:
    """The classes that can be drawn, their probabilities (w_c / Σ w over them), and the cases containing each."""

    classes: Tuple[int, ...]
    probabilities: np.ndarray
    cases: Dict[int, Tuple[str, ...]]

    @classmethod
    def build(cls, weights: Mapping[int, float], presence: Mapping[str, Mapping[int, int]],
              identifiers: Sequence[str]) -> "ClassFirstIndex":
        """``weights``: label -> sampling weight (foreground labels; background is never a patch class).
        A class that no case contains is left out (with a warning) and the others renormalised."""
        cases = {int(c): tuple(sorted(i for i in identifiers if presence.get(i, {}).get(int(c), 0) > 0))
                 for c, w in weights.items() if int(c) != 0 and w > 0}
        missing = sorted(c for c, found in cases.items() if not found)
        if missing:
            warnings.warn(f"class-first sampling: no case contains class(es) {missing}; sampling the others",
                          stacklevel=2)
        classes = tuple(sorted(c for c, found in cases.items() if found))
        if not classes:
            raise ValueError(f"class-first sampling: none of the {len(identifiers)} cases contains a foreground "
                             f"class with a weight > 0 (weights {dict(weights)})")
        raw = np.asarray([float(weights[c]) for c in classes])
        return cls(classes, raw / raw.sum(), {c: cases[c] for c in classes})

    def draw(self, count: int) -> Tuple[List[int], List[str]]:
        """``count`` (class, case) pairs: class by w_c / Σ w, then a case uniformly among those containing it.
        numpy's global random state, as nnU-Net's loader (batchgenerators seeds it in each worker)."""
        rows = np.random.choice(len(self.classes), size=count, p=self.probabilities)
        classes = [self.classes[r] for r in rows]
        cases = [self.cases[c][np.random.randint(len(self.cases[c]))] for c in classes]
        return classes, cases


def sampling_weights(dataset_json: Mapping, tumor_weight: float = TUMOR_CLASS_WEIGHT,
                     organ_weight: float = OTHER_WEIGHT) -> Dict[int, float]:
    """Foreground label -> patch-class weight: 1 per organ, 5 for the tumour (``flare24_weights.tumor_label``)."""
    weights = class_weights(dataset_json, tumor_weight, organ_weight)
    return {label: float(weights[label]) for label in range(1, len(weights))}


class ClassFirstDataset:
    """Mixin over an nnU-Net dataset class: the same cases, plus ``class_first`` (:class:`ClassFirstIndex`) for
    :class:`ClassFirstDataLoader`. ``load_case`` is nnU-Net's. Plain attributes: it pickles into loader workers."""

    def __init__(self, folder: str, identifiers: Optional[List[str]] = None,
                 folder_with_segs_from_previous_stage: Optional[str] = None, *, weights: Mapping[int, float],
                 presence: Optional[Presence] = None):
        super().__init__(folder, identifiers, folder_with_segs_from_previous_stage)
        if presence is None:
            presence = class_presence(Path(folder), self.identifiers, write=False)
        self.class_first = ClassFirstIndex.build(weights, presence, self.identifiers)


class ClassFirstDatasetBlosc2(ClassFirstDataset, nnUNetDatasetBlosc2):
    """nnU-Net's blosc2 dataset (``.b2nd``) for class-first sampling."""


class ClassFirstDatasetNumpy(ClassFirstDataset, nnUNetDatasetNumpy):
    """nnU-Net's numpy dataset (``.npz``/``.npy``) for class-first sampling."""


def class_first(dataset, **options) -> ClassFirstDataset:
    """The same cases as an nnU-Net dataset instance, as our subclass; ``options``: weights, presence."""
    from CRCTraining.agcrc.nnunet_sampling import CentreSampledDataset

    if isinstance(dataset, ClassFirstDataset):
        return dataset
    if isinstance(dataset, CentreSampledDataset):
        raise TypeError("class-first sampling and AG-sampling both choose the patch centres: compose one of "
                        "ClassFirstSamplingTrainerMixin and AGSamplingTrainerMixin, not both")
    for base, ours in ((nnUNetDatasetBlosc2, ClassFirstDatasetBlosc2), (nnUNetDatasetNumpy, ClassFirstDatasetNumpy)):
        if isinstance(dataset, base):
            return ours(dataset.source_folder, list(dataset.identifiers),
                        dataset.folder_with_segs_from_previous_stage, **options)
    raise TypeError(f"no class-first variant of dataset class {type(dataset).__name__}")


# --- step 3: the centre voxel, by nnU-Net's get_bbox ------------------------------------------------------------------
class ClassFirstDataLoader(nnUNetDataLoader):
    """nnU-Net's loader with class-first (class, case) draws; same constructor as ``nnUNetDataLoader``.

    ``get_indices`` draws a (class, case) pair per batch position and keeps the classes in order;
    ``generate_train_batch`` (nnU-Net's) then calls ``get_bbox`` once per position, in the same order, which
    hands each its class as ``overwrite_class`` with ``force_fg=True``.
    """

    def __init__(self, data, *args, **kwargs):
        if not isinstance(data, ClassFirstDataset):
            raise TypeError(f"ClassFirstDataLoader needs a ClassFirstDataset, got {type(data).__name__}")
        super().__init__(data, *args, **kwargs)
        self.oversample_foreground_percent = 1.0  # every sample foreground-forced (FLARE24)
        self.pending_classes: List[int] = []

    def get_indices(self) -> List[str]:
        classes, cases = self._data.class_first.draw(self.batch_size)
        self.pending_classes = classes
        return cases

    def get_bbox(self, data_shape: np.ndarray, force_fg: bool, class_locations: Optional[dict],
                 overwrite_class=None, verbose: bool = False):
        if overwrite_class is None and self.pending_classes:
            overwrite_class = self.pending_classes.pop(0)
        return super().get_bbox(data_shape, True, class_locations, overwrite_class, verbose)


_LOADER_LOCK = threading.Lock()


@contextmanager
def nnunet_trainer_loader(loader_class: type) -> Iterator[None]:
    """While inside, ``nnUNetTrainer.get_dataloaders`` builds ``loader_class`` where it builds ``nnUNetDataLoader``.

    nnU-Net 2.8.1 names its loader class inside ``get_dataloaders`` and offers no attribute for it; case
    selection (``get_indices``) is a loader method, so a loader subclass is the only per-batch hook for
    step 2. The name is swapped in nnU-Net's trainer module for the one call and restored afterwards, so the
    rest of ``get_dataloaders`` (transforms, augmenter processes, DDP) stays nnU-Net's code.
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    module = sys.modules[nnUNetTrainer.__module__]
    with _LOADER_LOCK:
        original = module.nnUNetDataLoader
        if not issubclass(loader_class, original):
            raise TypeError(f"{loader_class.__name__} is not an nnUNetDataLoader")
        module.nnUNetDataLoader = loader_class
        try:
            yield
        finally:
            module.nnUNetDataLoader = original


def augmenter_loader(augmenter) -> nnUNetDataLoader:
    """The loader inside nnU-Net's SingleThreadedAugmenter (``data_loader``) or NonDetMultiThreadedAugmenter
    (``generator``)."""
    loader = getattr(augmenter, "data_loader", None) or getattr(augmenter, "generator", None)
    if loader is None:
        raise TypeError(f"no data loader inside {type(augmenter).__name__}")
    return loader


# --- nnU-Net trainer -----------------------------------------------------------------------------------------------
class ClassFirstSamplingTrainerMixin:
    """Trainer mixin: FLARE24 class-first patch sampling (module docstring). Put it before ``nnUNetTrainer``;
    every override calls ``super()``. Not with ``AGSamplingTrainerMixin``: both choose the patch centres.

    Weights (class attributes): ``class_first_tumor_weight`` for the tumour (label named "tumor" in dataset.json,
    else the highest label), ``class_first_organ_weight`` for every other foreground label.
    """

    class_first_tumor_weight: float = TUMOR_CLASS_WEIGHT
    class_first_organ_weight: float = OTHER_WEIGHT

    def _force_class_first(self) -> None:
        self.oversample_foreground_percent = 1.0
        self.probabilistic_oversampling = False

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        self._force_class_first()  # after nnU-Net's per-DDP-worker split

    def class_first_weights(self) -> Dict[int, float]:
        segmentation_labels(self.dataset_json)  # a clear error for region-based labels
        return sampling_weights(self.dataset_json, self.class_first_tumor_weight, self.class_first_organ_weight)

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        identifiers = sorted(set(dataset_tr.identifiers) | set(dataset_val.identifiers))
        folder = Path(self.preprocessed_dataset_folder)
        if self.local_rank == 0:  # rank 0 writes the summary; the others wait and read it
            class_presence(folder, identifiers, write=True)
        if self.is_ddp:
            import torch.distributed as dist

            dist.barrier()
        presence = class_presence(folder, identifiers, write=False)
        weights = self.class_first_weights()
        dataset_tr = class_first(dataset_tr, weights=weights, presence=presence)
        dataset_val = class_first(dataset_val, weights=weights, presence=presence)
        index = dataset_tr.class_first
        self.print_to_log_file("FLARE24 class-first sampling: " + ", ".join(
            f"class {c}: p={p:.3f} over {len(index.cases[c])} cases" for c, p in zip(index.classes, index.probabilities)))
        return dataset_tr, dataset_val

    def get_dataloaders(self):
        self._force_class_first()
        with nnunet_trainer_loader(ClassFirstDataLoader):
            train, validation = super().get_dataloaders()
        for augmenter in (train, validation):
            loader = augmenter_loader(augmenter)
            if not isinstance(loader, ClassFirstDataLoader):  # e.g. a trainer in between builds its own loaders
                raise TypeError(f"class-first sampling: the trainer built a {type(loader).__name__}, "
                                "not a ClassFirstDataLoader")
        return train, validation
