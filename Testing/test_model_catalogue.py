"""Model catalogue: the shipped entry, downloads (file:// URLs: no network needed) with SHA-256 checks."""
from __future__ import annotations

import json
import zipfile

import pytest

from CRCSegmentationLib.core.errors import ModelError
from CRCSegmentationLib.core.resources import catalogue_file
from CRCSegmentationLib.models.catalogue import fetch_model, find_model, list_models
from OrganGuidanceLib.checksum import sha256_of

CATALOGUE_FILE = catalogue_file()


def test_module_catalogue_lists_the_demonstration_model():
    assert CATALOGUE_FILE.parent.parent.name == "CRCSegmentation"  # the module's own Resources/, in a checkout
    entries = list_models(CATALOGUE_FILE)
    demo = find_model("demo_phantom", CATALOGUE_FILE)
    assert demo in entries and demo.demonstration
    assert demo.path == "Models/demo_phantom" and demo.input_channels == ["CT", "MOS", "OOI"]
    assert all(e.url or e.path for e in entries)
    with pytest.raises(ModelError, match="not in the catalogue"):
        find_model("no_such_model", CATALOGUE_FILE)


@pytest.fixture
def archive(tmp_path):
    """A zip of a (fake) bundle folder, as a release would publish it."""
    folder = tmp_path / "src" / "bundle"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text("{}")
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"weights")
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w") as handle:
        for file in folder.rglob("*"):
            handle.write(file, file.relative_to(folder.parent))
    return path


def write_catalogue(tmp_path, **entry) -> object:
    path = tmp_path / "catalogue" / "models.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"models": [{"name": "m", "version": "1", "input_channels": ["CT"], **entry}]}))
    return path


def test_fetch_downloads_checks_and_unpacks(tmp_path, archive):
    catalogue = write_catalogue(tmp_path, url=archive.as_uri(), sha256=sha256_of(archive))
    cache = tmp_path / "cache"
    folder = fetch_model("m", cache, catalogue, progress=False)
    assert folder == cache / "m-1" / "bundle" and (folder / "fold_0" / "checkpoint_final.pth").read_bytes() == b"weights"
    assert fetch_model("m", cache, catalogue, progress=False) == folder  # cached, checked again
    (cache / "m-1.zip").write_bytes(b"changed")  # a tampered cache is downloaded again
    assert fetch_model("m", cache, catalogue, progress=False) == folder
    assert sha256_of(cache / "m-1.zip") == sha256_of(archive)


def test_fetch_refuses_a_wrong_checksum(tmp_path, archive):
    catalogue = write_catalogue(tmp_path, url=archive.as_uri(), sha256="0" * 64)
    with pytest.raises(ModelError, match="SHA-256"):
        fetch_model("m", tmp_path / "cache", catalogue, progress=False)
    assert not (tmp_path / "cache" / "m-1.zip").exists() and not (tmp_path / "cache" / "m-1").exists()


def test_fetch_without_network_says_so(tmp_path):
    catalogue = write_catalogue(tmp_path, url=(tmp_path / "missing.zip").as_uri(), sha256="0" * 64)
    with pytest.raises(ModelError, match="cannot download"):
        fetch_model("m", tmp_path / "cache", catalogue, progress=False)


def test_fetch_shipped_folder(tmp_path):
    (tmp_path / "catalogue" / "shipped").mkdir(parents=True)
    catalogue = write_catalogue(tmp_path, path="shipped")
    assert fetch_model("m", tmp_path / "cache", catalogue) == (tmp_path / "catalogue" / "shipped").resolve()
    missing = write_catalogue(tmp_path, path="elsewhere")
    with pytest.raises(ModelError, match="missing"):
        fetch_model("m", tmp_path / "cache", missing)
