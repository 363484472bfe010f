"""Atomic file output: write to a temporary file in the target folder, then rename.

A failed or cancelled write never leaves a half-written file, and never
destroys the previous version of the file. ``staged_folder`` does the same for
all the files of one run: they appear in the output folder together, or not at all.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=suffix, prefix=".tmp-", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, _default_mode())  # mkstemp makes files private; outputs are meant to be shared
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_text_atomic(path: Path, text: str) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


@contextmanager
def staged_folder(target: Path, last: str = "") -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; on success its files move into ``target``.

    Files of the same names in ``target`` are replaced, others are kept; after a failure ``target``
    is as it was and the hidden staging folder is removed. A killed run's staging folder is never
    read, and the next run into ``target`` removes it (its name holds the dead process's id).
    ``last``: the file that moves in last (a run's summary, the mark that the others are in place).
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"output {target}: is a file, not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_stagings(target)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-{os.getpid()}-", dir=target.parent))
    try:
        yield staging
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(staging.rglob("*"), key=lambda p: (p.name == last, str(p))):
            if path.is_file():
                destination = target / path.relative_to(staging)
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_dead_stagings(target: Path) -> None:
    """Staging folders beside ``target`` left by processes that no longer run (killed mid-run).

    An earlier result set aside during a swap (``-old-``) is not a staging folder: ``result_folder`` restores it.
    """
    prefix = f".tmp-{target.name}-"
    for leftover in target.parent.glob(f"{prefix}*"):
        pid, _, rest = leftover.name[len(prefix):].partition("-")
        if not (leftover.is_dir() and pid.isdigit()) or rest.startswith("old-"):
            continue
        if not process_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (another user's process counts: it cannot be signalled, but it runs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
