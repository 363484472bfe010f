"""The model catalogue (the module's ``Resources/models.json``): models a user can pick by name.

An entry either points to a folder shipped with the module (``"path"``, relative to the
catalogue's own folder, e.g. ``Models/demo_phantom``, the demonstration model) or to an archive to download (``"url"``,
a zip of a model bundle, with its ``"sha256"``). Downloads land in a user cache
(``~/.cache/slicercrc/models/<name>-<version>``); the archive's SHA-256 is checked on every
fetch, before anything is unpacked, and the unpacked bundle is checked again by
``open_model`` (per-checkpoint SHA-256). ``SLICERCRC_MODEL_CATALOGUE`` names another file.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

from CRCSegmentationLib.core.errors import ModelError
from CRCSegmentationLib.core.resources import catalogue_file
from OrganGuidanceLib.atomic import new_folder
from OrganGuidanceLib.download import ChecksumMismatch, DownloadUnavailable, download_verified
from OrganGuidanceLib.json_files import read_json

CATALOGUE_ENVIRONMENT = "SLICERCRC_MODEL_CATALOGUE"
DEFAULT_CACHE = Path("~/.cache/slicercrc/models")
DOWNLOAD_TIMEOUT_S = 60


@dataclass
class CatalogueEntry:
    name: str
    version: str
    input_channels: List[str]
    description: str = ""
    demonstration: bool = False  # True: trained on phantoms, for demos only, never clinical use
    url: str = ""  # zip archive of a model bundle
    sha256: str = ""  # of the archive at ``url``
    path: str = ""  # a shipped folder, relative to the catalogue file's folder
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "CatalogueEntry":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "extra"}
        extra = {k: v for k, v in data.items() if k not in cls.__dataclass_fields__}
        try:
            return cls(**known, extra=extra)
        except TypeError as error:
            raise ModelError(f"model catalogue entry {data.get('name', data)!r}: {error}") from error


def catalogue_path() -> Path:
    """``SLICERCRC_MODEL_CATALOGUE``, else the module's own catalogue (``resources.py``)."""
    given = os.environ.get(CATALOGUE_ENVIRONMENT)
    if given:
        return Path(given)
    try:
        return catalogue_file()
    except FileNotFoundError as error:
        raise ModelError(str(error)) from error


def list_models(path: Optional[Path] = None) -> List[CatalogueEntry]:
    """Every entry of the catalogue, in file order."""
    path = Path(path) if path is not None else catalogue_path()
    if not path.is_file():
        raise ModelError(f"{path}: the model catalogue is missing")
    data = read_json(path, expect=(dict, list), error=ModelError)
    entries = data.get("models", []) if isinstance(data, dict) else data
    return [CatalogueEntry.from_dict(entry) for entry in entries]


def resolve_model(spec: Union[str, Path]) -> Path:
    """A model folder as given, else the catalogue model of that name (downloaded and checksummed once)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelError(f"model: {path} is a file; give a model folder (bundle or nnU-Net results) or a catalogue name")
    entries = list_models()
    if str(spec) not in [entry.name for entry in entries]:
        names = ", ".join(entry.name for entry in entries) or "catalogue empty"
        raise ModelError(f"model: '{spec}' is neither a model folder nor a catalogue model ({names})")
    return Path(fetch_model(str(spec)))


def find_model(name: str, path: Optional[Path] = None) -> CatalogueEntry:
    entries = list_models(path)
    for entry in entries:
        if entry.name == name:
            return entry
    raise ModelError(f"model '{name}' is not in the catalogue (known: {[e.name for e in entries]})")


def fetch_model(name: str, cache_dir: Union[str, Path] = DEFAULT_CACHE, catalogue: Optional[Path] = None,
                progress: bool = True) -> Path:
    """A local folder holding the model ``name``: the shipped folder, or the download in the cache."""
    entry = find_model(name, catalogue)
    if entry.path:
        folder = ((Path(catalogue) if catalogue is not None else catalogue_path()).resolve().parent / entry.path).resolve()
        if not folder.is_dir():
            raise ModelError(f"model '{name}': its shipped folder {folder} is missing from this installation")
        return folder
    if not entry.url or not entry.sha256:
        raise ModelError(f"model '{name}': the catalogue gives neither a shipped path nor a url with its sha256")
    target = Path(cache_dir).expanduser() / f"{entry.name}-{entry.version}"
    try:  # verified on every fetch: a cached archive may have been changed since
        archive = download_verified(entry.url, entry.sha256, target.with_suffix(".zip"), DOWNLOAD_TIMEOUT_S, progress)
    except DownloadUnavailable as error:
        raise ModelError(f"model '{name}': cannot download it ({error}); without a network, use a local model "
                         "folder") from error
    except ChecksumMismatch as error:
        raise ModelError(f"model '{name}': {error} (corrupt or tampered)") from error
    if not target.is_dir():
        _unpack(archive, target)
    return _bundle_root(target)


def _unpack(archive: Path, target: Path) -> None:
    """Unpack into a staging folder that becomes ``target`` in one rename: an interrupted unpack leaves no half model."""
    try:
        with new_folder(target) as staging, zipfile.ZipFile(archive) as bundle:
            for member in bundle.namelist():  # no absolute paths or ".." escaping the folder
                resolved = (staging / member).resolve()
                if staging.resolve() not in resolved.parents and resolved != staging.resolve():
                    raise ModelError(f"{archive}: member {member!r} would unpack outside the model folder")
            bundle.extractall(staging)
    except zipfile.BadZipFile as error:
        raise ModelError(f"{archive}: not a zip archive ({error})") from error


def _bundle_root(folder: Path) -> Path:
    """The folder itself, or its only sub-folder (archives often wrap the bundle in one folder)."""
    children = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return folder
