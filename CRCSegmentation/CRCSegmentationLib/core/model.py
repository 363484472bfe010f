"""A validated model, whatever its kind: its files and what the engine needs to know to feed it.

``ModelSource`` is the data object every kind shares (standard library only). The kind's opener
(``models.kinds``: ``nnunet.open``, ``hcf.bundle``) fills it in and ``models.open.open_model`` injects the kind's
segmenter factory, so ``source.segmenter(parameters).segment(...)`` never branches on the kind here.
The channel names: ``KNOWN_CHANNELS`` in the order ``CRCTraining.data.prepare_ct`` writes them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

from CRCSegmentationLib.core.bundle import BundleMetadata
from CRCSegmentationLib.core.errors import ModelError
from OrganGuidanceLib.validation import InputError

if TYPE_CHECKING:  # type hints only: the segmentation contract imports numpy and the image type
    from CRCSegmentationLib.core.segmentation import SegmentationParameters, Segmenter

    SegmenterFactory = Callable[["ModelSource", Optional[SegmentationParameters]], Segmenter]

KNOWN_CHANNELS = ("CT", "MOS", "OOI", "MR")  # AG-CRC Table V inputs (prepare_ct's order); MR: RCSegNeXt's T2
CHANNEL_ALIASES = {"T2": "MR", "T2W": "MR", "MRI": "MR"}  # names MR datasets give their one channel
# The image channel each modality's models take first; MR models take nothing else (no organ guidance on MR).
IMAGE_CHANNEL = {"CT": "CT", "MR": "MR"}


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
    hcf: Any = None  # kind "hcf": hcf.bundle.HCFConfig (slice preprocessing, the two stages' folds, decision rules)
    # Filled in by the kind's opener (``models.kinds``), so that this data object never branches on the kind:
    weight_files: List[Path] = field(default_factory=list)  # every weight file the segmenter loads
    guidance_note: str = ""  # why the kind takes no organ guidance ("" = it may take it)
    segmenter_factory: Optional["SegmenterFactory"] = field(default=None, repr=False, compare=False)

    @property
    def tumor_label(self) -> int:
        """The one label value reported as tumor (every model of this version has exactly one)."""
        if len(self.tumor_labels) != 1:
            raise ModelError(f"{self.folder}: tumor labels {self.tumor_labels}; expected exactly one")
        return self.tumor_labels[0]

    def segmenter(self, parameters: Optional["SegmentationParameters"] = None) -> "Segmenter":
        """The segmenter of this model's kind, initialised once (``open_model`` injected its factory)."""
        if self.segmenter_factory is None:
            raise ModelError(f"{self.folder}: model '{self.name}' was not opened with open_model; its kind "
                             f"'{self.kind}' has no segmenter attached")
        return self.segmenter_factory(self, parameters)

    def checkpoint_paths(self) -> List[Path]:
        """Every weight file the segmenter loads: ``fold_N/<checkpoint>`` (nnunet), the stages' files (hcf)."""
        return list(self.weight_files)

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
        from CRCSegmentationLib.core.mr_checks import check_mr
        from OrganGuidanceLib.validation import check_ct

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
        return "segments MR images" if self.modality == "MR" else self.guidance_note


def canonical_channel(name: object) -> str:
    canonical = str(name).strip().upper()
    return CHANNEL_ALIASES.get(canonical, canonical)


def article(word: str) -> str:
    return "an" if word[:1].upper() in "AEFHILMNORSX" else "a"  # by sound: "an MR", "a CT"


def dataset_channel_names(dataset: dict) -> List[str]:
    """The channels' readable names in order (kept apart from nnU-Net's normalisation names)."""
    names = dataset.get("channel_descriptions") or dataset.get("channel_names") or dataset.get("modality") or {}
    return [str(names[k]) for k in sorted(names, key=int)]


def dataset_modality(dataset: dict) -> str:
    """``MR`` or ``CT``: the ``crcseg`` block of ``crcseg prepare --modality mr``, else the first channel's name."""
    declared = (dataset.get("crcseg") or {}).get("modality")
    if declared:
        return str(declared).upper()
    names = dataset_channel_names(dataset)
    return "MR" if names and canonical_channel(names[0]) == "MR" else "CT"


def channels_from_names(folder: Path, names: Sequence[str], modality: str = "CT") -> List[str]:
    """Map the model's channel names to ours; an unknown name means we cannot build that input."""
    channels = []
    for index, name in enumerate(names):
        canonical = canonical_channel(name)
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
        raise ModelError(f"{folder}: {article(modality)} {modality} model's first input channel must be "
                         f"{image_channel}, the model has {channels or 'none'}")
    foreign = [c for c in channels if c in IMAGE_CHANNEL.values() and c != image_channel]
    if foreign or (modality == "MR" and len(channels) != 1):
        raise ModelError(f"{folder}: {article(modality)} {modality} model with the input channels {channels}; "
                         "this engine builds "
                         + ("only the MR channel for MR models (no organ guidance on MR)" if modality == "MR"
                            else "CT, MOS and OOI for CT models"))
    return channels
