"""Model bundle: what the CRCSegmentation module loads, what ``crcseg export`` writes.

A bundle is a folder (STYLE.md: "everything a run needs is in its folder"):
nnU-Net's trained-model layout (``plans.json``, ``dataset.json``,
``dataset_fingerprint.json``, ``fold_N/<checkpoint>.pth``) plus one metadata
file, ``crcseg_model.json``, that says which input channels the model expects,
how its MOS channel is coded, how the OOI was made, the label names, and the
SHA-256 of every checkpoint so that a corrupt or tampered file is refused.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List

from OrganGuidanceLib.checksum import sha256_of

METADATA_FILE = "crcseg_model.json"
FORMAT_VERSION = 1


class BundleError(ValueError):
    """A model bundle is incomplete, inconsistent or corrupt; the message names the file."""



@dataclass
class BundleMetadata:
    name: str
    version: str
    trainer: str
    configuration: str
    plans: str
    folds: List[str]
    checkpoint: str
    input_channels: List[str]  # e.g. ["CT", "MOS", "OOI"] (AG-CRC Table V)
    labels: Dict[str, int]
    checkpoint_sha256: Dict[str, str]  # "fold_0/checkpoint_final.pth" -> hex digest
    guidance: Dict = field(default_factory=dict)  # MOS coding, OOI parameters, organ set (from prepare)
    description: str = ""
    software: Dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def read_metadata(folder: Path) -> BundleMetadata:
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        raise BundleError(f"{folder}: not a model bundle ({METADATA_FILE} is missing)")
    try:
        data = json.loads(path.read_text())
        metadata = BundleMetadata(**data)
    except (json.JSONDecodeError, TypeError) as error:
        raise BundleError(f"{path}: unreadable bundle metadata ({error})") from error
    if metadata.format_version > FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format {metadata.format_version} is newer than this software supports")
    return metadata


def verify_bundle(folder: Path) -> BundleMetadata:
    """Check that every file the bundle needs exists and every checkpoint has its recorded SHA-256."""
    folder = Path(folder)
    metadata = read_metadata(folder)
    for required in ("plans.json", "dataset.json"):
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
