"""Organ guidance for a cohort: every CT of a folder or zip (``cases.find_cases``), each into ``OUT/<case>/``.

Each case folder is a ``ResultFolder`` of its own (locked, written whole or not at all), so a failed case is
reported and skipped, a rerun skips the cases an earlier run finished (their ``guidance.json`` is the mark),
and shards (``shards.Shard``) run side by side into one ``OUT`` without touching each other's cases. The
summary ``guidance_summary.csv`` (a shard's: ``guidance_summary.shard-I-of-N.csv``, merged by the last shard
or ``crcseg summarize OUT --summary guidance_summary.csv``) has one row per case.
"""
from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from tqdm import tqdm

from OrganGuidanceLib.atomic import write_text_atomic
from OrganGuidanceLib.cases import find_case_file, find_cases
from OrganGuidanceLib.guidance import GuidanceParameters, MOSSource, run_guidance
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.image_files import printable
from OrganGuidanceLib.io import read_image
from OrganGuidanceLib.outputs import OUTPUT_FILES, guidance_owned, write_guidance_outputs
from OrganGuidanceLib.result_folder import open_result_folder
from OrganGuidanceLib.shards import Shard, merge_shard_summaries, shard_summary_name
from OrganGuidanceLib.validation import InputError, failure_message

SUMMARY_FILE = "guidance_summary.csv"
COLUMNS = ("case", "status", "seconds", "ooi_ml", "bowel_wall_ml", "output", "error", "warnings")
# case -> the MOS sources of its CT (organ label maps found for the case, or TotalSegmentator on it)
SourcesForCase = Callable[[str, Image], List[MOSSource]]


@dataclass
class GuidanceCase:
    case: str
    status: str = "failed"  # ok, reused (finished by an earlier run), failed
    seconds: float = 0.0
    volumes_ml: dict = field(default_factory=dict)
    error: str = ""
    warnings: List[str] = field(default_factory=list)


@dataclass
class GuidanceBatchReport:
    summary_csv: Path
    cases: List[GuidanceCase] = field(default_factory=list)
    shard: str = ""
    merged: str = ""

    @property
    def failed(self) -> List[GuidanceCase]:
        return [c for c in self.cases if c.status == "failed"]

    def summary(self) -> str:
        done = [c for c in self.cases if c.status != "failed"]
        reused = [c for c in done if c.status == "reused"]
        text = f"{self.shard}\n" if self.shard else ""
        text += f"organ guidance: {len(done)} of {len(self.cases)} cases done"
        text += f" ({len(reused)} finished by an earlier run, not redone)" if reused else ""
        text += f"; summary in {self.summary_csv}" + (f"\n{self.merged}" if self.merged else "")
        text += "".join(f"\n  {printable(c.case)}: warning: {w}" for c in done for w in c.warnings)
        return text + "".join(f"\n  {printable(c.case)}: FAILED: {c.error}" for c in self.failed)


def organ_maps_for(folders: Sequence[Path], conventions: Sequence[str]) -> SourcesForCase:
    """Sources from folders of label maps ``<case>.nii.gz`` (one folder per source, each with its convention)."""
    from OrganGuidanceLib.providers import ImportedLabelMapProvider

    for folder in folders:
        if not Path(folder).is_dir():
            raise InputError(f"--organs: {printable(Path(folder))} is not a folder; for a folder of CTs give folders of "
                             "organ label maps <case>.nii.gz")

    def sources(case: str, ct: Image) -> List[MOSSource]:
        found = []
        for folder, convention in zip(folders, conventions):
            path = find_case_file(Path(folder), case)
            if path is None:
                raise InputError(f"{printable(case)}: no organ label map {printable(case)}.nii.gz in "
                                 f"{printable(Path(folder))}")
            found.append(ImportedLabelMapProvider(path, convention).segment())
        return found

    return sources


def run_guidance_batch(inputs: Path, output: Path, parameters: GuidanceParameters, sources: SourcesForCase,
                       shard: Optional[Shard] = None, overwrite: bool = False, overlay: bool = True,
                       cropped: bool = False) -> GuidanceBatchReport:
    """Organ guidance for every case of ``inputs`` (this shard's share), into ``output/<case>/``."""
    cases = [(found.case, found.path) for found in find_cases(inputs)]
    shard_note = ""
    if shard is not None:
        if overwrite:
            raise InputError("--overwrite: not with --shard (it would replace the other shards' cases)")
        total = len(cases)
        cases = shard.select(cases, name=lambda item: printable(item[0]))
        shard_note = shard.describe(len(cases), total)
        print(shard_note)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    name = shard_summary_name(SUMMARY_FILE, shard) if shard is not None else SUMMARY_FILE
    report = GuidanceBatchReport(output / name, shard=shard_note)
    bar = tqdm(cases, desc="organ guidance", unit="case")
    for case, path in bar:
        bar.set_postfix_str(printable(case))
        result = GuidanceCase(case)
        start = time.perf_counter()
        try:
            _one_case(case, path, output / case, parameters, sources, overwrite, overlay, cropped, result)
        except Exception as error:  # noqa: BLE001 - one bad case must not stop a cohort; Ctrl-C still does
            result.status = "failed"
            result.error = failure_message(error)
        result.seconds = round(time.perf_counter() - start, 2)
        report.cases.append(result)
    bar.close()
    write_text_atomic(report.summary_csv, _summary_text(report))
    if shard is not None:
        try:
            merged = merge_shard_summaries(output, SUMMARY_FILE)
            report.merged = merged.message() if merged.path is not None else ""
        except InputError as error:
            report.merged = f"{SUMMARY_FILE} not merged: {error}"
    return report


def _one_case(case: str, path: Path, folder: Path, parameters: GuidanceParameters, sources: SourcesForCase,
              overwrite: bool, overlay: bool, cropped: bool, result: GuidanceCase) -> None:
    finished = folder / OUTPUT_FILES["summary"]
    if finished.is_file() and not overwrite:  # written last: the case is complete
        earlier = json.loads(finished.read_text())
        if earlier.get("parameters") != json.loads(json.dumps(vars(parameters))):
            raise InputError(f"{printable(case)}: {printable(folder)} holds organ guidance made with other parameters "
                             f"({earlier.get('parameters')}); pass --overwrite to replace it, or choose another output")
        result.status = "reused"
        result.volumes_ml = earlier.get("volumes_ml", {})
        return
    with open_result_folder(folder, overwrite, guidance_owned) as results:
        ct = read_image(path, name=f"CT {case}")
        guidance = run_guidance(ct, sources(case, ct), parameters)
        write_guidance_outputs(ct, guidance, results.work, parameters, overlay=overlay, cropped=cropped)
    result.status = "ok"
    result.warnings = list(guidance.warnings)
    result.volumes_ml = json.loads(finished.read_text()).get("volumes_ml", {})


def _summary_text(report: GuidanceBatchReport) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    for case in sorted(report.cases, key=lambda c: printable(c.case)):
        writer.writerow({"case": printable(case.case), "status": case.status, "seconds": case.seconds,
                         "ooi_ml": case.volumes_ml.get("ooi", ""), "bowel_wall_ml": case.volumes_ml.get("bowel_wall", ""),
                         "output": printable(case.case) if case.status != "failed" else "",
                         "error": printable(case.error), "warnings": " | ".join(case.warnings)})
    return buffer.getvalue()
