"""What the CT (``prepare_ct.py``) and MR (``prepare_mr.py``) preparations share about the nnU-Net raw dataset.

Both write ``DatasetNNN_Name`` under nnU-Net's raw folder, one case at a time, and cache each case
in a sidecar ``<cache folder>/<case>.json`` that holds a SHA-256 over its inputs, written after
its outputs: a rerun skips a case whose hash matches and whose outputs exist. With a shard
(``OrganGuidanceLib.shards``, ``crcseg prepare --shard I/N``) a run prepares its share of the cases beside the
other shards: it cleans no leftovers (another shard's may be alive), removes no case any shard wants, writes
``prepare_report.shard-I-of-N.json``, and counts every shard's finished cases in dataset.json. ``RawDatasetLayout``
holds what differs between the two (cache folder, case outputs, who wrote the folder, the error
class); its methods are the folder checks, the cache, stale-case removal and the report file.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple, Type

from tqdm import tqdm

from CRCTraining import __version__
from CRCTraining.data.sources import SourceCase
from OrganGuidanceLib.atomic import write_text_atomic
from OrganGuidanceLib.run_lock import output_lock
from OrganGuidanceLib.validation import InputError

FILE_ENDING = ".nii.gz"
REPORT_FILE = "prepare_report.json"
TEMPORARY_PREFIX = ".tmp-"  # OrganGuidanceLib.atomic's temporary files; left over only after a hard kill


class PrepareError(InputError):
    """Dataset preparation cannot start, or every case failed; the message says why."""


class CaseReport:
    """The bookkeeping both preparations' reports share; the subclasses are dataclasses with these fields."""

    dataset_folder: Path
    done: List[str]  # computed in this run
    cached: List[str]  # skipped: hash matched, outputs present
    failed: Dict[str, str]  # case id -> error message
    removed: List[str]  # cases deleted from the dataset
    warnings: Dict[str, List[str]]  # case id -> things to check
    statistics: Dict[str, dict]  # case id -> the case's statistics

    @property
    def num_training(self) -> int:
        """The cases the dataset holds after this run."""
        return len(self.done) + len(self.cached)

    def to_dict(self) -> dict:
        """The report as written to ``prepare_report.json``."""
        data = asdict(self)
        data["dataset_folder"] = str(self.dataset_folder)
        data["num_training"] = self.num_training
        return data


def read_json(path: Path) -> dict:
    """A JSON object from ``path``, or {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}



def record_statistics(report: CaseReport, case_id: str, statistics: dict) -> None:
    """Report a case's statistics, and its warnings where it has any, so the report lists them."""
    report.statistics[case_id] = statistics
    if statistics.get("warnings"):
        report.warnings[case_id] = statistics["warnings"]


def write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` atomically unless ``path`` holds it already: an unchanged dataset keeps its file."""
    if not path.exists() or path.read_text() != text:
        write_text_atomic(path, text)


def _remove_present(paths: Sequence[Path]) -> bool:
    """Delete those of ``paths`` that exist; True when there was any."""
    present = [p for p in paths if p.exists()]
    for path in present:
        path.unlink()
    return bool(present)


@dataclass(frozen=True)
class RawDatasetLayout:
    """What differs between the CT and MR raw datasets; the methods are what they do alike."""

    cache_folder: str  # the sidecars' folder inside the dataset
    case_outputs: Callable[[Path, str], Dict[str, Path]]  # (dataset folder, case id) -> output files by key
    writer: str  # the function named in "exists and was not written by ..."
    is_ours: Callable[[dict], bool]  # a dataset.json this preparation wrote
    error: Type[Exception]  # raised when the dataset cannot be written
    cache_format: int  # bumped when the outputs of the same inputs change
    extra_folders: Tuple[str, ...] = ()  # beside imagesTr and labelsTr
    not_a_case: str = "."  # files whose names start with this belong to no case

    def sidecar(self, folder: Path, case_id: str) -> Path:
        """The case's cache sidecar: present only once all its outputs are complete."""
        return folder / self.cache_folder / f"{case_id}.json"

    def output_folder(self, raw: Path, dataset_id: int, folder_name: str, shard=None) -> Path:
        """``raw/folder_name``, ready to write: its id unique, never another tool's folder, leftovers gone
        (not with a ``shard``: the other shards' stagings may be alive, on other machines too)."""
        raw = Path(raw)
        others = [p.name for p in raw.glob(f"Dataset{int(dataset_id):03d}_*") if p.is_dir() and p.name != folder_name]
        if others:
            raise self.error(f"{raw}: dataset id {dataset_id} is taken by {others}; nnU-Net needs unique ids")
        folder = raw / folder_name
        if folder.is_dir() and any(folder.iterdir()):
            if not self.is_ours(read_json(folder / "dataset.json")) and not (folder / self.cache_folder).is_dir():
                raise self.error(
                    f"{folder}: exists and was not written by {self.writer}; choose another id or name, "
                    "or move it away (nothing is overwritten)"
                )
        for sub in ("imagesTr", "labelsTr", *self.extra_folders, self.cache_folder, "."):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            leftovers = [] if shard is not None else (folder / sub).glob(f"{TEMPORARY_PREFIX}*")
            for leftover in leftovers:  # an interrupted atomic write or staging
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        return folder

    def reuse_cached(self, report: CaseReport, folder: Path, case_id: str, digest: str) -> bool:
        """True, with the case reported cached, when its sidecar has ``digest`` and every output exists."""
        cached = read_json(self.sidecar(folder, case_id))
        outputs = self.case_outputs(folder, case_id).values()
        if cached.get("hash") != digest or not all(p.exists() for p in outputs):
            return False
        record_statistics(report, case_id, cached.get("statistics", {}))
        report.cached.append(case_id)
        return True

    def finish_case(self, report: CaseReport, folder: Path, case_id: str, digest: str, inputs: Dict[str, Path],
                    statistics: dict) -> str:
        """Write the sidecar of a case whose outputs are written, and report it "done"."""
        sidecar = {
            "case_id": case_id, "hash": digest, "version": __version__, "cache_format": self.cache_format,
            "inputs": {role: str(path) for role, path in inputs.items()},
            "outputs": {key: str(p.relative_to(folder)) for key, p in self.case_outputs(folder, case_id).items()},
            "statistics": statistics,
        }
        # last: only complete cases are cached
        write_text_atomic(self.sidecar(folder, case_id), json.dumps(sidecar, indent=2) + "\n")
        record_statistics(report, case_id, statistics)
        report.done.append(case_id)
        return "done"

    def remove_case(self, folder: Path, case_id: str) -> bool:
        """Delete a case's outputs and sidecar; True when any was there."""
        return _remove_present([*self.case_outputs(folder, case_id).values(), self.sidecar(folder, case_id)])

    def existing_case_ids(self, folder: Path) -> List[str]:
        """The cases the dataset folder holds files of: images, labels or sidecars."""
        ids = set()
        endings = (("imagesTr", f"_0000{FILE_ENDING}"), ("labelsTr", FILE_ENDING), (self.cache_folder, ".json"))
        for sub, ending in endings:
            for path in (folder / sub).glob(f"*{ending}"):
                if not path.name.startswith(self.not_a_case):
                    ids.add(path.name[: -len(ending)])
        return sorted(ids)

    def complete_cases(self, folder: Path) -> int:
        """The cases whose sidecar is written (every output complete), whichever shard prepared them."""
        return sum(1 for p in (folder / self.cache_folder).glob("*.json") if not p.name.startswith(self.not_a_case))

    def prepare_cases(self, folder: Path, cases: Sequence[SourceCase], prepare_case: Callable[[SourceCase], str],
                      report: CaseReport, failure_summary: Callable[[Dict[str, str]], str], shard=None) -> None:
        """Prepare every case (a ``shard``: its share), remove the cases no longer wanted, write the report; raise
        if every case failed. Locked: one run (or one run of each shard) at a time per dataset."""
        mine = shard.select(cases, name=lambda case: case.case_id) if shard is not None else list(cases)
        if shard is not None:
            print(shard.describe(len(mine), len(cases)))
        with output_lock(folder, "crcseg prepare", shard):
            progress = tqdm(mine, desc=f"prepare {folder.name}", unit="case")
            for case in progress:
                progress.set_postfix_str(case.case_id)
                prepare_case(case)
            progress.close()
            wanted = {c.case_id for c in cases} - set(report.failed)  # every shard's cases are wanted
            for stale in self.existing_case_ids(folder):
                if stale not in wanted and self.remove_case(folder, stale):
                    report.removed.append(stale)
            report.removed = sorted(set(report.removed))
            name = REPORT_FILE if shard is None else REPORT_FILE.replace(".json", f".{shard.label}.json")
            write_text_atomic(folder / name, json.dumps(report.to_dict(), indent=2) + "\n")
        if report.num_training == 0 and (report.failed or shard is None):
            summary = failure_summary(report.failed)
            raise self.error(f"{folder.name}: every one of {len(report.failed)} cases failed: {summary}")
