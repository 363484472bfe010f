"""Planning and preprocessing through nnU-Net v2's own planner and preprocessor.

AG-CRC §IV-C: "a specified target spacing 5.0 x 0.78 x 0.78 mm" (z, y, x), which
nnU-Net then turns into the network (a deep UNet for that spacing). The AG-SSL
pretraining dataset must share the supervised dataset's plans so the pretrained
weights fit (nnU-Net's own pretraining recipe: move the plans, then preprocess).

nnU-Net reads its JSON files (``dataset.json``, ``nnUNetPlans.json``, ``splits_final.json``) with a bare
``json.load``: a cut-short file would stop a run with a ``JSONDecodeError``. Every step reads them here
first through the one reader (``OrganGuidanceLib.json_files``), so such a file is a bad input naming it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

from OrganGuidanceLib.json_files import json_field, read_json
from OrganGuidanceLib.validation import InputError

PAPER_TARGET_SPACING = (5.0, 0.78, 0.78)  # AG-CRC §IV-C, (z, y, x) mm
CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"


def plan_and_preprocess(
    dataset_id: int,
    target_spacing: Optional[Sequence[float]] = None,
    gpu_memory_gb: Optional[float] = None,
    num_processes: int = 2,
    configuration: str = CONFIGURATION,
    verify: bool = True,
) -> dict:
    """Fingerprint, plan (optionally at ``target_spacing`` z,y,x mm) and preprocess one dataset; returns the plans."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    from CRCTraining.nnunet.env import dataset_name

    raw_dataset_json(dataset_id)
    if verify:
        verify_dataset_integrity(os.path.join(os.environ["nnUNet_raw"], dataset_name(dataset_id)), num_processes)
    extract_fingerprint_dataset(dataset_id, num_processes=num_processes, check_dataset_integrity=False,
                                clean=True, verbose=False)
    plans, _ = plan_experiment_dataset(
        dataset_id, gpu_memory_target_in_gb=gpu_memory_gb,
        overwrite_target_spacing=tuple(target_spacing) if target_spacing else None,
    )
    preprocess_dataset(dataset_id, PLANS, configurations=(configuration,), num_processes=(num_processes,))
    return plans


def preprocess_with_plans_of(source_id: int, target_id: int, num_processes: int = 2,
                             configuration: str = CONFIGURATION) -> None:
    """Preprocess ``target_id`` (e.g. the AG-SSL dataset) with the plans of ``source_id``."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        preprocess_dataset,
    )
    from nnunetv2.experiment_planning.plans_for_pretraining.move_plans_between_datasets import (
        move_plans_between_datasets,
    )

    from CRCTraining.nnunet.env import dataset_name

    read_plans(source_id, configuration)
    raw_dataset_json(target_id)
    extract_fingerprint_dataset(target_id, num_processes=num_processes, check_dataset_integrity=False,
                                clean=True, verbose=False)
    move_plans_between_datasets(source_id, target_id, PLANS, PLANS)
    # nnU-Net's planner would copy dataset.json next to the plans; moved plans leave that to us.
    name = dataset_name(target_id)
    shutil.copy2(Path(os.environ["nnUNet_raw"]) / name / "dataset.json",
                 Path(os.environ["nnUNet_preprocessed"]) / name / "dataset.json")
    preprocess_dataset(target_id, PLANS, configurations=(configuration,), num_processes=(num_processes,))


def raw_dataset_json(dataset_id: int) -> dict:
    """``nnUNet_raw/<dataset>/dataset.json``; ``InputError`` naming it when missing or not valid JSON."""
    from CRCTraining.nnunet.env import dataset_name

    path = Path(os.environ["nnUNet_raw"]) / dataset_name(dataset_id) / "dataset.json"
    if not path.is_file():
        raise InputError(f"{path}: no such file; `crcseg prepare` writes it")
    return read_json(path)


def preprocessed_dataset_folder(dataset_id: int) -> Path:
    from CRCTraining.nnunet.env import dataset_name

    return Path(os.environ["nnUNet_preprocessed"]) / dataset_name(dataset_id)


def read_plans(dataset_id: int, configuration: Optional[str] = None) -> dict:
    """The dataset's ``nnUNetPlans.json``, checked to be valid JSON with ``configuration`` (when given)."""
    path = preprocessed_dataset_folder(dataset_id) / f"{PLANS}.json"
    if not path.is_file():
        raise InputError(f"{path}: no nnU-Net plans; run `crcseg plan -d {dataset_id}` first")
    plans = read_json(path)
    configurations = json_field(plans, "configurations", path)
    if configuration is not None and configuration not in configurations:
        raise InputError(f"{path}: has no configuration '{configuration}' (it has {sorted(configurations)}); "
                         "check --configuration, or run `crcseg plan` / `crcseg rcsegnext-plans`")
    return plans


def check_training_files(dataset_id: int, configuration: str = CONFIGURATION) -> None:
    """The preprocessed JSON files nnU-Net's training reads (plans, dataset.json, the fold splits once
    written), read through the one reader before training starts."""
    folder = preprocessed_dataset_folder(dataset_id)
    read_plans(dataset_id, configuration)
    read_json(folder / "dataset.json")
    if (folder / "splits_final.json").exists():
        read_json(folder / "splits_final.json", expect=list)


def _plans_manager(dataset_id: int):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return PlansManager(read_plans(dataset_id))


def preprocessed_folder(dataset_id: int, configuration: str = CONFIGURATION) -> Path:
    """The folder nnU-Net preprocessed ``configuration`` into (``<preprocessed>/<dataset>/<data_identifier>``)."""
    plans = _plans_manager(dataset_id)
    return Path(os.environ["nnUNet_preprocessed"]) / plans.dataset_name / plans.get_configuration(configuration).data_identifier


def patch_size(dataset_id: int, configuration: str = CONFIGURATION) -> tuple:
    return tuple(_plans_manager(dataset_id).get_configuration(configuration).patch_size)
