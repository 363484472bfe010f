"""Atomic file output: write to a temporary file in the target folder, then rename.

A failed or cancelled write never leaves a half-written file, and never
destroys the previous version of the file. ``staged_folder`` does the same for
all the files of one run: they appear in the output folder together, or not at all.
``new_folder`` is the one atomic write of a whole folder (a model bundle, an unpacked
archive, a result folder replaced on ``overwrite``): it appears whole, in one rename, or not at all.

Every staging folder is hidden beside its target and named ``.tmp-<target>-<pid>-...``, so the
next run removes the leftovers of a killed one (``remove_dead_stagings``) and puts back an earlier
folder that a killed swap had set aside (``recover_interrupted_swaps``).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

TEMPORARY_FILE_PREFIX = ".tmp-file-"  # + pid: a killed writer's file is known by its dead process


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_mode() -> int:
    return 0o666 & ~_umask()


@contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=suffix, prefix=f"{TEMPORARY_FILE_PREFIX}{os.getpid()}-", dir=path.parent)
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


@contextmanager
def new_folder(target: Path, replace: bool = False, keep: Optional[Callable[[str], bool]] = None) -> Iterator[Path]:
    """Yield an empty hidden staging folder beside ``target``; on success it becomes ``target`` in one rename.

    After a failure ``target`` is as it was and the staging folder is gone. An existing ``target`` is refused
    (``FileExistsError``, before any work) unless ``replace``: then the new folder replaces it whole, and the
    entries of the earlier one for which ``keep(name)`` is true (a user's own files) are carried over.
    """
    target = Path(target)
    if target.exists() and not (replace and target.is_dir()):
        raise FileExistsError(f"{target}: exists already; choose another folder or remove it first")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_stagings(target)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-{os.getpid()}-", dir=target.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; outputs are meant to be shared
    try:
        yield staging
        _swap_in(staging, target, keep or (lambda name: False))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, target: Path, keep: Callable[[str], bool]) -> None:
    """``staging`` becomes ``target``: two renames when ``target`` exists (a kill between them is undone by
    ``recover_interrupted_swaps``), then the kept entries of the earlier folder are carried over."""
    if not target.exists():
        os.replace(staging, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-{os.getpid()}-old-", dir=target.parent))
    os.rmdir(old)
    os.replace(target, old)
    os.replace(staging, target)
    _carry_over(old, target, keep)
    shutil.rmtree(old, ignore_errors=True)


def _carry_over(old: Path, new: Path, keep: Callable[[str], bool]) -> None:
    for entry in sorted(old.iterdir()):
        if keep(entry.name) and not (new / entry.name).exists():
            os.replace(entry, new / entry.name)


def recover_interrupted_swaps(target: Path, keep: Callable[[str], bool]) -> None:
    """A run killed while it swapped in a new ``target``: put the earlier folder (or its kept entries) back."""
    prefix = f".tmp-{target.name}-"
    for old in target.parent.glob(f"{prefix}*-old-*"):
        pid = old.name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or process_alive(int(pid)):
            continue
        if not target.exists():
            os.replace(old, target)  # killed between the two renames: the earlier folder is back whole
        else:
            _carry_over(old, target, keep)
            shutil.rmtree(old, ignore_errors=True)


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


def remove_dead_temporary_files(folder: Path) -> None:
    """Temporary files of ``atomic_path`` in ``folder`` left by writers that were killed before their rename."""
    for leftover in Path(folder).glob(f"{TEMPORARY_FILE_PREFIX}*"):
        pid = leftover.name[len(TEMPORARY_FILE_PREFIX):].split("-", 1)[0]
        if leftover.is_file() and pid.isdigit() and not process_alive(int(pid)):
            leftover.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (another user's process counts: it cannot be signalled, but it runs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
