"""HCF training (Shi et al., CMIG 2024): the slice classifier and SANet, each an ``engine2d`` task.

Paper: /work/shared/papers/HCF_SANet_GTV_decoupling.txt. Both stages train independently (Sec. 3.1) on
axial CT slices (``slices``: body-box crop, HU window, resize to ``size``), with the settings of
Sec. 4.2 as defaults: AdamW, learning rate 1e-3, weight decay 1e-4, cosine annealing with warm restarts
and a first cycle of 20 epochs, global batch 128 (classifier) / 64 (SANet), input 512 x 512, at most
120 epochs, validation after every epoch and early stopping with a patience of 30 epochs; online
augmentation (``augment``: erasing, zoom, distortion, rotation, vertical flip, noise).

The stages are ``tasks.SliceClassifierTask`` and ``tasks.SANetTask`` (what each learns and how it is
validated), on the slices of ``data`` (volumes or CARE slices, the case split), with the settings of
``settings.HCFTrainingSettings``; this module runs them on the engine (``train_stage``).

Files: ``classifier_final.pt`` / ``sanet_final.pt`` in the run folder, the engine's default checkpoint
``{"state_dict", "training", "history", "validation", "hcf"}``; ``hcf`` holds the stage, the slice
preprocessing, the fold and the ratio, which ``export.export_hcf_bundle`` reads to write the bundle.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from CRCTraining.engine2d import EngineResult, EngineSettings, train
from CRCTraining.hcf.settings import CLASSIFIER, DEFAULT_BATCH, SANET, STAGES, HCFTrainingSettings
from CRCTraining.hcf.slices import SliceDataset
from CRCTraining.hcf.tasks import TASKS
from OrganGuidanceLib.validation import InputError


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
