"""One run at a time per output folder: a lock file beside the folder, held while a run writes into it.

Two ``crcseg`` runs into one folder would silently replace each other's results. The lock is an OS
file lock (``flock``; ``msvcrt.locking`` on Windows), so it dies with its process: a killed run
never leaves a stale lock. The lock file records who holds it, so the refusal names the running process.

Shards (``shards.Shard``, ``--shard I/N``) of one run write into one folder at once: each holds the folder's
lock shared and its own ``.<name>.crcseg-lock-shard-I-of-N`` exclusively. So shards run side by side, while
the same shard twice, a whole run while shards run, and shards while a whole run runs are refused. (Windows
has no shared file locks: there shards of one folder run one after another.)
"""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from OrganGuidanceLib.validation import InputError

if os.name == "nt":  # pragma: no cover - Slicer on Windows
    import msvcrt

    def _try_lock(fd: int, shared: bool = False) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
else:
    import fcntl

    def _try_lock(fd: int, shared: bool = False) -> bool:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False


class OutputFolderBusy(InputError):
    """Another run is writing into the output folder."""


def lock_path(folder: Path, shard=None) -> Path:
    """``.<name>.crcseg-lock`` beside ``folder`` (it stays valid while a run swaps the folder for a new one);
    with a ``shard``, that shard's own ``.<name>.crcseg-lock-shard-I-of-N``."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.crcseg-lock{'-' + shard.label if shard is not None else ''}"


def _holder(path: Path, wait_s: float = 1.0) -> str:
    """Who holds ``path``, from the record its holder writes right after it locks: a run started at the same moment
    may look before that, so an empty record is read again for up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            holder = json.loads(path.read_text())
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"]))
            return f"process {holder['pid']} ({holder['command']}), started {started}"
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() >= deadline:
                return "another process"
            time.sleep(0.05)


def _shard_holders(folder: Path) -> str:
    """Who holds the shard locks of ``folder`` ("" when none): for the refusal of a whole run while shards run."""
    folder = Path(folder)
    found = sorted(folder.parent.glob(f".{folder.name}.crcseg-lock-shard-*"))
    return "; ".join(f"{p.name.rsplit('-lock-', 1)[1]} by {_holder(p, wait_s=0.0)}" for p in found)


@contextmanager
def _locked_file(path: Path, shared: bool) -> Iterator[int]:
    """Hold ``path`` locked (exclusive, or ``shared``); yield its descriptor, or -1 when another holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if not _try_lock(fd, shared):
            os.close(fd)
            yield -1
            return
        # The holder before us may have removed the file between our open and our lock: then we hold a
        # lock on a file nobody else can see, and must lock the one at the path instead.
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield fd
    finally:
        # Removed before the unlock (a waiting run then locks a fresh file, the check above), but only by its
        # last holder: a shared holder that cannot take it exclusively leaves it to the shards still running.
        if not shared or _try_lock(fd, shared=False):
            try:
                os.unlink(path)
            except OSError:
                pass
        os.close(fd)


def _write_holder(fd: int, command: str) -> None:
    record = json.dumps({"pid": os.getpid(), "command": command, "started": time.time()})
    os.ftruncate(fd, 0)
    os.write(fd, record.encode("utf-8", "backslashreplace"))


@contextmanager
def output_lock(folder: Path, command: str = "", shard=None) -> Iterator[Path]:
    """Hold the lock of ``folder`` for the block; refuse with ``OutputFolderBusy`` if another run holds it.

    ``shard`` (``shards.Shard``): hold the folder's lock shared with the other shards, and this shard's own.
    """
    command = command or " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
    path = lock_path(folder)
    with _locked_file(path, shared=shard is not None) as fd:
        if fd < 0:
            holder = _holder(path)
            if shard is None and holder == "another process":  # shards hold it shared and write no record there
                holder = _shard_holders(folder) or holder
            raise OutputFolderBusy(
                f"output: {folder} is being written by {holder}; wait for it to finish, "
                "or choose another output folder")
        if shard is None:
            _write_holder(fd, command)
            yield path
            return
        own = lock_path(folder, shard)
        with _locked_file(own, shared=False) as own_fd:
            if own_fd < 0:
                raise OutputFolderBusy(
                    f"output: shard {shard.index}/{shard.count} of {folder} is being run by {_holder(own)}; "
                    "each shard runs once at a time (wait for it, or run another shard)")
            _write_holder(own_fd, command)
            yield own
