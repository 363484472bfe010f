"""U-SAM model bundles (kind ``usam``): a folder a catalogue can ship and ``open_model`` recognises.

Layout::

    crcseg_model.json   bundle.BundleMetadata, format 2: kind "usam", modality "CT", input_channels ["CT"],
                        labels = the config's class names -> class index, tumor_labels ["tumor"],
                        checkpoint "usam.pt", checkpoint_sha256 {"usam.pt": ...}
    usam.pt             a U-SAM checkpoint (``usam.checkpoint``: format, version, config with the network's
                        sizes, weights; extra: "demonstration", "description")

A U-SAM model segments one slice from prompts (points, boxes); it is not a 3D segmenter, so its
``ModelSource`` has no segmenter: the point-refinement panel and ``models.usam.load_usam_model`` load it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

import torch

from CRCSegmentationLib.core.bundle import METADATA_FILE, BundleMetadata, software_versions, verify_bundle
from CRCSegmentationLib.core.errors import BundleError, ModelError
from CRCSegmentationLib.core.model import ModelSource
from CRCSegmentationLib.networks.usam import USAM
from CRCSegmentationLib.usam.checkpoint import read_usam_checkpoint, save_usam_checkpoint
from OrganGuidanceLib.atomic import new_folder
from OrganGuidanceLib.checksum import sha256_of
from OrganGuidanceLib.validation import InputError

KIND = "usam"
USAM_FILE = "usam.pt"
TUMOR_CLASS = "tumor"
NOT_A_SEGMENTER = (
    "a U-SAM checkpoint is for point prompts (the point-refinement panel, `crcseg usam-*`), not automatic "
    "3D segmentation: choose an nnU-Net, RCSegNeXt or HCF model to segment a volume"
)


def write_usam_bundle(
    folder: Union[str, Path],
    model: USAM,
    name: str,
    version: str,
    description: str,
    demonstration: bool,
    replace: bool = False,
) -> Path:
    """Write ``model`` as a U-SAM bundle into ``folder`` (made in one rename; ``replace`` an existing one)."""
    folder = Path(folder)
    if not name or not version:
        raise InputError(f"U-SAM bundle {folder}: name {name!r} and version {version!r} must not be empty")
    classes = list(model.config.class_names)
    if TUMOR_CLASS not in classes:
        raise InputError(f"U-SAM bundle {folder}: the model's classes {classes} have no '{TUMOR_CLASS}'")
    with new_folder(folder, replace=replace) as staging:
        save_usam_checkpoint(
            staging / USAM_FILE, model, {"demonstration": bool(demonstration), "description": description}
        )
        metadata = BundleMetadata(
            name=name,
            version=version,
            input_channels=["CT"],
            labels={label: index for index, label in enumerate(classes)},
            checkpoint_sha256={USAM_FILE: sha256_of(staging / USAM_FILE)},
            kind=KIND,
            modality="CT",
            tumor_labels=[TUMOR_CLASS],
            checkpoint=USAM_FILE,
            description=description,
            software=software_versions(["torch", "segment_anything"]),
        )
        (staging / METADATA_FILE).write_text(metadata.to_json() + "\n")
    return folder


def _checked_metadata(folder: Path) -> BundleMetadata:
    try:
        metadata = verify_bundle(folder)  # SHA-256 of usam.pt
    except BundleError as error:
        raise ModelError(str(error)) from error
    if metadata.kind != KIND:
        raise ModelError(f"{folder}: a model of kind '{metadata.kind}', not a U-SAM ({KIND}) bundle")
    _check_usam_checkpoint(folder, metadata)
    return metadata


def _check_usam_checkpoint(folder: Path, metadata: BundleMetadata) -> None:
    if metadata.checkpoint not in metadata.checkpoint_sha256:
        raise ModelError(
            f"{folder}: a U-SAM bundle's checkpoint {metadata.checkpoint!r} has no recorded SHA-256 "
            f"(a U-SAM bundle holds {USAM_FILE}, written by write_usam_bundle)"
        )


def load_usam_bundle(folder: Union[str, Path], device: Union[str, torch.device] = "cpu") -> USAM:
    """The U-SAM network of a bundle (eval mode, on ``device``); ``ModelError`` naming the problem."""
    folder = Path(folder)
    if not (folder / METADATA_FILE).is_file():
        raise ModelError(f"{folder}: not a model bundle ({METADATA_FILE} is missing)")
    metadata = _checked_metadata(folder)
    try:
        model, _ = read_usam_checkpoint(folder / metadata.checkpoint, device)
    except InputError as error:
        raise ModelError(str(error)) from error
    classes = {label: index for index, label in enumerate(model.config.class_names)}
    if classes != metadata.labels:
        raise ModelError(
            f"{folder}: {METADATA_FILE} labels {metadata.labels} differ from the checkpoint's classes {classes}"
        )
    return model


def open_usam_model(folder: Path, metadata: Optional[BundleMetadata], folds: object,
                    checkpoint: Optional[str]) -> ModelSource:
    """``models.kinds`` opener of kind ``usam``: describes the bundle (it has no 3D segmenter)."""
    if metadata is None:
        raise ModelError(f"{folder}: a U-SAM model needs its {METADATA_FILE}")
    _check_usam_checkpoint(folder, metadata)
    if checkpoint not in (None, metadata.checkpoint):
        raise ModelError(f"{folder}: a U-SAM bundle has one checkpoint, {metadata.checkpoint!r}, not {checkpoint!r}")
    return ModelSource(
        folder=folder, folds=[], checkpoint=metadata.checkpoint, input_channels=list(metadata.input_channels),
        labels=dict(metadata.labels), name=metadata.name, trainer="usam", is_bundle=True, metadata=metadata,
        description=metadata.description, kind=KIND, modality=metadata.modality,
        tumor_labels=[metadata.labels[label] for label in metadata.tumor_label_names()],
        weight_files=[folder / metadata.checkpoint], guidance_note="is a point-prompt model",
    )


def load_usam_source_weights(source: ModelSource) -> Dict[Path, dict]:
    """``models.kinds`` weight check of kind ``usam``: the checkpoint loads into its network."""
    load_usam_bundle(source.folder)
    return {}


def refuse_usam_segmenter(source: ModelSource, parameters: object) -> None:
    """``models.kinds`` segmenter of kind ``usam``: there is none."""
    raise ModelError(f"{source.folder}: {NOT_A_SEGMENTER}")
