"""The model catalogue (``Resources/models.json``): models a user can pick by name.

An entry either points to a folder shipped in the repository (``"path"``, relative to the
repository root, e.g. the demonstration model) or to an archive to download (``"url"``,
a zip of a model bundle, with its ``"sha256"``). Downloads land in a user cache
(``~/.cache/slicercrc/models/<name>-<version>``); the archive's SHA-256 is checked on every
fetch, before anything is unpacked, and the unpacked bundle is checked again by
``open_model`` (per-checkpoint SHA-256). ``SLICERCRC_MODEL_CATALOGUE`` names another file.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

from OrganGuidanceLib.checksum import sha256_of

from .model_source import ModelError

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]  # CRCSegmentation/CRCSegmentationLib/catalogue.py
CATALOGUE_FILE = REPOSITORY_ROOT / "Resources" / "models.json"
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
    path: str = ""  # a shipped folder, relative to the repository root (another catalogue: to its folder)
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
    return Path(os.environ.get(CATALOGUE_ENVIRONMENT, str(CATALOGUE_FILE)))


def list_models(path: Optional[Path] = None) -> List[CatalogueEntry]:
    """Every entry of the catalogue, in file order."""
    path = Path(path) if path is not None else catalogue_path()
    if not path.is_file():
        raise ModelError(f"{path}: the model catalogue is missing")
    try:
        data = json.loads(path.read_text())
    except ValueError as error:
        raise ModelError(f"{path}: the model catalogue is not valid JSON ({error})") from error
    entries = data.get("models", []) if isinstance(data, dict) else data
    return [CatalogueEntry.from_dict(entry) for entry in entries]


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
        folder = _shipped_folder(entry.path, Path(catalogue) if catalogue is not None else catalogue_path())
        if not folder.is_dir():
            raise ModelError(f"model '{name}': its shipped folder {folder} is missing from this installation")
        return folder
    if not entry.url or not entry.sha256:
        raise ModelError(f"model '{name}': the catalogue gives neither a shipped path nor a url with its sha256")
    target = Path(cache_dir).expanduser() / f"{entry.name}-{entry.version}"
    archive = target.with_suffix(".zip")
    if not archive.is_file() or sha256_of(archive) != entry.sha256.lower():
        _download(entry.url, archive, progress)
    actual = sha256_of(archive)  # always: a cached archive may have been changed since
    if actual != entry.sha256.lower():
        archive.unlink()
        raise ModelError(
            f"model '{name}': the download from {entry.url} has SHA-256 {actual}, the catalogue says "
            f"{entry.sha256}; it was deleted (corrupt or tampered)"
        )
    if not target.is_dir():
        _unpack(archive, target)
    return _bundle_root(target)


def _shipped_folder(relative: str, catalogue: Path) -> Path:
    """Paths in our catalogue are relative to the repository root; in another catalogue, to its folder."""
    if catalogue.resolve() == CATALOGUE_FILE.resolve():
        return (REPOSITORY_ROOT / relative).resolve()
    return (catalogue.resolve().parent / relative).resolve()


def _download(url: str, destination: Path, progress: bool) -> None:
    """Download to a temporary file next to ``destination``, then rename (no half-written archive)."""
    import urllib.request

    from tqdm import tqdm

    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".zip", dir=destination.parent)
    try:
        with os.fdopen(handle, "wb") as output, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {destination.name}",
                      disable=not progress) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    output.write(chunk)
                    bar.update(len(chunk))
        os.replace(temporary, destination)
    except OSError as error:  # URLError is an OSError: no network, DNS, HTTP errors
        raise ModelError(f"cannot download {url}: {error}; without a network, use a local model folder") from error
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _unpack(archive: Path, target: Path) -> None:
    """Unpack into a staging folder, then rename: an interrupted unpack leaves no half model."""
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.namelist():  # no absolute paths or ".." escaping the folder
                resolved = (staging / member).resolve()
                if staging.resolve() not in resolved.parents and resolved != staging.resolve():
                    raise ModelError(f"{archive}: member {member!r} would unpack outside the model folder")
            bundle.extractall(staging)
        os.replace(staging, target)
    except zipfile.BadZipFile as error:
        raise ModelError(f"{archive}: not a zip archive ({error})") from error
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _bundle_root(folder: Path) -> Path:
    """The folder itself, or its only sub-folder (archives often wrap the bundle in one folder)."""
    children = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return folder
