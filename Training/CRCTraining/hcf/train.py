"""HCF training (Shi et al., CMIG 2024): the slice classifier and SANet, each an ``engine2d`` task.

Paper: /work/shared/papers/HCF_SANet_GTV_decoupling.txt. Both stages train independently (Sec. 3.1) on
axial CT slices (``hcf_slices``: body-box crop, HU window, resize to ``size``), with the settings of
Sec. 4.2 as defaults: AdamW, learning rate 1e-3, weight decay 1e-4, cosine annealing with warm restarts
and a first cycle of 20 epochs, global batch 128 (classifier) / 64 (SANet), input 512 x 512, at most
120 epochs, validation after every epoch and early stopping with a patience of 30 epochs; online
augmentation (``hcf_augment``: erasing, zoom, distortion, rotation, vertical flip, noise).

- ``SliceClassifierTask``: ResNet18 (``networks.hcf.build_slice_classifier``; with the public code's
  Dropout(0.2) before the last layer, ``classifier_dropout``), cross-entropy on abnormal
  (1, the slice holds tumor) vs normal (0) (Sec. 3.1, 4.2). Balance sampling (BSS, Sec. 3.4) ratio
  theta_1 by default (Table 3: the classifier ratio of the best lung result and of the highest recall
  there); theta_2, theta_4, theta_n as options (theta_0 would hold no normal slice).
  Validation: recall of abnormal slices (the figure Table 3 reports), precision, specificity, accuracy,
  F1; the **score is the balanced accuracy** (recall + specificity) / 2. Recall alone is maximised by
  calling every slice abnormal, and plain accuracy by calling every slice normal (the validation fold
  keeps the original ratio, mostly normal slices); the balanced accuracy rewards neither.
- ``SANetTask``: SANet with the CR loss (``cr_loss.CRLoss``, Eq. 4-8, alpha 0.1, the public code's
  conventions), BSS theta_0 by default (abnormal slices only: at inference SANet sees only the slices
  the classifier passes); theta_1 .. theta_n as options. Validation: **score = mean Dice per validation
  case** over that case's tumor-holding slices (SANet behind a perfect classifier; the slices' Dice
  summed per case, as the paper's DSC is per scan), on the input grid; also the mean per-slice Dice.

Data: label maps ``labels/<case>.nii.gz`` beside ``images/<case>[_0000].nii.gz`` (tumor = label > 0 or
``tumor_label``), axial slices along ``hcf_preprocessing.axial_axis`` (as inference cuts them), or a
folder of CARE ``.npz`` slices. Cross-validation by case (Sec. 4.1, five folds at the patient level):
``split_cases`` sorts the cases and deals them into ``folds`` groups by a permutation drawn from
``split_seed``, so every stage and every fold sees the same split; fold F trains on the others and
validates on F. ``fold=None`` trains on every case without validation (nor early stopping).

Files: ``classifier_final.pt`` / ``sanet_final.pt`` in the run folder, the engine's default checkpoint
``{"state_dict", "training", "history", "validation", "hcf"}``; ``hcf`` holds the stage, the slice
preprocessing, the fold and the ratio, which ``hcf_export.export_hcf_bundle`` reads to write the bundle.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from CRCSegmentationLib.hcf.preprocessing import SliceDatasetConfig, axial_axis
from CRCSegmentationLib.networks.hcf import PUBLIC_FINAL_DROPOUT, build_sanet, build_slice_classifier
from CRCTraining.engine2d import EngineResult, EngineSettings, EngineTask, train
from CRCTraining.hcf.augment import AugmentationSettings, augment_slice
from CRCTraining.hcf.cr_loss import CRLoss
from CRCTraining.hcf.slices import ALL_SLICES, BalanceSampler, Ratio, SliceDataset, SliceRecord
from OrganGuidanceLib.case_folders import pair_images_and_labels
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.validation import InputError, check_ct, check_label_map

CLASSIFIER, SANET = "classifier", "sanet"
STAGES = (CLASSIFIER, SANET)
FINAL_FILES = {CLASSIFIER: "classifier_final.pt", SANET: "sanet_final.pt"}
DEFAULT_RATIOS: Dict[str, Ratio] = {CLASSIFIER: 1, SANET: 0}  # Table 3 / the brief: theta_1 classifier, theta_0 SANet
DEFAULT_BATCH = {CLASSIFIER: 128, SANET: 64}  # Sec. 4.2
SANET_STRIDE = 16  # SANet's output stride: inputs are multiples of it
HCF_RECORD = "hcf"  # the checkpoint key of what export needs
ABNORMAL = 1  # the classifier's class of a slice with tumor (hcf_bundle.ABNORMAL_CLASS)
DICE_EPSILON = 1e-8
# HCF settings a run must keep to be continued (the engine adds its own: batches, schedule, patience).
RESUME_KEYS = ("stage", "ratio", "per_epoch", "lr", "weight_decay", "augmentation", "size", "hu_window",
               "body_threshold_hu", "body_margin_px", "fold", "folds", "split_seed", "tumor_label",
               "classifier_dropout")


def parse_ratio(value: Union[str, int]) -> Ratio:
    """``0, 1, 2, 4, ...`` (normal slices per abnormal one) or ``"n"`` (all slices): BSS theta (Sec. 3.4)."""
    text = str(value).strip().lower()
    if text in (ALL_SLICES, "theta_n", "thetan"):
        return ALL_SLICES
    text = text.replace("theta_", "").replace("theta", "")
    if not text.isdigit():
        raise InputError(f"balance-sampling ratio {value!r}: use 0, 1, 2, 4 (normal per abnormal slice) or 'n' "
                         "(all slices)")
    return int(text)


@dataclass
class HCFTrainingSettings:
    """One HCF stage's run; every default is the paper's (Sec. 4.2) unless marked otherwise."""

    output: Path
    images: Optional[Path] = None  # folder of CT volumes <case>[_0000].nii.gz
    labels: Optional[Path] = None  # folder of label maps <case>.nii.gz
    npz: Optional[Path] = None  # or: a folder of CARE .npz slices (``crcseg usam-slices``), tumor = label 2
    tumor_label: Optional[int] = None  # None: every label > 0 is tumor (GTV)
    fold: Optional[int] = 0  # None: train on every case, no validation
    folds: int = 5  # Sec. 4.1: "randomly divided into five folds at the patient-level"
    split_seed: int = 0  # the case split: the same for both stages and every fold
    ratio: Optional[Ratio] = None  # BSS theta; None: the stage's default (DEFAULT_RATIOS)
    per_epoch: bool = False  # redraw the normal subset every epoch; the public code draws it once
    iterations: Optional[int] = None  # None: ``epochs`` epochs
    epochs: int = 120  # Sec. 4.2: "within 120 epochs"
    batch_size: Optional[int] = None  # the global batch; None: 128 classifier, 64 SANet (Sec. 4.2)
    lr: float = 1e-3  # Sec. 4.2, AdamW
    weight_decay: float = 1e-4  # Sec. 4.2
    cycle_epochs: int = 20  # Sec. 4.2: cosine annealing, "initial restart cycle of 20 epochs"
    patience: Optional[int] = 30  # Sec. 4.2: early stopping, "tolerance of 30 epochs"; None: off
    size: int = 512  # Sec. 4.2: 512 x 512 input
    hu_window: Tuple[float, float] = (-160.0, 240.0)  # hcf_preprocessing.SliceDatasetConfig (abdominal window)
    body_threshold_hu: float = -300.0
    body_margin_px: int = 10
    augmentation: bool = True  # Sec. 4.2: online augmentation
    # Dropout before the classifier's last layer: the public code's 0.2 (not in the paper); 0: none. The
    # checkpoint's keys are the same either way, and inference (eval mode) is unchanged.
    classifier_dropout: float = PUBLIC_FINAL_DROPOUT
    validation_batch_size: int = 16
    seed: int = 0
    checkpoint_every: int = 500  # iterations; also at every validated epoch's end
    amp: str = "auto"  # float16 autocast on CUDA
    device: str = "auto"
    threads: Optional[int] = None
    workers: int = 0

    def slice_config(self) -> SliceDatasetConfig:
        return SliceDatasetConfig((float(self.hu_window[0]), float(self.hu_window[1])), int(self.size),
                                  float(self.body_threshold_hu), int(self.body_margin_px))

    def plain(self) -> Dict[str, object]:
        """Checkpoint- and JSON-safe values (paths as strings, the window as a list)."""
        plain = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        plain["hu_window"] = [float(v) for v in self.hu_window]
        return plain


# --- data ---------------------------------------------------------------------------------------
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
    """Every case's CT and label array with the axial axis first (``axial_axis``, as inference slices)."""
    volumes: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    for case, image_path, label_path in paired_volume_files(images, labels, roles):
        ct, label = read_image(image_path), read_image(label_path)
        check_ct(ct)
        check_label_map(label)
        if not ct.same_grid(label):
            raise InputError(f"{label_path}: not on the grid of its CT {image_path}")
        axis = axial_axis(ct)
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

    With a seed and augmentation, the item is augmented (``hcf_augment``) from that seed; an abnormal
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


# --- validation metrics ---------------------------------------------------------------------------
def _batches(dataset: torch.utils.data.Dataset, batch_size: int, workers: int):
    return torch.utils.data.DataLoader(dataset, batch_size=max(1, int(batch_size)), shuffle=False,
                                       num_workers=int(workers))


def abnormal_probabilities(model: nn.Module, dataset: torch.utils.data.Dataset, device: torch.device,
                           batch_size: int = 16, workers: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(softmax p(abnormal) per slice, the slices' abnormal flags 0/1) of a classifier in eval mode."""
    probabilities, truth = [], []
    model.eval()
    with torch.inference_mode():
        for batch in _batches(dataset, batch_size, workers):
            logits = model(batch["image"].to(device)).float()
            probabilities.append(torch.softmax(logits, dim=1)[:, ABNORMAL].cpu().numpy())
            truth.append(np.asarray(batch["abnormal"]).astype(np.int64))
    return np.concatenate(probabilities), np.concatenate(truth)


def classification_metrics(truth: np.ndarray, predicted: np.ndarray) -> Dict[str, float]:
    """Recall (sensitivity) of abnormal slices, precision, specificity, accuracy, F1, balanced accuracy.

    Conventions for empty classes: recall 1 without abnormal slices, specificity 1 without normal ones,
    precision 1 when nothing is called abnormal and nothing is (else 0).
    """
    truth, predicted = np.asarray(truth).astype(bool), np.asarray(predicted).astype(bool)
    tp, fp = int((truth & predicted).sum()), int((~truth & predicted).sum())
    fn, tn = int((truth & ~predicted).sum()), int((~truth & ~predicted).sum())
    recall = tp / (tp + fn) if tp + fn else 1.0
    specificity = tn / (tn + fp) if tn + fp else 1.0
    precision = tp / (tp + fp) if tp + fp else (1.0 if tp + fn == 0 else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"recall": recall, "precision": precision, "specificity": specificity,
            "accuracy": (tp + tn) / max(1, tp + tn + fp + fn), "f1": f1,
            "balanced_accuracy": (recall + specificity) / 2.0,
            "abnormal_slices": float(tp + fn), "slices": float(tp + tn + fp + fn)}


def sanet_dice(model: nn.Module, dataset: torch.utils.data.Dataset, device: torch.device, batch_size: int = 16,
               workers: int = 0) -> Dict[str, float]:
    """Dice of SANet's argmax on ``dataset``'s slices: mean per case (sums over its slices) and per slice."""
    sums: Dict[str, List[float]] = {}  # case -> [intersection, prediction, reference]
    per_slice: List[float] = []
    model.eval()
    with torch.inference_mode():
        for batch in _batches(dataset, batch_size, workers):
            predicted = model(batch["image"].to(device)).argmax(dim=1).cpu() == 1
            reference = batch["label"] == 1
            intersection = (predicted & reference).flatten(1).sum(1).double()
            counts = predicted.flatten(1).sum(1).double(), reference.flatten(1).sum(1).double()
            for k, case in enumerate(batch["case"]):
                entry = sums.setdefault(str(case), [0.0, 0.0, 0.0])
                values = (float(intersection[k]), float(counts[0][k]), float(counts[1][k]))
                entry[0], entry[1], entry[2] = entry[0] + values[0], entry[1] + values[1], entry[2] + values[2]
                per_slice.append(2 * values[0] / max(values[1] + values[2], DICE_EPSILON))
    per_case = [2 * i / max(p + r, DICE_EPSILON) for i, p, r in sums.values()]
    return {"dice": float(np.mean(per_case)) if per_case else 0.0,
            "slice_dice": float(np.mean(per_slice)) if per_slice else 0.0, "cases": float(len(per_case))}


# --- the two tasks ----------------------------------------------------------------------------
class HCFTask(EngineTask):
    """What both HCF stages share: data, fold split, balance sampling, AdamW, checkpoint record."""

    stage = ""

    def __init__(self, settings: HCFTrainingSettings, data: Optional[SliceDataset] = None) -> None:
        self.settings = settings
        self.ratio: Ratio = parse_ratio(settings.ratio if settings.ratio is not None else DEFAULT_RATIOS[self.stage])
        self.warnings: List[str] = []
        _check_settings(settings, self.stage, self.ratio)
        data = data if data is not None else load_slices(settings)
        if len(data) == 0:
            raise InputError("HCF training: the data holds no slices")
        cases = sorted({record.case for record in data.records})
        self.training_cases, self.validation_cases = fold_cases(cases, settings.fold, settings.folds,
                                                                settings.split_seed)
        train_set, validation_set = set(self.training_cases), set(self.validation_cases)
        augmentation = AugmentationSettings() if settings.augmentation else None
        self._train = EngineSlices(data, [i for i, r in enumerate(data.records) if r.case in train_set], augmentation)
        self._validation = self._validation_slices(data, validation_set) if validation_set else None
        if not any(r.abnormal for r in self._train.records):
            raise InputError(f"HCF {self.stage} training: the training cases hold no tumor slice (check the labels"
                             f"{'' if settings.tumor_label is None else f' and --tumor-label {settings.tumor_label}'})")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.sampler = BalanceSampler(self._train.records, self.ratio, seed=settings.seed,
                                          per_epoch=settings.per_epoch)
        self.warnings += [str(w.message) for w in caught]

    def _validation_slices(self, data: SliceDataset, cases: set) -> EngineSlices:
        slices = EngineSlices(data, [i for i, r in enumerate(data.records) if r.case in cases])
        if not any(r.abnormal for r in slices.records):
            raise InputError(f"HCF {self.stage} training: validation fold {self.settings.fold} ({sorted(cases)}) "
                             "holds no tumor slice; use another --split-seed or fewer --folds")
        return slices

    def dataset(self) -> EngineSlices:
        return self._train

    def validation_dataset(self) -> Optional[EngineSlices]:
        return self._validation

    def has_validation(self) -> bool:
        return self._validation is not None  # --fold all: no validation, no checkpoint at every epoch's end

    def epoch_indices(self, epoch: int) -> Sequence[int]:
        """BSS (Sec. 3.4): every abnormal slice and the ratio's normal ones (``BalanceSampler``)."""
        return self.sampler.epoch_indices(epoch)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=self.settings.lr, weight_decay=self.settings.weight_decay)

    def record(self) -> Dict[str, object]:
        """What ``export_hcf_bundle`` reads from the checkpoint (plain values)."""
        config = asdict(self.settings.slice_config())
        config["hu_window"] = [float(v) for v in config["hu_window"]]
        return {"stage": self.stage, "slice_config": config, "fold": self.settings.fold, "folds": self.settings.folds,
                "split_seed": self.settings.split_seed, "ratio": self.ratio,
                "training_cases": list(self.training_cases), "validation_cases": list(self.validation_cases)}

    def resume_settings(self) -> Dict[str, object]:
        plain = {**self.settings.plain(), "stage": self.stage, "ratio": self.ratio}
        return {k: plain[k] for k in RESUME_KEYS}

    def settings_record(self) -> Dict[str, object]:
        return {**self.settings.plain(), "stage": self.stage, "ratio": self.ratio}

    def save(self, path: Path, model: nn.Module, extra: Dict[str, object]) -> None:
        super().save(path, model, {**extra, HCF_RECORD: self.record()})


class SliceClassifierTask(HCFTask):
    """ResNet18 abnormal-vs-normal slice classifier, cross-entropy (Sec. 3.1, 4.2); score: balanced accuracy."""

    stage = CLASSIFIER
    name = "HCF slice classifier"
    final_name = FINAL_FILES[CLASSIFIER]
    score_name = "balanced_accuracy"

    def build_model(self) -> nn.Module:
        return build_slice_classifier(in_channels=1, num_classes=2, dropout=self.settings.classifier_dropout)

    def loss(self, model, batch: dict, device: torch.device):
        target = torch.as_tensor(batch["abnormal"], dtype=torch.long, device=device)
        loss = F.cross_entropy(model(batch["image"].to(device)), target)
        return loss, (loss,)

    def validate(self, model: nn.Module, device: torch.device) -> Optional[Dict[str, float]]:
        if self._validation is None:
            return None
        probabilities, truth = abnormal_probabilities(model, self._validation, device,
                                                      self.settings.validation_batch_size, self.settings.workers)
        return classification_metrics(truth, probabilities >= 0.5)


class SANetTask(HCFTask):
    """SANet with the CR loss (Eq. 4-8) on BSS slices (theta_0: abnormal only); score: mean Dice per case."""

    stage = SANET
    name = "HCF SANet"
    final_name = FINAL_FILES[SANET]
    score_name = "dice"

    def __init__(self, settings: HCFTrainingSettings, data: Optional[SliceDataset] = None) -> None:
        super().__init__(settings, data)
        self.criterion = CRLoss()

    def _validation_slices(self, data: SliceDataset, cases: set) -> EngineSlices:
        """The validation cases' tumor slices only (what a perfect classifier would pass)."""
        slices = EngineSlices(data, [i for i, r in enumerate(data.records) if r.case in cases and r.abnormal])
        if not slices.indices:
            raise InputError(f"HCF sanet training: validation fold {self.settings.fold} ({sorted(cases)}) holds no "
                             "tumor slice; use another --split-seed or fewer --folds")
        return slices

    def build_model(self) -> nn.Module:
        return build_sanet(num_classes=2, in_channels=1)

    def loss(self, model, batch: dict, device: torch.device):
        loss = self.criterion(model(batch["image"].to(device)), batch["label"].to(device))
        return loss, (loss,)

    def validate(self, model: nn.Module, device: torch.device) -> Optional[Dict[str, float]]:
        if self._validation is None:
            return None
        return sanet_dice(model, self._validation, device, self.settings.validation_batch_size, self.settings.workers)


TASKS = {CLASSIFIER: SliceClassifierTask, SANET: SANetTask}


def _check_settings(settings: HCFTrainingSettings, stage: str, ratio: Ratio) -> None:
    if stage == CLASSIFIER and ratio == 0:
        raise InputError("HCF classifier training: ratio theta_0 holds no normal slice to learn from (it is for "
                         "SANet); use 1, 2, 4 or n")
    if int(settings.size) < SANET_STRIDE or int(settings.size) % SANET_STRIDE:
        raise InputError(f"HCF training: size {settings.size} must be a positive multiple of {SANET_STRIDE} "
                         "(SANet's output stride; the model bundle needs it for both stages)")
    if not float(settings.hu_window[1]) > float(settings.hu_window[0]):
        raise InputError(f"HCF training: hu_window {settings.hu_window} must be (low, high) with high > low")
    if settings.lr <= 0 or settings.weight_decay < 0:
        raise InputError(f"HCF training: lr {settings.lr} must be > 0 and weight_decay {settings.weight_decay} >= 0")
    if settings.validation_batch_size < 1:
        raise InputError(f"HCF training: validation_batch_size must be at least 1, "
                         f"got {settings.validation_batch_size}")


def batch_size_of(settings: HCFTrainingSettings, stage: str) -> int:
    return int(settings.batch_size) if settings.batch_size is not None else DEFAULT_BATCH[stage]


def engine_settings(settings: HCFTrainingSettings, stage: str) -> EngineSettings:
    """The engine's settings of a stage: cosine warm restarts (first cycle ``cycle_epochs``), early stopping
    with ``patience`` when a validation fold exists."""
    return EngineSettings(
        output=Path(settings.output), iterations=settings.iterations, epochs=settings.epochs,
        batch_size=batch_size_of(settings, stage), seed=settings.seed, checkpoint_every=settings.checkpoint_every,
        schedule="cosine_restarts", cycle_epochs=settings.cycle_epochs, cycle_mult=1,
        patience=settings.patience if settings.fold is not None else None, amp=settings.amp,
        device=settings.device, threads=settings.threads, workers=settings.workers)


def train_stage(stage: str, settings: HCFTrainingSettings, stop_after: Optional[int] = None, progress: bool = True,
                data: Optional[SliceDataset] = None) -> EngineResult:
    """Train one HCF stage (or resume it, or skip a finished run); under ``torchrun`` every process calls it."""
    if stage not in TASKS:
        raise InputError(f"HCF training: stage {stage!r} is not one of {list(STAGES)}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if stage == SANET and batch_size_of(settings, stage) // max(1, world) < 2:
        raise InputError(f"HCF SANet training: batch size {batch_size_of(settings, stage)} over {world} process(es) "
                         "leaves fewer than 2 slices per process; SANet's pyramid pooling (batch norm on a 1 x 1 "
                         "map) needs at least 2")
    task = TASKS[stage](settings, data)
    return train(task, engine_settings(settings, stage), stop_after, progress)


def train_slice_classifier(settings: HCFTrainingSettings, stop_after: Optional[int] = None, progress: bool = True,
                           data: Optional[SliceDataset] = None) -> EngineResult:
    return train_stage(CLASSIFIER, settings, stop_after, progress, data)


def train_sanet(settings: HCFTrainingSettings, stop_after: Optional[int] = None, progress: bool = True,
                data: Optional[SliceDataset] = None) -> EngineResult:
    return train_stage(SANET, settings, stop_after, progress, data)
