"""A folder of results that a killed, cancelled or failed run never leaves half written, and a rerun continues.

How a run writes (``crcseg segment``, ``crcseg guidance``, the console's batch call):

- **Locked:** one run at a time per folder (``run_lock.output_lock``); a second run is refused and told who runs.
- **Case by case, atomically:** a case's files are written into a hidden staging folder, then moved into the
  folder; its record ``.crcseg/<case>.json`` is written before the move (``complete: false``) and after it
  (``complete: true``). Only a complete record marks a finished case: a run killed in between leaves a case
  that the next run redoes.
- **Resumable:** the record holds the key of what made the case (the inputs' SHA-256, the model, the settings).
  A rerun skips a case whose record is complete, whose key is the same and whose files are as recorded, and
  redoes the rest. A case made with other inputs, model or settings is not replaced silently: the run is
  refused and says what differs, unless ``overwrite``.
- **The summary last:** written once every case is done; it is the mark of a finished run.
- **``overwrite``:** the new result is built beside the folder and replaces the earlier one whole at the end
  (stale files included), so a failure or a kill halfway leaves the earlier result as it was. Files in the
  folder that no run of ours wrote (``owned`` says which are ours) are carried over into the new folder.

A disk that fills up fails the case being written (its files never replace anything), never an earlier result.

- **Shards** (``shards.Shard``): the shards of one run write into one folder at once, each its own cases
  (``run_lock`` lets them share the folder). A shard clears only its own killed stagings: the others' may be
  alive on another machine. ``overwrite`` is refused with a shard: it replaces the folder whole, which
  would drop the other shards' results.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from OrganGuidanceLib.atomic import (
    TEMPORARY_FILE_PREFIX,
    new_folder,
    recover_interrupted_swaps,
    remove_dead_stagings,
    remove_dead_temporary_files,
    write_text_atomic,
)
from OrganGuidanceLib.checksum import sha256_of
from OrganGuidanceLib.image_files import printable
from OrganGuidanceLib.run_lock import output_lock
from OrganGuidanceLib.validation import InputError

RECORDS = ".crcseg"  # hidden: our own readers skip hidden files, so records never look like inputs
RECORD_FORMAT = 1  # bump when the same inputs and settings give other outputs


def run_key(parts: Dict[str, object]) -> str:
    """One SHA-256 over the parts that decide a case's outputs (canonical JSON)."""
    text = json.dumps({"format": RECORD_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class CaseRecord:
    case: str
    key: str
    parts: Dict[str, object]  # what the key was made of, to say what differs
    outputs: Dict[str, str]  # file name -> SHA-256
    result: Dict[str, object] = field(default_factory=dict)  # the case's summary row, for a rerun that skips it
    complete: bool = False

    def to_json(self) -> str:
        return json.dumps({"format": RECORD_FORMAT, **self.__dict__}, indent=2, sort_keys=True) + "\n"


def _differences(old: Dict[str, object], new: Dict[str, object]) -> List[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


class ResultFolder:
    """The output folder of one run; use through ``open_result_folder``."""

    def __init__(self, folder: Path, work: Path, overwrite: bool, shard=None) -> None:
        self.folder = folder  # where the results end up
        self.work = work  # where this run writes: the folder itself, or (overwrite) a staging folder beside it
        self.overwrite = overwrite
        self.shard = shard  # shards.Shard: this run is one shard of several writing into the folder

    # --- records -----------------------------------------------------------------------------------
    def _record_path(self, root: Path, case: str) -> Path:
        return root / RECORDS / f"{case}.json"

    def record(self, case: str, complete_only: bool = True) -> Optional[CaseRecord]:
        """The (complete) record of ``case`` in the folder; in an overwrite run none (it starts afresh)."""
        if self.overwrite:
            return None
        path = self._record_path(self.folder, case)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            data.pop("format", None)
            record = CaseRecord(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):  # a damaged record is ours all the same: the case is redone
            record = CaseRecord(case, key="", parts={}, outputs={}, complete=False)
        return record if record.complete or not complete_only else None

    def finished(self, case: str, key: str) -> Optional[CaseRecord]:
        """The record of ``case`` if it was made with ``key`` and its files are as recorded, else None."""
        record = self.record(case)
        if record is None or record.key != key:
            return None
        for name, sha in record.outputs.items():
            path = self.folder / name
            if not path.is_file() or sha256_of(path) != sha:
                return None
        return record

    def conflicts(self, cases: Sequence[str], parts: Dict[str, object], ignore: Sequence[str] = ()) -> List[str]:
        """Cases whose complete record was made with other ``parts`` (the ``ignore`` keys aside), and what differs."""
        found = []
        for case in cases:
            record = self.record(case)
            if record is None:
                continue
            differ = [k for k in _differences(record.parts, parts) if k not in ignore]
            if differ:
                found.append(f"{printable(case)} (its {', '.join(differ)} differ)")
        return found

    # --- writing -----------------------------------------------------------------------------------
    @contextmanager
    def case_staging(self, case: str, key: str, parts: Dict[str, object]) -> Iterator[Tuple[Path, CaseRecord]]:
        """Yield (a hidden staging folder, the case's record); on success its files move in, the record last.

        The caller writes the case's files into the staging folder and fills ``record.result``.
        """
        self.work.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(self.shard)}{os.getpid()}-", dir=self.work))
        record = CaseRecord(case, key, parts, outputs={})
        try:
            yield staging, record
            files = sorted(p for p in staging.rglob("*") if p.is_file())
            record.outputs = {str(p.relative_to(staging)): sha256_of(p) for p in files}
            record_path = self._record_path(self.work, case)
            write_text_atomic(record_path, record.to_json())  # incomplete: a kill below leaves a case to redo
            for path in files:
                destination = self.work / path.relative_to(staging)
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, destination)
            record.complete = True
            write_text_atomic(record_path, record.to_json())
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def write_last(self, name: str, text: str) -> Path:
        """The run's summary: written after every case."""
        return write_text_atomic(self.work / name, text)


def _staging_prefix(shard) -> str:
    """``.tmp-case-`` (+ ``shard-I-of-N-``) + pid: a shard knows its own killed stagings by name."""
    return f".tmp-case-{shard.label + '-' if shard is not None else ''}"


@contextmanager
def open_result_folder(folder: Path, overwrite: bool, owned: Callable[[str], bool],
                       command: str = "", shard=None) -> Iterator[ResultFolder]:
    """Lock ``folder`` and yield the ``ResultFolder`` a run writes into; see the module docstring.

    ``owned(name)``: whether a top-level entry of the folder is a file our runs write (it is replaced on
    ``overwrite``; every other entry is the user's and is kept). ``shard``: this run is that shard.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"output: {folder} is a file, not a folder")
    if shard is not None and overwrite:
        raise InputError(f"--overwrite: not with --shard ({shard.index}/{shard.count}): --overwrite replaces the "
                         "output folder whole once the run is complete, which would drop the other shards' results; "
                         "empty the folder (or choose a new one) before the shards start")
    if shard is not None:
        with output_lock(folder, command, shard):
            recover_interrupted_swaps(folder, lambda name: not owned(name) and not name.startswith(TEMPORARY_FILE_PREFIX))
            remove_dead_stagings(folder)  # a whole run's: none runs while we hold the lock
            for leftover in folder.glob(f"{_staging_prefix(shard)}*"):  # only ours: the other shards may be running
                shutil.rmtree(leftover, ignore_errors=True)
            yield ResultFolder(folder, folder, overwrite=False, shard=shard)
        return

    def foreign(name: str) -> bool:  # a killed writer's temporary file is no user's
        return not owned(name) and not name.startswith(TEMPORARY_FILE_PREFIX)

    with ExitStack() as stack:
        stack.enter_context(output_lock(folder, command))
        recover_interrupted_swaps(folder, foreign)
        remove_dead_stagings(folder)
        if overwrite:  # after a failure the earlier result stays; the user's own files are carried over
            staging = stack.enter_context(new_folder(folder, replace=True, keep=foreign))
            yield ResultFolder(folder, staging, overwrite=True)
        else:  # the folder is made by the first file written: a run refused or failed before leaves none
            for leftover in folder.glob(".tmp-case-*"):  # a killed run's case staging (we hold the lock)
                shutil.rmtree(leftover, ignore_errors=True)
            remove_dead_temporary_files(folder)  # a file write killed before its rename (e.g. the summary)
            yield ResultFolder(folder, folder, overwrite=False)
