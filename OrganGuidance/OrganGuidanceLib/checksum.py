"""SHA-256 of files, streamed (downloads, dataset caches and model bundles share it)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK = 1 << 20


def update_with_file(digest: "hashlib._Hash", path: Path) -> None:
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(CHUNK), b""):
            digest.update(block)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    update_with_file(digest, Path(path))
    return digest.hexdigest()


def input_digest(path: Path) -> str:
    """SHA-256 of an input: a file's bytes, or a folder's (a DICOM series) visible files by relative name and bytes.

    Hidden files (``.DS_Store``, macOS ``._*``) are no part of an input: copying a folder on a Mac changes none.
    """
    path = Path(path)
    if not path.is_dir():
        return sha256_of(path)
    digest = hashlib.sha256()
    files = (p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                      p.relative_to(path).parts))
    for file in sorted(files):
        digest.update(os.fsencode(str(file.relative_to(path))) + b"\0")
        update_with_file(digest, file)
    return digest.hexdigest()
