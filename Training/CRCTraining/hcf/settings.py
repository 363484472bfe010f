"""HCF training settings (Shi et al., CMIG 2024): one stage's run, its defaults (Sec. 4.2) and their checks.

Shared by ``data`` (which slices), ``tasks`` (the two stages) and ``train`` (the engine's settings); the
stage names, final files and checkpoint record key are also what ``export`` reads.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

from CRCSegmentationLib.hcf.preprocessing import SliceDatasetConfig
from CRCSegmentationLib.networks.hcf import PUBLIC_FINAL_DROPOUT
from CRCSegmentationLib.networks.hcf.sanet import OUTPUT_STRIDE, is_valid_input_size
from CRCTraining.hcf.slices import ALL_SLICES, Ratio
from OrganGuidanceLib.validation import InputError

CLASSIFIER, SANET = "classifier", "sanet"
STAGES = (CLASSIFIER, SANET)
FINAL_FILES = {CLASSIFIER: "classifier_final.pt", SANET: "sanet_final.pt"}
DEFAULT_RATIOS: Dict[str, Ratio] = {CLASSIFIER: 1, SANET: 0}  # Table 3 / the brief: theta_1 classifier, theta_0 SANet
DEFAULT_BATCH = {CLASSIFIER: 128, SANET: 64}  # Sec. 4.2
HCF_RECORD = "hcf"  # the checkpoint key of what export needs
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
    hu_window: Tuple[float, float] = (-160.0, 240.0)  # hcf.preprocessing.SliceDatasetConfig (abdominal window)
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


def check_settings(settings: HCFTrainingSettings, stage: str, ratio: Ratio) -> None:
    """InputError for settings no run of ``stage`` can use (checked before any data is read)."""
    if stage == CLASSIFIER and ratio == 0:
        raise InputError("HCF classifier training: ratio theta_0 holds no normal slice to learn from (it is for "
                         "SANet); use 1, 2, 4 or n")
    if not is_valid_input_size(int(settings.size)):
        raise InputError(f"HCF training: size {settings.size} must be a positive multiple of {OUTPUT_STRIDE} "
                         "(SANet's output stride; the model bundle needs it for both stages)")
    if not float(settings.hu_window[1]) > float(settings.hu_window[0]):
        raise InputError(f"HCF training: hu_window {settings.hu_window} must be (low, high) with high > low")
    if settings.lr <= 0 or settings.weight_decay < 0:
        raise InputError(f"HCF training: lr {settings.lr} must be > 0 and weight_decay {settings.weight_decay} >= 0")
    if settings.validation_batch_size < 1:
        raise InputError(f"HCF training: validation_batch_size must be at least 1, "
                         f"got {settings.validation_batch_size}")
