"""HCF model bundles: slice classifier folds + SANet folds (paper Sec. 3.1, Fig. 3), written and read.

Layout of a bundle folder (kind ``hcf``)::

    crcseg_model.json     bundle.BundleMetadata, format 2: kind "hcf", modality "CT", input_channels ["CT"],
                          labels {"background": 0, "tumor": 1}, tumor_labels ["tumor"], folds (every fold
                          name of either stage), checkpoint_sha256 of every weight file below
    hcf.json              what inference needs besides the weights (HCF_FORMAT 1):
                          {"hcf_format": 1,
                           "slice_config": {hu_window, size, body_threshold_hu, body_margin_px},
                           "classifier": {"network": "slice_classifier", "builder": {"in_channels": 1,
                                          "num_classes": 2}, "folds": ["0", ...], "threshold": 0.5,
                                          "abnormal_class": 1},
                           "sanet": {"network": "sanet", "builder": {"num_classes": 2, "in_channels": 1},
                                     "folds": ["0", ...]},
                           "keep_components": 1}
    classifier/fold_K.pt  torch.save({"format": 1, "network": "slice_classifier", "builder": {...},
    sanet/fold_K.pt                   "fold": "K", "state_dict": model.state_dict()})

The two stages may have different numbers of folds. A bundle with no SANet folds is a classifier-only
bundle: it cannot segment, but it can filter another model's result (``slice_filter``). Weight files are
read with ``torch.load(weights_only=True)`` (a tampered pickle cannot run code) after their SHA-256 is
checked (``bundle.verify_bundle``), and loaded with ``load_state_dict(strict=True)`` into the network
the builder makes (``networks.hcf``): a wrong, missing or corrupt file is a ``ModelError`` naming it.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from CRCSegmentationLib.core.bundle import METADATA_FILE, BundleMetadata, software_versions
from CRCSegmentationLib.core.checkpoints import load_weights_only
from CRCSegmentationLib.core.errors import ModelError
from CRCSegmentationLib.core.model import ModelSource
from CRCSegmentationLib.hcf.preprocessing import SliceDatasetConfig
from CRCSegmentationLib.networks.hcf import build_sanet, build_slice_classifier
from CRCSegmentationLib.networks.hcf.sanet import OUTPUT_STRIDE, is_valid_input_size
from OrganGuidanceLib.atomic import new_folder
from OrganGuidanceLib.checksum import sha256_of
from OrganGuidanceLib.json_files import read_json

HCF_FILE = "hcf.json"
HCF_FORMAT = 1
WEIGHTS_FORMAT = 1
CLASSIFIER, SANET = "classifier", "sanet"  # the stages, also their sub-folders
NETWORKS = {CLASSIFIER: "slice_classifier", SANET: "sanet"}  # stage -> builder name (networks.hcf)
BUILDER_ARGS = {CLASSIFIER: {"in_channels": 1, "num_classes": 2}, SANET: {"num_classes": 2, "in_channels": 1}}
ABNORMAL_CLASS = 1  # the slice classifier's output class of an abnormal (tumor-holding) slice; 0 = normal
HCF_LABELS = {"background": 0, "tumor": 1}


@dataclass
class HCFStage:
    """One of HCF's two networks: which builder, its arguments, and the folds of its ensemble."""

    name: str  # CLASSIFIER | SANET
    network: str  # NETWORKS[name]
    builder: Dict[str, int]
    folds: List[str]

    def weight_file(self, fold: str) -> str:
        """The weight file of ``fold``, relative to the bundle folder (``classifier/fold_0.pt``)."""
        return f"{self.name}/fold_{fold}.pt"

    def weight_files(self) -> List[str]:
        return [self.weight_file(fold) for fold in self.folds]

    def build(self) -> nn.Module:
        """A randomly initialised network of this stage (weights are loaded by the caller)."""
        builder = build_slice_classifier if self.network == NETWORKS[CLASSIFIER] else build_sanet
        return builder(**self.builder)


@dataclass
class HCFConfig:
    """Everything ``hcf.json`` says: slice preprocessing, the two stages, the decision rules."""

    slice_config: SliceDatasetConfig
    classifier: HCFStage
    sanet: HCFStage
    classifier_threshold: float = 0.5  # a fold votes "abnormal" when its softmax p(abnormal) >= this
    keep_components: int = 1  # largest 3D components kept (DESIGN.md: post-processing); 0 keeps all
    abnormal_class: int = ABNORMAL_CLASS

    @property
    def stages(self) -> List[HCFStage]:
        return [self.classifier, self.sanet]

    def weight_files(self) -> List[str]:
        return [relative for stage in self.stages for relative in stage.weight_files()]

    def to_json(self) -> str:
        config = asdict(self.slice_config)
        config["hu_window"] = [float(v) for v in config["hu_window"]]
        data = {
            "hcf_format": HCF_FORMAT,
            "slice_config": config,
            CLASSIFIER: {"network": self.classifier.network, "builder": dict(self.classifier.builder),
                         "folds": list(self.classifier.folds), "threshold": float(self.classifier_threshold),
                         "abnormal_class": int(self.abnormal_class)},
            SANET: {"network": self.sanet.network, "builder": dict(self.sanet.builder), "folds": list(self.sanet.folds)},
            "keep_components": int(self.keep_components),
        }
        return json.dumps(data, indent=2)

    def with_folds(self, folds: Optional[Sequence[str]], folder: Path) -> "HCFConfig":
        """The config restricted to ``folds`` (None: all): each stage keeps the chosen folds it has.

        A chosen fold that neither stage has, or a stage (with folds in the bundle) left without any, is a
        ``ModelError``.
        """
        if folds is None:
            return self
        chosen = [str(f) for f in folds]
        known = set(self.classifier.folds) | set(self.sanet.folds)
        unknown = [f for f in chosen if f not in known]
        if unknown:
            raise ModelError(f"{folder}: folds {unknown} are not part of this HCF bundle (classifier folds "
                             f"{self.classifier.folds}, SANet folds {self.sanet.folds})")
        stages = []
        for stage in self.stages:
            kept = [f for f in stage.folds if f in chosen]
            if stage.folds and not kept:
                raise ModelError(f"{folder}: the folds {chosen} leave the {stage.name} without any fold "
                                 f"(it has {stage.folds})")
            stages.append(HCFStage(stage.name, stage.network, dict(stage.builder), kept))
        return HCFConfig(self.slice_config, stages[0], stages[1], self.classifier_threshold, self.keep_components,
                         self.abnormal_class)


# --- writing ----------------------------------------------------------------------------------
def _state_dict_error(error: Exception, limit: int = 400) -> str:
    """torch's load_state_dict message on one line (its first line only says "Error(s) in loading ...")."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _fit_error(stage: HCFStage, network: nn.Module, state: Dict[str, torch.Tensor]) -> Optional[str]:
    """None when ``state`` loads strictly into ``network``; else why not, naming the stage's network."""
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        return (f"{stage.network} ({', '.join(f'{k}={v}' for k, v in stage.builder.items())}): "
                f"{_state_dict_error(error)}")
    return None


def _check_state(stage: HCFStage, network: nn.Module, state: Dict[str, torch.Tensor], fold: str) -> Dict[str, torch.Tensor]:
    if not isinstance(state, dict):
        raise ValueError(f"{stage.name} fold {fold}: a state dict is needed, got {type(state).__name__}")
    cpu = {str(k): v.detach().cpu() for k, v in state.items()}
    error = _fit_error(stage, network, cpu)
    if error:
        raise ValueError(f"{stage.name} fold {fold}: not the state dict of {error}")
    return cpu


def write_hcf_bundle(folder: Path, classifier_states: Sequence[Dict[str, torch.Tensor]],
                     sanet_states: Sequence[Dict[str, torch.Tensor]], slice_config: SliceDatasetConfig, name: str,
                     description: str = "", version: str = "1", classifier_threshold: float = 0.5,
                     keep_components: int = 1, software: Optional[Dict[str, str]] = None) -> Path:
    """Write an HCF bundle (layout: module docstring) into the new folder ``folder``; returns it.

    ``classifier_states``: ``state_dict()`` of ``build_slice_classifier(1, 2)``, one per fold (at least one);
    ``sanet_states``: of ``build_sanet(2, 1)``, one per fold (none: a classifier-only bundle, for
    ``slice_filter``). Fold K is the K-th state of its list. Every state is checked by loading it (strict)
    into its network first. Atomic: the files are written into a hidden folder beside ``folder`` and it
    is renamed at the end, so a failed export leaves nothing; an existing ``folder`` is never replaced
    (``FileExistsError``).
    """
    folder = Path(folder)
    if folder.exists():  # before the work; new_folder checks again
        raise FileExistsError(f"{folder}: exists already; choose another folder or remove it first")
    if not classifier_states:
        raise ValueError("write_hcf_bundle: at least one slice-classifier fold is needed")
    if not 0.0 < float(classifier_threshold) < 1.0:
        raise ValueError(f"write_hcf_bundle: classifier_threshold {classifier_threshold} is outside (0, 1)")
    if int(keep_components) < 0:
        raise ValueError(f"write_hcf_bundle: keep_components {keep_components} is negative (0 keeps all)")
    if not is_valid_input_size(int(slice_config.size)):
        raise ValueError(f"write_hcf_bundle: slice size {slice_config.size} must be a positive multiple of "
                         f"{OUTPUT_STRIDE} (SANet's output stride)")
    stages = {key: HCFStage(key, NETWORKS[key], dict(BUILDER_ARGS[key]), [str(k) for k in range(len(states))])
              for key, states in ((CLASSIFIER, classifier_states), (SANET, sanet_states))}
    config = HCFConfig(SliceDatasetConfig(tuple(float(v) for v in slice_config.hu_window), int(slice_config.size),
                                          float(slice_config.body_threshold_hu), int(slice_config.body_margin_px)),
                       stages[CLASSIFIER], stages[SANET], float(classifier_threshold), int(keep_components))
    checked = {}
    for key, states in ((CLASSIFIER, classifier_states), (SANET, sanet_states)):
        if states:
            network = stages[key].build()
            checked[key] = [_check_state(stages[key], network, state, str(k)) for k, state in enumerate(states)]
        else:
            checked[key] = []
    with new_folder(folder) as staging:
        checksums = {}
        for key, states in checked.items():
            stage = stages[key]
            for fold, state in zip(stage.folds, states):
                relative = stage.weight_file(fold)
                (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                torch.save({"format": WEIGHTS_FORMAT, "network": stage.network, "builder": dict(stage.builder),
                            "fold": fold, "state_dict": state}, str(staging / relative))
                checksums[relative] = sha256_of(staging / relative)
        (staging / HCF_FILE).write_text(config.to_json())
        all_folds = sorted(set(stages[CLASSIFIER].folds) | set(stages[SANET].folds), key=int)
        metadata = BundleMetadata(
            name=str(name), version=str(version), input_channels=["CT"], labels=dict(HCF_LABELS),
            checkpoint_sha256=checksums, kind="hcf", modality="CT", tumor_labels=["tumor"], folds=all_folds,
            description=str(description),
            software=dict(software) if software is not None else software_versions(("torch", "torchvision", "slicercrc")),
        )
        (staging / METADATA_FILE).write_text(metadata.to_json())
    return folder


# --- reading ----------------------------------------------------------------------------------
def _stage_from_json(data: dict, key: str, path: Path) -> HCFStage:
    block = data.get(key)
    if not isinstance(block, dict):
        raise ModelError(f"{path}: the '{key}' block is missing or not an object")
    network, builder, folds = block.get("network"), block.get("builder"), block.get("folds")
    if network != NETWORKS[key]:
        raise ModelError(f"{path}: {key} network '{network}' is not '{NETWORKS[key]}'")
    if builder != BUILDER_ARGS[key]:
        raise ModelError(f"{path}: {key} builder arguments {builder} are not {BUILDER_ARGS[key]} (this version "
                         "segments 1-channel CT slices into background and tumor)")
    if not isinstance(folds, list) or not all(isinstance(f, str) and f for f in folds) or len(set(folds)) != len(folds):
        raise ModelError(f"{path}: {key} folds {folds!r} must be a list of distinct fold names")
    return HCFStage(key, network, dict(builder), list(folds))


def _number(data: dict, key: str, path: Path, where: str = "") -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ModelError(f"{path}: {where}{key} {value!r} is not a number")
    return float(value)


def read_hcf_config(folder: Path, metadata: BundleMetadata) -> HCFConfig:
    """``hcf.json`` of the bundle ``folder``, checked against its ``crcseg_model.json``; ``ModelError`` names the file."""
    folder = Path(folder)
    path = folder / HCF_FILE
    if not path.is_file():
        raise ModelError(f"{folder}: {HCF_FILE} is missing; a model of kind 'hcf' needs it (slice preprocessing, "
                         "folds, classifier threshold)")
    data = read_json(path, error=ModelError)
    if data.get("hcf_format") != HCF_FORMAT:
        raise ModelError(f"{path}: hcf_format {data.get('hcf_format')!r} is not {HCF_FORMAT}; update SlicerCRC")
    raw = data.get("slice_config")
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: 'slice_config' is missing or not an object")
    window = raw.get("hu_window")
    if (not isinstance(window, list) or len(window) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in window) or not window[1] > window[0]):
        raise ModelError(f"{path}: slice_config hu_window {window!r} must be [low, high] HU with high > low")
    size = raw.get("size")
    if not is_valid_input_size(size):
        raise ModelError(f"{path}: slice_config size {size!r} must be a positive multiple of {OUTPUT_STRIDE} "
                         "(SANet's output stride)")
    margin = raw.get("body_margin_px")
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise ModelError(f"{path}: slice_config body_margin_px {margin!r} must be a whole number >= 0")
    slice_config = SliceDatasetConfig((float(window[0]), float(window[1])), size,
                                      _number(raw, "body_threshold_hu", path, "slice_config "), margin)
    classifier, sanet = _stage_from_json(data, CLASSIFIER, path), _stage_from_json(data, SANET, path)
    if not classifier.folds:
        raise ModelError(f"{path}: the classifier has no folds")
    threshold = _number(data[CLASSIFIER], "threshold", path, "classifier ")
    if not 0.0 < threshold < 1.0:
        raise ModelError(f"{path}: classifier threshold {threshold} is outside (0, 1)")
    abnormal = data[CLASSIFIER].get("abnormal_class", ABNORMAL_CLASS)
    if abnormal not in (0, 1) or isinstance(abnormal, bool):
        raise ModelError(f"{path}: classifier abnormal_class {abnormal!r} is not 0 or 1")
    keep = data.get("keep_components")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise ModelError(f"{path}: keep_components {keep!r} must be a whole number >= 0 (0 keeps every component)")
    config = HCFConfig(slice_config, classifier, sanet, threshold, keep, int(abnormal))
    recorded = set(metadata.checkpoint_sha256)
    unrecorded = [relative for relative in config.weight_files() if relative not in recorded]
    if unrecorded:
        raise ModelError(f"{path}: lists the weight files {unrecorded}, which {METADATA_FILE} has no SHA-256 for; "
                         "unrecorded weights are not used")
    extra = sorted(recorded - set(config.weight_files()))
    if extra:
        raise ModelError(f"{folder}: {METADATA_FILE} records {extra}, which {HCF_FILE} does not list; "
                         "the bundle is inconsistent")
    labels = {str(k): int(v) for k, v in metadata.labels.items()}
    if labels != HCF_LABELS or metadata.tumor_label_names() != ["tumor"]:
        raise ModelError(f"{folder}: an HCF bundle has the labels {HCF_LABELS} with tumor 'tumor'; "
                         f"{METADATA_FILE} says {labels}, tumor {metadata.tumor_label_names()}")
    if [str(c).upper() for c in metadata.input_channels] != ["CT"] or metadata.modality != "CT":
        raise ModelError(f"{folder}: an HCF bundle takes the CT alone; {METADATA_FILE} says input channels "
                         f"{metadata.input_channels}, modality {metadata.modality}")
    return config


def load_stage_weights(path: Path, stage: HCFStage, network: Optional[nn.Module] = None) -> Dict[str, torch.Tensor]:
    """The state dict of one weight file, checked by loading it (strict) into ``network`` (built if None).

    ``ModelError`` naming ``path`` when it is missing, not a weights-only torch file, of another network,
    or its keys or shapes do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: weight file is missing")
    data = load_weights_only(path, "torch file")
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        raise ModelError(f"{path}: not an HCF weight file (a dict with 'state_dict' is expected)")
    if data.get("network") != stage.network:
        raise ModelError(f"{path}: holds the weights of '{data.get('network')}', the {stage.name} needs '{stage.network}'")
    state = data["state_dict"]
    error = _fit_error(stage, network if network is not None else stage.build(), state)
    if error:
        raise ModelError(f"{path}: the weights do not fit {error}")
    return state


def load_hcf_weights(folder: Path, config: HCFConfig) -> Dict[Path, Dict[str, torch.Tensor]]:
    """Every weight file of ``config`` (path -> state dict), each checked by a strict load; one network per stage."""
    weights: Dict[Path, Dict[str, torch.Tensor]] = {}
    for stage in config.stages:
        if not stage.folds:
            continue
        network = stage.build()
        for relative in stage.weight_files():
            path = Path(folder) / relative
            weights[path] = load_stage_weights(path, stage, network)
    return weights


def open_hcf_model(folder: Path, metadata: Optional[BundleMetadata], folds, checkpoint) -> ModelSource:
    """An HCF bundle: ``hcf.json`` checked against the metadata; ``folds`` select in both stages."""
    if metadata is None:
        raise ModelError(f"{folder}: an HCF model is a bundle ({METADATA_FILE} is missing)")
    if checkpoint:
        raise ModelError(f"{folder}: an HCF bundle has one weight file per fold and stage; there is no "
                         f"checkpoint '{checkpoint}' to choose")
    config = read_hcf_config(folder, metadata).with_folds(folds, folder)
    chosen = sorted(set(config.classifier.folds) | set(config.sanet.folds), key=lambda f: (len(f), f))
    labels = {str(k): int(v) for k, v in metadata.labels.items()}
    return ModelSource(folder, chosen, "", ["CT"], labels, metadata.name, metadata.trainer, True, metadata,
                       metadata.description, "hcf", "CT", [labels[name] for name in metadata.tumor_label_names()],
                       hcf=config, weight_files=[folder / relative for relative in config.weight_files()],
                       guidance_note="segments CT slices with a slice classifier and SANet (HCF)")


def load_hcf_model_weights(source: ModelSource) -> Dict[Path, Dict[str, torch.Tensor]]:
    """``load_hcf_weights`` of an opened HCF model (the kind registry's weight loader)."""
    return load_hcf_weights(source.folder, source.hcf)
