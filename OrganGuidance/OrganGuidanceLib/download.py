"""The project's one checksummed downloader (demo sample, model catalogue, test data).

A download goes to a temporary file beside its destination and is renamed into place only when
its SHA-256 is the expected one, so a cancelled, failed or tampered download never leaves a file
that a later run would trust. A verified copy already at the destination is not fetched again.
"""
from __future__ import annotations

import hashlib
import socket
import urllib.error
import urllib.request
from pathlib import Path

from OrganGuidanceLib.atomic import atomic_path
from OrganGuidanceLib.checksum import sha256_of
from OrganGuidanceLib.validation import InputError

DOWNLOAD_TIMEOUT_S = 20.0
BLOCK = 1 << 16


class ChecksumMismatch(InputError):
    """The downloaded bytes are not the expected file (their SHA-256 differs); nothing was kept."""


class DownloadUnavailable(RuntimeError):
    """The file could not be fetched (no network, server error); callers may fall back."""


def download_verified(url: str, sha256: str, destination: Path, timeout_s: float = DOWNLOAD_TIMEOUT_S,
                      progress: bool = True) -> Path:
    """``destination``, downloaded from ``url`` unless a verified copy is there; its SHA-256 is checked.

    Raises ``DownloadUnavailable`` when it cannot be fetched and ``ChecksumMismatch`` when the
    bytes are not the expected ones (the download is then deleted).
    """
    from tqdm import tqdm

    destination = Path(destination)
    expected = sha256.lower()
    if destination.exists():
        if sha256_of(destination) == expected:
            return destination
        destination.unlink()  # a stale or damaged copy: fetch it again
    destination.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with atomic_path(destination, ".download") as temporary, open(temporary, "wb") as out:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                length = response.headers.get("Content-Length")
                with tqdm(total=int(length) if length else None, unit="B", unit_scale=True,
                          desc=f"downloading {destination.name}", leave=False, disable=not progress) as bar:
                    for block in iter(lambda: response.read(BLOCK), b""):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
        except urllib.error.HTTPError as error:
            raise DownloadUnavailable(f"download failed: {url} answered HTTP {error.code} {error.reason}") from error
        except urllib.error.URLError as error:
            if url.lower().startswith("file:"):
                raise DownloadUnavailable(f"cannot read {url} ({error.reason})") from error
            raise DownloadUnavailable(f"no network: cannot reach {url} ({error.reason})") from error
        except (socket.timeout, TimeoutError) as error:
            raise DownloadUnavailable(f"no network: {url} did not answer within {timeout_s:.0f} s") from error
        except OSError as error:
            raise DownloadUnavailable(f"no network: download of {url} failed ({error})") from error
        actual = digest.hexdigest()
        if actual != expected:
            raise ChecksumMismatch(
                f"{url}: SHA-256 mismatch, expected {expected} but the downloaded file has {actual}; "
                "the file was deleted (wrong URL, or the file changed on the server)"
            )
    return destination
