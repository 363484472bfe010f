"""Model bundle: what the CRCSegmentation module loads, what ``crcseg export`` writes.

A bundle is a folder (STYLE.md: "everything a run needs is in its folder"):
nnU-Net's trained-model layout (``plans.json``, ``dataset.json``,
``dataset_fingerprint.json``, ``fold_N/<checkpoint>.pth``) plus one metadata
file, ``crcseg_model.json``, that says which input channels the model expects,
how its MOS channel is coded, how the OOI was made, the label names, and the
SHA-256 of every checkpoint so that a corrupt or tampered file is refused.

Format 2 (DESIGN.md, "A model bundle says what it is") adds what a bundle is: its ``kind``
(``nnunet`` for AG-CRC, FLARE24 organ interference and RCSegNeXt; ``hcf`` for slice classifier +
SANet; ``usam`` for point refinement), the ``modality`` it expects (``CT`` or ``MR``), which of its
labels are the tumor (``tumor_labels``; every other label is an organ or background and is never
reported as tumor) and, for ``nnunet``, the ``network`` it builds (``networks.nnunet_architectures``),
so a renamed trainer still predicts. An ``hcf`` bundle holds no nnU-Net files: its layout (``hcf.json``,
``classifier/fold_K.pt``, ``sanet/fold_K.pt``) is described and checked in ``hcf_bundle``; a ``usam`` bundle
holds ``usam.pt`` (``usam.bundle``). A format-1 bundle (the shipped demonstration model) reads as
kind ``nnunet``, modality ``CT``, tumor = the ``tumor`` label or the only foreground label.

Format 3 adds, for MR models, ``thick_axis``: the patient axis along which the training images had
their thick axis (``mr_checks.TrainingThickAxis``: ``{"runs": "L-R", "spacing_mm": 4.0, "anisotropy":
4.57, "cases": {"L-R": 12}}``), so that a volume sliced in another plane gets a warning (``model_fit``).
A bundle is written in the oldest format that holds what it records: format 2 without ``thick_axis``
(CT and HCF bundles stay readable by SlicerCRC versions that read format 2), format 3 with it. A bundle
without it (format 1 or 2, or an nnU-Net results folder) falls back to what its ``dataset.json`` records
(``crcseg.thick_axis``, from ``prepare_mr``), else to its ``plans.json``: the thick axis's array axis and
spacing, its patient axis unknown (``model_fit.model_expectation``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

from CRCSegmentationLib.core.errors import BundleError
from CRCSegmentationLib.core.mr_checks import TrainingThickAxis
from OrganGuidanceLib.checksum import sha256_of
from OrganGuidanceLib.json_files import read_json

METADATA_FILE = "crcseg_model.json"
FORMAT_VERSION = 2  # what a bundle without format-3 records is written as
THICK_AXIS_FORMAT = 3  # the format that added ``thick_axis``
NEWEST_FORMAT = THICK_AXIS_FORMAT  # the newest format this version reads
KINDS = ("nnunet", "hcf", "usam")
MODALITIES = ("CT", "MR")
# What a bundle of each kind must record and hold beside its weights (hcf.json is checked by its kind's opener).
KIND_REQUIRED_FIELDS = {"nnunet": ("trainer", "configuration", "plans", "folds", "checkpoint"), "usam": ("checkpoint",)}
KIND_REQUIRED_FILES = {"nnunet": ("plans.json", "dataset.json")}


@dataclass
class BundleMetadata:
    name: str
    version: str
    input_channels: List[str]  # e.g. ["CT", "MOS", "OOI"] (AG-CRC Table V)
    labels: Dict[str, int]
    checkpoint_sha256: Dict[str, str]  # "fold_0/checkpoint_final.pth" -> hex digest
    kind: str = "nnunet"  # one of KINDS
    modality: str = "CT"  # one of MODALITIES: the image the model expects
    tumor_labels: List[str] = field(default_factory=list)  # names in ``labels``; [] in format 1: see module doc
    # FLARE24 organ interference: organ labels the model also segments; never reported as tumor, optionally shown
    organ_labels: List[str] = field(default_factory=list)
    network: str = ""  # nnunet: architecture name; "" = the one the trainer name stands for
    trainer: str = ""  # nnunet: trainer class name stored in the checkpoints
    configuration: str = ""
    plans: str = ""
    folds: List[str] = field(default_factory=list)
    checkpoint: str = ""
    guidance: Dict = field(default_factory=dict)  # MOS coding, OOI parameters, organ set (from prepare)
    description: str = ""
    software: Dict[str, str] = field(default_factory=dict)
    # MR: the training images' thick axis (mr_checks.TrainingThickAxis.to_dict); {} = not recorded
    thick_axis: Dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        if self.thick_axis:  # older readers refuse a field they do not know: they must say "update" instead
            data["format_version"] = max(self.format_version, THICK_AXIS_FORMAT)
        else:
            del data["thick_axis"]
        return json.dumps(data, indent=2)

    def tumor_label_names(self) -> List[str]:
        """The labels reported as tumor; format 1 had none listed: ``tumor``, else the only foreground label."""
        if self.tumor_labels:
            return list(self.tumor_labels)
        if "tumor" in self.labels:
            return ["tumor"]
        foreground = [name for name, value in self.labels.items() if int(value) != 0]
        return foreground if len(foreground) == 1 else []


def software_versions(packages: Sequence[str]) -> Dict[str, str]:
    """Python's and the installed ``packages``' versions, for a bundle's ``software`` record."""
    import sys
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": sys.version.split()[0]}
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return versions


def read_metadata(folder: Path) -> BundleMetadata:
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        raise BundleError(f"{folder}: not a model bundle ({METADATA_FILE} is missing)")
    data = read_json(path, expect=None, error=BundleError)
    if not isinstance(data, dict):
        raise BundleError(f"{path}: bundle metadata must be a JSON object, not {type(data).__name__}")
    version = data.get("format_version", 1)
    if not isinstance(version, int) or version > NEWEST_FORMAT:
        raise BundleError(
            f"{path}: bundle format {version!r} is newer than this software reads (up to {NEWEST_FORMAT}); "
            "update SlicerCRC"
        )
    try:
        metadata = BundleMetadata(**data)
    except TypeError as error:
        raise BundleError(f"{path}: unreadable bundle metadata ({error})") from error
    _check_metadata(metadata, path)
    return metadata


def _check_metadata(metadata: BundleMetadata, path: Path) -> None:
    if metadata.kind not in KINDS:
        raise BundleError(f"{path}: kind '{metadata.kind}' is not one of {list(KINDS)}")
    if metadata.modality not in MODALITIES:
        raise BundleError(f"{path}: modality '{metadata.modality}' is not one of {list(MODALITIES)}")
    unknown = [name for name in [*metadata.tumor_labels, *metadata.organ_labels] if name not in metadata.labels]
    if unknown:
        raise BundleError(f"{path}: tumor_labels/organ_labels {unknown} are not among the labels {sorted(metadata.labels)}")
    both = sorted(set(metadata.tumor_labels) & set(metadata.organ_labels))
    if both:
        raise BundleError(f"{path}: {both} are listed as tumor and as organ labels")
    if not metadata.tumor_label_names():
        raise BundleError(
            f"{path}: no tumor label: list it in tumor_labels (labels: {sorted(metadata.labels)})"
        )
    missing = [k for k in KIND_REQUIRED_FIELDS.get(metadata.kind, ()) if not getattr(metadata, k)]
    if missing:
        raise BundleError(f"{path}: {_article(metadata.kind)} {metadata.kind} bundle needs {missing}")
    if metadata.thick_axis:
        if metadata.modality != "MR":
            raise BundleError(f"{path}: thick_axis is recorded for MR models only; this one is {metadata.modality}")
        try:
            TrainingThickAxis.from_dict(metadata.thick_axis)
        except ValueError as error:
            raise BundleError(f"{path}: {error}") from error


def verify_bundle(folder: Path) -> BundleMetadata:
    """Check that every file the bundle needs exists and every checkpoint has its recorded SHA-256."""
    folder = Path(folder)
    metadata = read_metadata(folder)
    for required in KIND_REQUIRED_FILES.get(metadata.kind, ()):
        if not (folder / required).is_file():
            raise BundleError(f"{folder}: {required} is missing")
    for relative, expected in metadata.checkpoint_sha256.items():
        path = folder / relative
        if not path.is_file():
            raise BundleError(f"{folder}: checkpoint {relative} is missing")
        actual = sha256_of(path)
        if actual != expected:
            raise BundleError(
                f"{path}: SHA-256 {actual} differs from the recorded {expected}; the weights are corrupt or were changed"
            )
    return metadata


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"
