"""The two HCF stages as ``engine2d`` tasks, and their validation metrics (Shi et al., CMIG 2024).

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

Both save the engine's checkpoint plus the ``hcf`` record (``HCFTask.record``) that ``export`` reads.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from CRCSegmentationLib.hcf.bundle import ABNORMAL_CLASS
from CRCSegmentationLib.networks.hcf import build_sanet, build_slice_classifier
from CRCTraining.engine2d import EngineTask
from CRCTraining.hcf.augment import AugmentationSettings
from CRCTraining.hcf.cr_loss import CRLoss
from CRCTraining.hcf.data import EngineSlices, batches, fold_cases, load_slices
from CRCTraining.hcf.settings import (
    CLASSIFIER,
    DEFAULT_RATIOS,
    FINAL_FILES,
    HCF_RECORD,
    RESUME_KEYS,
    SANET,
    HCFTrainingSettings,
    check_settings,
    parse_ratio,
)
from CRCTraining.hcf.slices import BalanceSampler, Ratio, SliceDataset
from OrganGuidanceLib.validation import InputError

DICE_EPSILON = 1e-8


def abnormal_probabilities(model: nn.Module, dataset: torch.utils.data.Dataset, device: torch.device,
                           batch_size: int = 16, workers: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(softmax p(abnormal) per slice, the slices' abnormal flags 0/1) of a classifier in eval mode."""
    probabilities, truth = [], []
    model.eval()
    with torch.inference_mode():
        for batch in batches(dataset, batch_size, workers):
            logits = model(batch["image"].to(device)).float()
            probabilities.append(torch.softmax(logits, dim=1)[:, ABNORMAL_CLASS].cpu().numpy())
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
        for batch in batches(dataset, batch_size, workers):
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


class HCFTask(EngineTask):
    """What both HCF stages share: data, fold split, balance sampling, AdamW, checkpoint record."""

    stage = ""

    def __init__(self, settings: HCFTrainingSettings, data: Optional[SliceDataset] = None) -> None:
        self.settings = settings
        self.ratio: Ratio = parse_ratio(settings.ratio if settings.ratio is not None else DEFAULT_RATIOS[self.stage])
        self.warnings: List[str] = []
        check_settings(settings, self.stage, self.ratio)
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
