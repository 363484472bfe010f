"""One run at a time per output folder: a lock file beside the folder, held while a run writes into it.

Two ``crcseg`` runs into one folder would silently replace each other's results. The lock is an OS
file lock (``flock``; ``msvcrt.locking`` on Windows), so it dies with its process: a killed run
never leaves a stale lock. The lock file records who holds it, so the refusal names the running process.
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

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False


class OutputFolderBusy(InputError):
    """Another run is writing into the output folder."""


def lock_path(folder: Path) -> Path:
    """``.<name>.crcseg-lock`` beside ``folder``: it stays valid while a run swaps the folder for a new one."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.crcseg-lock"


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"]))
        return f"process {holder['pid']} ({holder['command']}), started {started}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def output_lock(folder: Path, command: str = "") -> Iterator[Path]:
    """Hold the lock of ``folder`` for the block; refuse with ``OutputFolderBusy`` if another run holds it."""
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    command = command or " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if not _try_lock(fd):
            os.close(fd)
            raise OutputFolderBusy(
                f"output: {folder} is being written by {_holder(path)}; wait for it to finish, "
                "or choose another output folder")
        # The holder before us may have removed the file between our open and our lock: then we hold a
        # lock on a file nobody else can see, and must lock the one at the path instead.
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        record = json.dumps({"pid": os.getpid(), "command": command, "started": time.time()})
        os.ftruncate(fd, 0)
        os.write(fd, record.encode("utf-8", "backslashreplace"))
        yield path
    finally:
        try:
            os.unlink(path)  # before the unlock: a waiting run then locks a fresh file (the check above)
        except OSError:
            pass
        os.close(fd)
