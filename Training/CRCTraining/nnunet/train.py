"""``crcseg pretrain`` / ``crcseg train``: nnU-Net v2's own training loop with our trainers.

Resumable: a fold folder with a checkpoint continues from it (nnU-Net's ``--c``);
a finished one (``checkpoint_final.pth``) is left alone. Multi-GPU goes through
nnU-Net's DDP path (``num_gpus`` > 1 spawns one process per GPU).

A killed run leaves no process behind: nnU-Net's data-augmentation workers (and DDP ranks) die with the
process that started them (``worker_lifetime``, Linux).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from CRCTraining.nnunet.env import dataset_name, register_trainers
from CRCTraining.nnunet.mixins import ENV_EPOCHS, ENV_ITERATIONS, ENV_VAL_ITERATIONS
from CRCTraining.nnunet.planning import CONFIGURATION, PLANS, patch_size, preprocessed_folder
from CRCTraining.worker_lifetime import workers_die_with_this_process
from OrganGuidanceLib.device import resolve_device

DEFAULT_TRAINER = "nnUNetTrainerAGCRC"  # AG-sampling + AF-loss (AG-CRC §III-C, §III-E)
DEFAULT_PRETRAINER = "nnUNetTrainerAGSSL"  # bowel-wall masked reconstruction (AG-CRC §III-D)


def fold_folder(dataset_id: int, trainer: str, fold: Union[int, str], configuration: str = CONFIGURATION) -> Path:
    return Path(os.environ["nnUNet_results"]) / dataset_name(dataset_id) / f"{trainer}__{PLANS}__{configuration}" / f"fold_{fold}"


def trainer_class(trainer: str):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    register_trainers()
    return recursive_find_trainer_class_by_name(trainer)


def set_schedule(epochs: Optional[int], iterations: Optional[int], val_iterations: Optional[int]) -> None:
    for name, value in ((ENV_EPOCHS, epochs), (ENV_ITERATIONS, iterations), (ENV_VAL_ITERATIONS, val_iterations)):
        if value is not None:
            os.environ[name] = str(int(value))


def train(
    dataset_id: int,
    trainer: str = DEFAULT_TRAINER,
    fold: Union[int, str] = 0,
    configuration: str = CONFIGURATION,
    pretrained_weights: Optional[Path] = None,
    device: str = "auto",
    num_gpus: int = 1,
    epochs: Optional[int] = None,
    iterations: Optional[int] = None,
    val_iterations: Optional[int] = None,
) -> Path:
    """Train one fold; returns its final checkpoint. Sampling maps are computed first for AG-sampling."""
    from nnunetv2.run.run_training import run_training

    # Checked before anything runs: a wrong path or device should not cost a sampling-map pass.
    if pretrained_weights is not None and not Path(pretrained_weights).is_file():
        raise FileNotFoundError(f"pretrained weights {pretrained_weights}: no such file (run `crcseg pretrain` first)")
    torch_device = resolve_device(device)
    set_schedule(epochs, iterations, val_iterations)
    cls = trainer_class(trainer)
    if getattr(cls, "sampling_strategy", None) == "ag":
        from CRCTraining.agcrc.sampling_maps import precompute_sampling_maps

        precompute_sampling_maps(preprocessed_folder(dataset_id, configuration), patch_size(dataset_id, configuration))
    folder = fold_folder(dataset_id, trainer, fold, configuration)
    final = folder / "checkpoint_final.pth"
    if final.is_file():
        print(f"{trainer} fold {fold}: already trained ({final}); nothing to do")
        return final
    resume = any((folder / name).is_file() for name in ("checkpoint_latest.pth", "checkpoint_best.pth"))
    if resume and pretrained_weights is not None:
        print(f"{trainer} fold {fold}: resuming from {folder}; the pretrained weights were loaded at its start")
    with workers_die_with_this_process():  # a SIGKILLed run must not leave its workers behind
        run_training(
            str(dataset_id), configuration, fold, trainer, PLANS,
            pretrained_weights=None if resume or pretrained_weights is None else str(pretrained_weights),
            num_gpus=num_gpus, continue_training=resume, device=torch_device,
        )
    if not final.is_file():
        raise RuntimeError(f"{trainer} fold {fold}: training ended without {final}")
    return final
