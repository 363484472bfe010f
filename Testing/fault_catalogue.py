"""The fault catalogue's pieces, shared by its topic files (``faults_*.py``) and ``test_fault_catalogue.py``.

A topic file adds rows for one class of fault: ``make_inputs(folder)`` writes the inputs its rows read (into
``folder/<topic>/``, made once per test session), and ``ROWS`` lists its ``Fault`` rows.
"""
from __future__ import annotations

import hashlib
import os
import resource
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

from crcseg_child import run_crcseg

OK, FAILED, BAD_INPUT, CANCELLED = 0, 1, 2, 130


@dataclass
class Workspace:
    """Inputs shared by the rows (made once), and a fresh folder per row for its outputs."""

    inputs: Path
    row: Path

    def __getitem__(self, name: str) -> str:
        return str(self.inputs / name)

    def out(self, name: str = "out") -> str:
        return str(self.row / name)


Argv = List[str]
Call = Callable[[], object]


@dataclass
class Fault:
    id: str
    make: Callable[[Workspace], Union[Argv, Call]]  # argv for crcseg, or a call that must raise InputError
    code: int  # expected exit code (call rows: BAD_INPUT means InputError)
    words: Tuple[str, ...]  # the message must contain each (case-insensitive)
    unchanged: Tuple[str, ...] = ()  # files/folders (relative to the row folder) that must not change
    prepare: Optional[Callable[[Workspace], None]] = None  # puts earlier results into the row folder
    child: Optional[str] = None  # run in a child process: "fsize[=BYTES]", "readonly" or "locked=FOLDER" (run_child)
    hidden: Tuple[str, ...] = ()  # modules made unimportable for the row (a package that is not installed)


# --- argv helpers shared by the rows --------------------------------------------------------------
def guidance(w: Workspace, ct: str = "ct.nii.gz", organs: str = "organs.nii.gz", *extra: str) -> Argv:
    return ["guidance", w[ct], "--organs", w[organs], "-o", w.out(), "--no-png", *extra]


def segment(w: Workspace, model: str, *extra: str, ct: str = "ct.nii.gz") -> Argv:
    return ["segment", w[ct] if not ct.startswith("/") else ct, "-m", model, "-o", w.out(), "--organs",
            w["organs.nii.gz"], "--no-mirroring", "--device", "cpu", *extra]


# --- running a row -------------------------------------------------------------------------------
def snapshot(root: Path, names: Tuple[str, ...]) -> Dict[str, str]:
    found: Dict[str, str] = {}
    for name in names:
        path = root / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []
        for file in files:
            found[str(file.relative_to(root))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


def _drop_file_mode_override() -> None:
    """Root ignores a read-only folder (CAP_DAC_OVERRIDE): take that capability from the child's bounding set."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_child(argv: Argv, kind: str, cwd: Path) -> Tuple[int, str]:
    """``kind``: "fsize" (or "fsize=BYTES"): a full disk, writes past 256 KiB (BYTES) fail with EFBIG instead of
    killing the process; "readonly": root without its override of file modes; "locked=FOLDER": this process
    holds the output lock of ``cwd/FOLDER`` (another run writing there) while the child runs; "plain": no limit,
    a child only so that a crash of the process (an abort in a C++ library) cannot take the test run with it."""
    def limit() -> None:
        if kind.startswith("fsize"):
            size = int(kind.partition("=")[2] or 256 * 1024)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        elif kind == "readonly" and os.geteuid() == 0:
            _drop_file_mode_override()

    if kind.startswith("locked="):
        from OrganGuidanceLib.run_lock import output_lock

        with output_lock(cwd / kind.partition("=")[2], "crcseg segment (a run started earlier)"):
            return run_crcseg(argv, cwd, timeout_s=300)
    return run_crcseg(argv, cwd, preexec_fn=limit, timeout_s=300)


