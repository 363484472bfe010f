"""``crcseg export``: a trained nnU-Net model -> a model bundle for the CRCSegmentation module."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from CRCSegmentationLib.core.bundle import METADATA_FILE, BundleMetadata, software_versions
from CRCSegmentationLib.core.model import dataset_channel_names, dataset_modality
from CRCSegmentationLib.core.mr_checks import TrainingThickAxis
from CRCSegmentationLib.networks.nnunet_architectures import TRAINER_ARCHITECTURES
from CRCTraining import __version__
from CRCTraining.nnunet.planning import CONFIGURATION, PLANS
from OrganGuidanceLib.atomic import new_folder
from OrganGuidanceLib.checksum import sha256_of
from OrganGuidanceLib.json_files import read_json
from OrganGuidanceLib.validation import InputError

NNUNET_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")


def trained_model_folder(results: Path, dataset: str, trainer: str, configuration: str = CONFIGURATION,
                         plans: str = PLANS) -> Path:
    return Path(results) / dataset / f"{trainer}__{plans}__{configuration}"


def export_bundle(
    model_folder: Path,
    output: Path,
    folds: Sequence[str] = ("0",),
    checkpoint: str = "checkpoint_final.pth",
    name: Optional[str] = None,
    description: str = "",
) -> Path:
    """Copy nnU-Net's files and the chosen folds' checkpoints, add ``crcseg_model.json``; atomic."""
    model_folder, output = Path(model_folder), Path(output)
    parts = model_folder.name.split("__")
    if len(parts) != 3:
        raise InputError(f"{model_folder}: not an nnU-Net results folder (its name must be "
                         "<trainer>__<plans>__<configuration>, e.g. nnUNetTrainerAGCRC__nnUNetPlans__3d_fullres)")
    trainer, plans, configuration = parts
    missing = [f for f in ("plans.json", "dataset.json") if not (model_folder / f).is_file()]
    checkpoints = {f"fold_{fold}/{checkpoint}": model_folder / f"fold_{fold}" / checkpoint for fold in folds}
    missing += [str(p.relative_to(model_folder)) for p in checkpoints.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{model_folder}: cannot export, missing {', '.join(missing)}")
    read_json(model_folder / "plans.json")  # a cut-short plans file is refused here, not in every user's Slicer
    dataset_json = read_json(model_folder / "dataset.json")
    labels = {str(k): int(v) for k, v in dataset_json["labels"].items()}
    tumor_labels, organ_labels = label_roles(model_folder, dataset_json)
    thick_axis = training_thick_axis_record(model_folder, dataset_json)
    with new_folder(output) as staging:
        for file in NNUNET_FILES:
            if (model_folder / file).is_file():
                shutil.copy2(model_folder / file, staging / file)
        for relative, source in checkpoints.items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, staging / relative)
        metadata = BundleMetadata(
            name=name or model_folder.parent.name,
            version=__version__,
            trainer=trainer,
            configuration=configuration,
            plans=plans,
            folds=[str(f) for f in folds],
            checkpoint=checkpoint,
            input_channels=dataset_channel_names(dataset_json),
            labels=labels,
            checkpoint_sha256={relative: sha256_of(staging / relative) for relative in checkpoints},
            guidance=dataset_json.get("agcrc", {}),
            description=description,
            software=software_versions(("nnunetv2", "torch", "slicercrc")),
            kind="nnunet",
            modality=dataset_modality(dataset_json),
            tumor_labels=tumor_labels,
            organ_labels=organ_labels,  # FLARE24 organ interference: segmented, never reported as tumor
            # our trainers' network, so the bundle predicts without CRCTraining; nnU-Net's own trainers: ""
            network=TRAINER_ARCHITECTURES.get(trainer, ""),
            thick_axis=thick_axis,  # MR: the training images' thick axis (prepare_mr), so a wrong plane is flagged
        )
        (staging / METADATA_FILE).write_text(metadata.to_json())
    return output


def training_thick_axis_record(model_folder: Path, dataset_json: dict) -> dict:
    """An MR model's training thick axis as ``prepare_mr`` recorded it in ``dataset.json`` ({} if not recorded)."""
    record = (dataset_json.get("crcseg") or {}).get("thick_axis")
    if dataset_modality(dataset_json) != "MR" or record is None:
        return {}
    try:
        return TrainingThickAxis.from_dict(record).to_dict()
    except ValueError as error:
        raise InputError(f"{model_folder / 'dataset.json'}: crcseg.{error}") from error


def label_roles(model_folder: Path, dataset_json: dict) -> Tuple[List[str], List[str]]:
    """(tumor label names, organ label names) of a trained model, from its ``dataset.json``.

    A dataset prepared with ``labels="organ-interference"`` (FLARE24 §2.2) records both in
    ``agcrc["organ_interference"]``; any other dataset has no organ labels.
    """
    labels = {str(k): int(v) for k, v in dataset_json["labels"].items()}
    if dataset_modality(dataset_json) == "MR":  # RCSegNeXt: the rectum is segmented and shown, never tumor
        tumor = _tumor_labels(model_folder, labels)
        return tumor, [name for name, value in labels.items() if value != 0 and name not in tumor]
    block = (dataset_json.get("agcrc") or {}).get("organ_interference")
    if not block:
        return _tumor_labels(model_folder, labels), []
    tumor, organs = [str(block["tumor_label"])], [str(name) for name in block["organ_labels"]]
    unknown = [name for name in [*tumor, *organs] if name not in labels]
    if unknown:
        raise ValueError(f"{model_folder}: dataset.json's organ_interference block names {unknown}, "
                         f"which are not among its labels {sorted(labels)}")
    return tumor, organs


def _tumor_labels(model_folder: Path, labels: dict) -> list:
    """The label names the bundle reports as tumor: ``tumor``, else the only foreground label."""
    if "tumor" in labels:
        return ["tumor"]
    foreground = [name for name, value in labels.items() if value != 0]
    if len(foreground) != 1:
        raise ValueError(f"{model_folder}: cannot tell which of the labels {sorted(labels)} is the tumor "
                         "(name it 'tumor' in dataset.json)")
    return foreground
