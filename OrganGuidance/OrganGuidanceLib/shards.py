"""A cohort split over many processes or machines: ``--shard I/N`` takes a deterministic share of the cases.

Each shard runs the same command on the same inputs into the same output folder and takes its own share:
the cases sorted by name, case k (0-based in that order) goes to shard (k mod N) + 1, so shards stay balanced
(round robin) and every machine computes the same split without talking to the others. The shard comes from
``--shard I/N``, else from a SLURM job array (``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``), else from
torchrun (``RANK``/``WORLD_SIZE``; ``LOCAL_RANK`` picks the process's GPU). Each shard writes
``summary.shard-I-of-N.csv``; ``merge_shard_summaries`` joins them into the one summary a single run writes.

Standard library only (besides our ``InputError``): the command line parses it before any engine is imported.
"""
from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

from OrganGuidanceLib.atomic import write_text_atomic
from OrganGuidanceLib.validation import InputError

T = TypeVar("T")
SHARD_OPTION = "--shard"
_SUMMARY_PATTERN = re.compile(r"^(?P<stem>.+)\.shard-(?P<index>\d+)-of-(?P<count>\d+)\.csv$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``; ``gpu``: torchrun's ``LOCAL_RANK`` (one GPU per process), if any."""

    index: int
    count: int
    gpu: Optional[int] = None
    origin: str = SHARD_OPTION  # where it came from, for the messages

    def __post_init__(self) -> None:
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise InputError(f"{self.origin}: shard {self.index} of {self.count} does not exist; the shard is I/N "
                             "with 1 <= I <= N (e.g. 2/8)")

    @classmethod
    def parse(cls, text: str, option: str = SHARD_OPTION) -> "Shard":
        """``"I/N"`` (e.g. ``"2/8"``); ``InputError`` naming ``option`` otherwise."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if match is None:
            raise InputError(f"{option}: '{text}' is not I/N (shard I of N, e.g. 2/8)")
        return cls(int(match.group(1)), int(match.group(2)), origin=option)

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> Optional["Shard"]:
        """The shard a SLURM job array or torchrun gives this process, else None."""
        env = os.environ if environ is None else environ
        if env.get("SLURM_ARRAY_TASK_ID", "").strip():
            task = _integer(env, "SLURM_ARRAY_TASK_ID")
            first = _integer(env, "SLURM_ARRAY_TASK_MIN") if env.get("SLURM_ARRAY_TASK_MIN") else 0
            if env.get("SLURM_ARRAY_TASK_COUNT"):
                count = _integer(env, "SLURM_ARRAY_TASK_COUNT")
            elif env.get("SLURM_ARRAY_TASK_MAX"):
                count = _integer(env, "SLURM_ARRAY_TASK_MAX") - first + 1
            else:
                raise InputError("SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor "
                                 "SLURM_ARRAY_TASK_MAX is: pass --shard I/N")
            # SLURM ids run MIN..MAX (e.g. --array=1-8); a stepped array (1-15:2) needs an explicit --shard
            return cls(task - first + 1, count, origin=f"SLURM_ARRAY_TASK_ID={task} (MIN {first}, COUNT {count})")
        if env.get("RANK", "").strip() and env.get("WORLD_SIZE", "").strip():
            rank, world = _integer(env, "RANK"), _integer(env, "WORLD_SIZE")
            gpu = _integer(env, "LOCAL_RANK") if env.get("LOCAL_RANK", "").strip() else None
            return cls(rank + 1, world, gpu=gpu, origin=f"torchrun RANK={rank} WORLD_SIZE={world}")
        return None

    @classmethod
    def resolve(cls, option: Optional[str], environ: Optional[Mapping[str, str]] = None) -> Optional["Shard"]:
        """``--shard`` when given (it wins), else the environment's shard; a 1-of-1 shard is no shard."""
        shard = cls.parse(option) if option else cls.from_environment(environ)
        if shard is not None and option:  # torchrun's GPU still applies to an explicit --shard
            env_shard = cls.from_environment(environ)
            shard = Shard(shard.index, shard.count, env_shard.gpu if env_shard else None, shard.origin)
        return shard if shard is not None and shard.count > 1 else None

    @property
    def label(self) -> str:
        """``shard-I-of-N``: names this shard's summary and lock."""
        return f"shard-{self.index}-of-{self.count}"

    def select(self, cases: Sequence[T], name=lambda case: case.case) -> List[T]:
        """This shard's cases: sorted by ``name(case)``, case k goes to shard (k mod N) + 1."""
        ordered = sorted(cases, key=name)
        return [case for k, case in enumerate(ordered) if k % self.count == self.index - 1]

    def describe(self, taken: int, total: int) -> str:
        text = f"shard {self.index} of {self.count} ({self.origin}): {taken} of {total} cases"
        return text + (" (nothing to do: fewer cases than shards)" if taken == 0 else "")


def _integer(env: Mapping[str, str], name: str) -> int:
    value = env.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}: '{value}' is not a whole number") from None


def shard_summary_name(summary: str, shard: Shard) -> str:
    """``summary.csv`` -> ``summary.shard-I-of-N.csv``."""
    stem = summary[:-4] if summary.endswith(".csv") else summary
    return f"{stem}.{shard.label}.csv"


@dataclass
class MergedSummary:
    """What ``merge_shard_summaries`` found and wrote."""

    path: Optional[Path]  # the merged summary; None when it was not written (shards missing, not partial)
    count: int  # N
    present: List[int] = field(default_factory=list)
    missing: List[int] = field(default_factory=list)
    rows: int = 0

    def message(self) -> str:
        missing = ", ".join(f"{i}/{self.count}" for i in self.missing)
        if self.path is None:
            return (f"{len(self.present)} of {self.count} shard summaries found; missing: shard {missing} "
                    "(run them, or pass --partial to merge what is there)")
        text = f"merged {len(self.present)} of {self.count} shard summaries ({self.rows} cases) into {self.path}"
        return text + (f"; missing: shard {missing}" if self.missing else "")


def shard_summaries(folder: Path, summary: str) -> Dict[int, Dict[int, Path]]:
    """N -> {I: path} of the shard summaries of ``summary`` in ``folder``."""
    stem = summary[:-4] if summary.endswith(".csv") else summary
    found: Dict[int, Dict[int, Path]] = {}
    for path in sorted(Path(folder).glob(f"{stem}.shard-*-of-*.csv")):
        match = _SUMMARY_PATTERN.match(path.name)
        if match and match.group("stem") == stem:
            found.setdefault(int(match.group("count")), {})[int(match.group("index"))] = path
    return found


def merge_shard_summaries(folder: Path, summary: str = "summary.csv", partial: bool = False,
                          write=None) -> MergedSummary:
    """Join ``summary.shard-I-of-N.csv`` into ``summary.csv``, rows sorted by case (as a single run writes them).

    Refused (``InputError``) when the folder holds no shard summaries, or summaries of two splits (e.g. of 3
    and of 4 shards). A missing shard is reported and nothing is written unless ``partial``.
    ``write(path, text)``: how the file is written (default: atomically).
    """
    folder = Path(folder)
    found = shard_summaries(folder, summary)
    if not found:
        raise InputError(f"{folder}: no shard summaries ({summary[:-4]}.shard-I-of-N.csv) to merge")
    if len(found) > 1:
        splits = ", ".join(f"{n} shards ({len(files)} found)" for n, files in sorted(found.items()))
        raise InputError(f"{folder}: shard summaries of different splits ({splits}); remove those of the split "
                         "that is not wanted")
    count, files = next(iter(found.items()))
    result = MergedSummary(None, count, present=sorted(files), missing=[i for i in range(1, count + 1)
                                                                        if i not in files])
    if result.missing and not partial:
        return result
    header, rows = _read_rows(files)
    rows.sort(key=lambda row: row[0])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # csv.DictWriter's default, as write_summary writes
    writer.writerow(header)
    writer.writerows(rows)
    result.path = (write or write_text_atomic)(folder / summary, buffer.getvalue())
    result.rows = len(rows)
    return result


def _read_rows(files: Dict[int, Path]) -> Tuple[List[str], List[List[str]]]:
    header: Optional[List[str]] = None
    rows: List[List[str]] = []
    for index, path in sorted(files.items()):
        with open(path, newline="", encoding="utf-8") as handle:
            table = list(csv.reader(handle))
        if not table:
            raise InputError(f"{path}: empty; rerun shard {index}")
        if header is not None and table[0] != header:
            raise InputError(f"{path}: its columns differ from the other shard summaries'; rerun shard {index} "
                             "with the same version")
        header = table[0]
        if header[:1] != ["case"]:
            raise InputError(f"{path}: not a summary (its first column is not 'case')")
        rows.extend(table[1:])
    return header or [], rows
