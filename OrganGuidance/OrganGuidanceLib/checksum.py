"""SHA-256 of files, streamed (downloads, dataset caches and model bundles share it)."""
from __future__ import annotations

import hashlib
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
