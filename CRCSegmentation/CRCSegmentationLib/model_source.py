"""Where a tumor model comes from: our model bundle or a plain nnU-Net v2 results folder.

Both are nnU-Net's trained-model layout (``plans.json``, ``dataset.json``,
``fold_N/<checkpoint>.pth``); a bundle adds ``crcseg_model.json`` with the input
channels and the SHA-256 of every checkpoint (``bundle.verify_bundle``).
``open_model`` checks everything a run needs before any inference starts, so that a
user learns about a missing fold or corrupt weights at once, with the file named.

A bundle also says what kind of model it is (``bundle.KINDS``); ``ModelSource.segmenter`` returns
the segmenter of that kind (``segmenters.py``), each with the same ``segment(image, guidance,
progress, cancel)``, so callers never branch on the kind. A plain results folder is kind ``nnunet``,
modality ``CT``. A bundle of kind ``hcf`` (slice classifier + SANet, ``hcf_bundle``) has no nnU-Net files:
its ``hcf.json`` and ``classifier/fold_K.pt`` / ``sanet/fold_K.pt`` weight files are checked instead.

Checkpoints are opened with ``torch.load(weights_only=True)``: a tampered pickle
cannot run code. nnU-Net 2.8.1 checkpoints hold tensors, dicts, lists, strings and
numbers, plus numpy float32 scalars in their training log (``logging``, ``_best_ema``),
which ``weights_only`` refuses by default ("Unsupported global: numpy._core.multiarray.
scalar", then "numpy.dtypes.Float32DType"). Exactly those are allow-listed
(``CHECKPOINT_SAFE_GLOBALS``): rebuilding a numpy scalar from its bytes runs no code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Union

from OrganGuidanceLib.json_files import read_json
from OrganGuidanceLib.validation import InputError

from .bundle import METADATA_FILE, BundleError, BundleMetadata, verify_bundle

if TYPE_CHECKING:  # type hints only: the segmenters import torch and nnU-Net
    from .segmenters import Segmenter

KNOWN_CHANNELS = ("CT", "MOS", "OOI", "MR")  # AG-CRC Table V inputs (prepare.py's order); MR: RCSegNeXt's T2
CHANNEL_ALIASES = {"T2": "MR", "T2W": "MR", "MRI": "MR"}  # names MR datasets give their one channel
# The image channel each modality's models take first; MR models take nothing else (no organ guidance on MR).
IMAGE_CHANNEL = {"CT": "CT", "MR": "MR"}
DEFAULT_CHECKPOINT = "checkpoint_final.pth"
# Keys nnU-Net's predictor reads from a checkpoint (initialize_from_trained_model_folder).
REQUIRED_CHECKPOINT_KEYS = ("network_weights", "trainer_name", "init_args")


class ModelError(BundleError, InputError):
    """A model folder cannot be used; the message names the folder or file and the problem."""


@dataclass
class ModelSource:
    """A validated model: its files plus what our engine needs to know to feed it."""

    folder: Path  # nnU-Net trained-model layout for kind "nnunet"
    folds: List[str]  # "0".."4" or "all"
    checkpoint: str  # file name inside each fold folder
    input_channels: List[str]  # subset of KNOWN_CHANNELS in the model's channel order, e.g. ["CT"]
    labels: Dict[str, int]
    name: str
    trainer: str
    is_bundle: bool = False
    metadata: Optional[BundleMetadata] = None
    description: str = ""
    kind: str = "nnunet"  # bundle.KINDS
    modality: str = "CT"  # bundle.MODALITIES
    tumor_labels: List[int] = field(default_factory=list)  # label values reported as tumor
    network: str = ""  # architecture the bundle declares ("" = from the trainer name)
    organ_labels: Dict[str, int] = field(default_factory=dict)  # organ-interference models: name -> value
    # What ``open_model`` already unpickled (weights and the keys the predictor reads), so that building
    # the segmenter does not load every checkpoint a second time; the predictor keeps the same dicts.
    loaded_checkpoints: Dict[Path, dict] = field(default_factory=dict, repr=False, compare=False)
    hcf: Any = None  # kind "hcf": hcf_bundle.HCFConfig (slice preprocessing, the two stages' folds, decision rules)

    @property
    def tumor_label(self) -> int:
        """The one label value reported as tumor (every model of this version has exactly one)."""
        if len(self.tumor_labels) != 1:
            raise ModelError(f"{self.folder}: tumor labels {self.tumor_labels}; expected exactly one")
        return self.tumor_labels[0]

    def segmenter(self, parameters=None) -> "Segmenter":
        """The segmenter of this model's kind, initialised once; ``parameters``: ``SegmentationParameters``."""
        from .segmenters import make_segmenter

        return make_segmenter(self, parameters)

    def checkpoint_paths(self) -> List[Path]:
        """Every weight file the segmenter loads: ``fold_N/<checkpoint>`` (nnunet), the stages' files (hcf)."""
        if self.kind == "hcf":
            return [self.folder / relative for relative in self.hcf.weight_files()]
        return [self.folder / f"fold_{fold}" / self.checkpoint for fold in self.folds]

    def check_channels(self, available: Sequence[str]) -> None:
        """Raise ``ModelError`` when the model needs an input channel the caller cannot provide."""
        missing = [c for c in self.input_channels if c not in available]
        if missing:
            raise ModelError(
                f"model '{self.name}' needs the input channels {self.input_channels} ({len(self.input_channels)}), "
                f"but only {list(available)} ({len(available)}) are available; missing {missing}"
                + (": run organ guidance first (the MOS and OOI channels come from it)" if "CT" in available else "")
            )

    def check_image(self, image) -> None:
        """``InputError`` unless ``image`` (an ``Image``) is of this model's modality: a CT for CT models
        (``check_ct``), an MR volume for MR models (``mr_checks.check_mr``); the message names both."""
        from OrganGuidanceLib.validation import check_ct

        from .mr_checks import check_mr

        try:
            (check_mr if self.modality == "MR" else check_ct)(image)
        except InputError as error:
            raise InputError(f"model '{self.name}' segments {self.modality} images: {error}") from error

    @property
    def uses_guidance(self) -> bool:
        """Whether the model reads organ-guidance channels (MOS, OOI); never for MR models."""
        return any(channel in ("MOS", "OOI") for channel in self.input_channels)

    @property
    def no_guidance_reason(self) -> str:
        """Why the model takes no organ guidance at all (not even to narrow its region); "" when it takes it.

        MR models (RCSegNeXt): organ guidance is a CT method; HCF models: every axial slice goes to the
        slice classifier, the organs play no part.
        """
        if self.modality == "MR":
            return "segments MR images"
        if self.kind == "hcf":
            return "segments CT slices with a slice classifier and SANet (HCF)"
        return ""


def open_model(path: Union[str, Path], folds: Optional[Sequence[Union[str, int]]] = None,
               checkpoint: Optional[str] = None, load_checkpoints: bool = True) -> ModelSource:
    """Validate a bundle, an nnU-Net results folder or a catalogue model (by name) and describe it.

    Raises ``ModelError``. ``open_model(...).segmenter(parameters)`` gives the model's segmenter.

    ``folds``: None = the bundle's folds, or every ``fold_*`` holding the checkpoint.
    ``load_checkpoints``: also unpickle every checkpoint (``weights_only=True``) and check its
    network's input channels against ``dataset.json``; off only where the caller loads them next anyway.
    """
    from .catalogue import resolve_model

    folder = resolve_model(path)
    if (folder / METADATA_FILE).is_file():
        source = _open_bundle(folder, folds, checkpoint)
    else:
        source = _open_results_folder(folder, folds, checkpoint)
    if load_checkpoints:
        if source.kind == "hcf":
            from .hcf_bundle import load_hcf_weights

            source.loaded_checkpoints.update(load_hcf_weights(source.folder, source.hcf))
        else:
            for path in source.checkpoint_paths():
                source.loaded_checkpoints[path] = _check_checkpoint(path, len(source.input_channels))
    return source


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelError(f"{path.parent}: {path.name} is missing; not an nnU-Net trained-model folder")
    return read_json(path, error=ModelError)


def _open_bundle(folder: Path, folds, checkpoint) -> ModelSource:
    try:
        metadata = verify_bundle(folder)  # SHA-256 of every recorded checkpoint
    except BundleError as error:
        raise ModelError(str(error)) from error
    from .segmenters import SEGMENTER_KINDS

    if metadata.kind not in SEGMENTER_KINDS:
        raise ModelError(
            f"{folder}: a model of kind '{metadata.kind}', which this version of SlicerCRC cannot run yet "
            f"(it runs {sorted(SEGMENTER_KINDS)}); update SlicerCRC"
        )
    if metadata.kind == "hcf":
        if checkpoint:
            raise ModelError(f"{folder}: an HCF bundle has one weight file per fold and stage; there is no "
                             f"checkpoint '{checkpoint}' to choose")
        return _open_hcf_bundle(folder, metadata, folds)
    if metadata.network:
        from .networks.nnunet_architectures import UnknownArchitecture, architecture_for

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
    channels = _channels_from_names(folder, metadata.input_channels, metadata.modality)
    if len(channels) != _dataset_channel_count(folder, dataset):
        raise ModelError(
            f"{folder}: {METADATA_FILE} lists {len(channels)} input channels {channels}, dataset.json "
            f"{_dataset_channel_count(folder, dataset)}; the bundle is inconsistent"
        )
    labels = {str(k): int(v) for k, v in metadata.labels.items()}
    tumor = [labels[name] for name in metadata.tumor_label_names()]
    return ModelSource(folder, chosen, checkpoint, channels, labels, metadata.name, metadata.trainer,
                       True, metadata, metadata.description, metadata.kind, metadata.modality, tumor,
                       metadata.network, {name: labels[name] for name in metadata.organ_labels})


def _open_hcf_bundle(folder: Path, metadata: BundleMetadata, folds) -> ModelSource:
    """An HCF bundle (``hcf_bundle``): ``hcf.json`` checked against the metadata; ``folds`` select in both stages."""
    from .hcf_bundle import read_hcf_config

    config = read_hcf_config(folder, metadata).with_folds(folds, folder)
    chosen = sorted(set(config.classifier.folds) | set(config.sanet.folds), key=lambda f: (len(f), f))
    labels = {str(k): int(v) for k, v in metadata.labels.items()}
    return ModelSource(folder, chosen, "", ["CT"], labels, metadata.name, metadata.trainer, True, metadata,
                       metadata.description, "hcf", "CT", [labels[name] for name in metadata.tumor_label_names()],
                       hcf=config)


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
    channels = _channels_from_names(folder, ordered, modality)
    labels = {str(k): v for k, v in dataset.get("labels", {}).items()}
    tumor = _results_tumor_labels(folder, labels)
    # MR (RCSegNeXt): every other foreground label (the rectum) is an organ, segmented and shown, never tumor.
    organs = ({k: int(v) for k, v in labels.items() if k != "background" and isinstance(v, int) and v not in tumor}
              if modality == "MR" else {})
    return ModelSource(folder, chosen, checkpoint, channels, labels, folder.parent.name, parts[0], False, None,
                       str(dataset.get("description", "")), modality=modality, tumor_labels=tumor,
                       organ_labels=organs)


def _canonical_channel(name: object) -> str:
    canonical = str(name).strip().upper()
    return CHANNEL_ALIASES.get(canonical, canonical)


def _article(word: str) -> str:
    return "an" if word[:1].upper() in "AEFHILMNORSX" else "a"  # by sound: "an MR", "a CT"


def dataset_channel_names(dataset: dict) -> List[str]:
    """The channels' readable names in order (``prepare.py`` keeps them apart from nnU-Net's normalisation names)."""
    names = dataset.get("channel_descriptions") or dataset.get("channel_names") or dataset.get("modality") or {}
    return [str(names[k]) for k in sorted(names, key=int)]


def dataset_modality(dataset: dict) -> str:
    """``MR`` or ``CT``: the ``crcseg`` block of ``crcseg prepare --modality mr``, else the first channel's name."""
    declared = (dataset.get("crcseg") or {}).get("modality")
    if declared:
        return str(declared).upper()
    names = dataset_channel_names(dataset)
    return "MR" if names and _canonical_channel(names[0]) == "MR" else "CT"


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


def _channels_from_names(folder: Path, names: Sequence[str], modality: str = "CT") -> List[str]:
    """Map the model's channel names to ours; an unknown name means we cannot build that input."""
    channels = []
    for index, name in enumerate(names):
        canonical = _canonical_channel(name)
        if canonical not in KNOWN_CHANNELS:
            raise ModelError(
                f"{folder}: input channel {index} is '{name}'; this engine builds only {list(KNOWN_CHANNELS)} "
                "(add channel_descriptions to dataset.json to name them)"
            )
        channels.append(canonical)
    image_channel = IMAGE_CHANNEL.get(modality)
    if image_channel is None:
        raise ModelError(f"{folder}: modality '{modality}' is not one of {sorted(IMAGE_CHANNEL)}")
    if not channels or channels[0] != image_channel:
        raise ModelError(f"{folder}: {_article(modality)} {modality} model's first input channel must be "
                         f"{image_channel}, the model has {channels or 'none'}")
    foreign = [c for c in channels if c in IMAGE_CHANNEL.values() and c != image_channel]
    if foreign or (modality == "MR" and len(channels) != 1):
        raise ModelError(f"{folder}: {_article(modality)} {modality} model with the input channels {channels}; "
                         "this engine builds "
                         + ("only the MR channel for MR models (no organ guidance on MR)" if modality == "MR"
                            else "CT, MOS and OOI for CT models"))
    return channels


def checkpoint_safe_globals() -> list:
    """The numpy globals an nnU-Net checkpoint's training log needs (numpy 1.25+ and 2.x names)."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
    return [core.multiarray.scalar, np.dtype, np.dtypes.Float32DType, np.dtypes.Float64DType]


def load_weights_only(path: Path, what: str = "checkpoint", safe_globals: Sequence = ()) -> object:
    """``torch.load(weights_only=True)`` on the CPU; ``ModelError`` naming ``path`` if it cannot be read so."""
    import torch

    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file; all mean "unusable"
        raise ModelError(
            f"{path}: cannot be loaded as a weights-only {what} ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); the file is corrupt, truncated, or holds code"
        ) from error


def load_checkpoint(path: Path) -> dict:
    """Unpickle a checkpoint without running code (``weights_only=True``); ``ModelError`` if corrupt."""
    data = load_weights_only(path, "checkpoint", checkpoint_safe_globals())
    if not isinstance(data, dict):
        raise ModelError(f"{path}: holds a {type(data).__name__}, not an nnU-Net checkpoint")
    missing = [k for k in REQUIRED_CHECKPOINT_KEYS if k not in data]
    if missing:
        raise ModelError(f"{path}: not an nnU-Net checkpoint (keys {missing} are missing)")
    return data


PREDICTOR_KEYS = (*REQUIRED_CHECKPOINT_KEYS, "inference_allowed_mirroring_axes")


def _check_checkpoint(path: Path, expected_channels: int) -> dict:
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
