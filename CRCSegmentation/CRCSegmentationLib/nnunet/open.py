"""Open a model of kind ``nnunet``: a bundle of ours or a plain nnU-Net v2 results folder.

Both are nnU-Net's trained-model layout (``plans.json``, ``dataset.json``, ``fold_N/<checkpoint>.pth``);
a bundle adds ``crcseg_model.json`` with the input channels and the SHA-256 of every checkpoint
(``core.bundle.verify_bundle``, checked by ``models.open.open_model`` before this runs). Everything a run needs
is checked here, before any inference starts, so that a user learns about a missing fold or corrupt weights at
once, with the file named. A plain results folder is modality ``CT`` unless its ``dataset.json`` says ``MR``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from CRCSegmentationLib.core.bundle import METADATA_FILE, BundleMetadata
from CRCSegmentationLib.core.checkpoints import PREDICTOR_KEYS, load_checkpoint
from CRCSegmentationLib.core.errors import ModelError
from CRCSegmentationLib.core.model import ModelSource, channels_from_names, dataset_channel_names, dataset_modality
from OrganGuidanceLib.json_files import read_json

DEFAULT_CHECKPOINT = "checkpoint_final.pth"


def open_nnunet_model(folder: Path, metadata: Optional[BundleMetadata], folds, checkpoint) -> ModelSource:
    """The ``ModelSource`` of a verified bundle (``metadata``) or of a results folder (``metadata`` None)."""
    if metadata is None:
        return _open_results_folder(folder, folds, checkpoint)
    return _open_bundle(folder, metadata, folds, checkpoint)


def load_nnunet_weights(source: ModelSource) -> Dict[Path, dict]:
    """Every fold's checkpoint, unpickled weights-only and checked against the model's input channels."""
    return {path: check_checkpoint(path, len(source.input_channels)) for path in source.checkpoint_paths()}


def _with_weight_files(source: ModelSource) -> ModelSource:
    source.weight_files = [source.folder / f"fold_{fold}" / source.checkpoint for fold in source.folds]
    return source


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelError(f"{path.parent}: {path.name} is missing; not an nnU-Net trained-model folder")
    return read_json(path, error=ModelError)


def _open_bundle(folder: Path, metadata: BundleMetadata, folds, checkpoint) -> ModelSource:
    if metadata.network:
        from CRCSegmentationLib.networks.nnunet_architectures import UnknownArchitecture, architecture_for

        try:
            architecture_for(metadata.trainer, metadata.network)
        except UnknownArchitecture as error:
            raise ModelError(f"{folder}: {error}") from error
    checkpoint = checkpoint or metadata.checkpoint
    chosen = [str(f) for f in folds] if folds is not None else list(metadata.folds)
    for fold in chosen:
        relative = f"fold_{fold}/{checkpoint}"
        if relative not in metadata.checkpoint_sha256:
            raise ModelError(
                f"{folder}: fold {fold} / {checkpoint} is not part of this bundle (it has "
                f"{sorted(metadata.checkpoint_sha256)}); unrecorded weights are not used"
            )
    _read_json(folder / "plans.json")  # read when the segmenter is built: a cut-short file is refused here, at once
    dataset = _read_json(folder / "dataset.json")
    channels = channels_from_names(folder, metadata.input_channels, metadata.modality)
    if len(channels) != _dataset_channel_count(folder, dataset):
        raise ModelError(
            f"{folder}: {METADATA_FILE} lists {len(channels)} input channels {channels}, dataset.json "
            f"{_dataset_channel_count(folder, dataset)}; the bundle is inconsistent"
        )
    labels = {str(k): int(v) for k, v in metadata.labels.items()}
    tumor = [labels[name] for name in metadata.tumor_label_names()]
    return _with_weight_files(ModelSource(
        folder, chosen, checkpoint, channels, labels, metadata.name, metadata.trainer, True, metadata,
        metadata.description, metadata.kind, metadata.modality, tumor, metadata.network,
        {name: labels[name] for name in metadata.organ_labels}))


def _open_results_folder(folder: Path, folds, checkpoint) -> ModelSource:
    parts = folder.name.split("__")
    if len(parts) != 3:
        raise ModelError(
            f"{folder}: neither a model bundle ({METADATA_FILE} missing) nor an nnU-Net results folder "
            "named <trainer>__<plans>__<configuration>"
        )
    _read_json(folder / "plans.json")
    dataset = _read_json(folder / "dataset.json")
    checkpoint = checkpoint or DEFAULT_CHECKPOINT
    if folds is None:
        chosen = sorted(p.name[len("fold_"):] for p in folder.glob("fold_*") if (p / checkpoint).is_file())
        if not chosen:
            raise ModelError(f"{folder}: no fold_* folder holds {checkpoint}; train a fold first or name another checkpoint")
    else:
        chosen = [str(f) for f in folds]
    for fold in chosen:
        fold_folder = folder / f"fold_{fold}"
        if not fold_folder.is_dir():
            present = sorted(p.name for p in folder.glob("fold_*"))
            raise ModelError(f"{folder}: fold {fold} is missing (present: {present or 'none'})")
        if not (fold_folder / checkpoint).is_file():
            present = sorted(p.name for p in fold_folder.glob("*.pth"))
            raise ModelError(f"{fold_folder}: checkpoint {checkpoint} is missing (present: {present or 'none'})")
    ordered = dataset_channel_names(dataset)
    modality = dataset_modality(dataset)
    channels = channels_from_names(folder, ordered, modality)
    labels = {str(k): v for k, v in dataset.get("labels", {}).items()}
    tumor = _results_tumor_labels(folder, labels)
    # MR (RCSegNeXt): every other foreground label (the rectum) is an organ, segmented and shown, never tumor.
    organs = ({k: int(v) for k, v in labels.items() if k != "background" and isinstance(v, int) and v not in tumor}
              if modality == "MR" else {})
    return _with_weight_files(ModelSource(
        folder, chosen, checkpoint, channels, labels, folder.parent.name, parts[0], False, None,
        str(dataset.get("description", "")), modality=modality, tumor_labels=tumor, organ_labels=organs))


def _results_tumor_labels(folder: Path, labels: Dict[str, object]) -> List[int]:
    """A results folder has no metadata: the ``tumor`` label, else its only foreground label."""
    if "tumor" in labels and isinstance(labels["tumor"], int):
        return [int(labels["tumor"])]
    foreground = [int(v) for k, v in labels.items() if k != "background" and isinstance(v, int)]
    if len(foreground) == 1:
        return foreground
    raise ModelError(f"{folder}: no 'tumor' label among {labels}; cannot tell which label is tumor "
                     "(export it as a bundle with tumor_labels)")


def _dataset_channel_count(folder: Path, dataset: dict) -> int:
    names = dataset.get("channel_names") or dataset.get("modality")
    if not names:
        raise ModelError(f"{folder}: dataset.json has no channel_names")
    return len(names)


def _dataset_channel_count(folder: Path, dataset: dict) -> int:
    names = dataset.get("channel_names") or dataset.get("modality")
    if not names:
        raise ModelError(f"{folder}: dataset.json has no channel_names")
    return len(names)


def check_checkpoint(path: Path, expected_channels: int) -> dict:
    """The checkpoint's weights and predictor keys (optimizer state dropped), after the channel check."""
    checkpoint = load_checkpoint(path)
    weights = checkpoint["network_weights"]
    # The first 5D/4D convolution kernel is (out, in, *kernel): "in" is the number of input channels.
    first = next((w for w in weights.values() if hasattr(w, "ndim") and w.ndim >= 4), None)
    if first is not None and int(first.shape[1]) != expected_channels:
        raise ModelError(
            f"{path}: the network takes {int(first.shape[1])} input channels but dataset.json describes "
            f"{expected_channels}; wrong checkpoint for this folder"
        )
    return {key: checkpoint[key] for key in PREDICTOR_KEYS if key in checkpoint}
