"""Tumor segmentation over many CT files: the console's batch call and ``crcseg segment``.

Per case: read the CT -> organ masks (a folder of label maps ``<case>.nii.gz``, or
TotalSegmentator) -> organ guidance with the parameters the model was trained with
(``dataset.json["agcrc"]``) -> the model's ``Segmenter.segment`` -> ``<case>_tumor.nii.gz``
-> statistics, and AG-CRC metrics against ``<case>.nii.gz`` in a reference folder.
A case that fails is reported in the summary and skipped; the model is loaded once.
Models that take no organ guidance (MR, HCF) get none. ``slice_filter``: an HCF bundle whose slice
classifier clears the tumor on the slices it calls normal (``slice_filter.SliceFilter``), after any model.
``output_types``: besides the NIfTI mask (always written: it is what a rerun checks), DICOM SEG, RTSTRUCT
and SR referencing the source series (``CRCSegmentationLib.dicom``), for cases read from DICOM.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from CRCSegmentationLib.core.errors import ModelError
from CRCSegmentationLib.core.model import ModelSource
from CRCSegmentationLib.core.segmentation import SegmentationParameters
from CRCSegmentationLib.dicom import FILE_ENDINGS as DICOM_FILE_ENDINGS
from CRCSegmentationLib.measurement.metrics import compute_metrics
from CRCSegmentationLib.measurement.statistics import TumorStatistics, tumor_statistics
from CRCSegmentationLib.models.open import open_model
from OrganGuidanceLib.cases import find_case_file, find_cases
from OrganGuidanceLib.checksum import input_digest
from OrganGuidanceLib.device import resolve_device
from OrganGuidanceLib.guidance import GuidanceParameters, GuidanceResult, MOSSource, run_guidance
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.image_files import printable
from OrganGuidanceLib.io import read_image, write_image
from OrganGuidanceLib.json_files import read_json
from OrganGuidanceLib.labels import ORGAN_SETS, load_convention
from OrganGuidanceLib.result_folder import RECORDS, ResultFolder, open_result_folder, run_key
from OrganGuidanceLib.shards import Shard, merge_shard_summaries, shard_summary_name
from OrganGuidanceLib.validation import InputError, failure_message

SUMMARY_FILE = "summary.csv"
TUMOR_ENDING, LABELS_ENDING = "_tumor.nii.gz", "_labels.nii.gz"  # <case><ending>: the files of one case
STATISTICS_COLUMNS = ("volume_ml", "largest_axial_diameter_mm", "craniocaudal_extent_mm", "components")
# FLARE's efficiency measures (efficiency.py): the model run's wall time, peak resident memory on the CPU,
# peak GPU memory and the area under the GPU-memory-time curve on CUDA (empty where they do not apply)
EFFICIENCY_COLUMNS = ("wall_s", "peak_rss_mb", "gpu_peak_mb", "gpu_memory_time_mb_s")
METRIC_COLUMNS = ("dice", "nsd", "precision", "recall", "hd95")
# Slice models (HCF): axial slices and how many of them went to SANet; the slice filter's report
SLICE_COLUMNS = ("slices", "sanet_slices", "filter_removed_voxels", "filter_rejected_slices", "filter_tumor_slices")
DICOM_ENDINGS = tuple(DICOM_FILE_ENDINGS.values())  # <case><ending>: CRCSegmentationLib.dicom's files
# What `crcseg segment --output-type` writes: the NIfTI mask, and DICOM objects over the source series
OUTPUT_TYPES = ("nifti", *DICOM_FILE_ENDINGS)


@dataclass
class SegmentedCase:
    case: str
    image: Path
    status: str  # "ok" | "failed"
    output: str = ""  # the tumor mask's file name in the output folder
    error: str = ""
    statistics: Dict[str, float] = field(default_factory=dict)
    metrics: Dict[str, float] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    seconds: float = 0.0
    device: str = ""
    efficiency: Dict[str, float] = field(default_factory=dict)  # FLARE's measures of the model run
    slices: Dict[str, int] = field(default_factory=dict)  # SLICE_COLUMNS that apply (HCF, slice filter)
    slice_filter: str = ""  # the slice filter's summary line, when one ran
    reused: bool = False  # finished by an earlier run with the same inputs, model and settings: not redone
    dicom: List[str] = field(default_factory=list)  # the DICOM files written (SEG, RTSTRUCT, SR)
    series: str = ""  # the source DICOM series: patient, study date, series number, description

    def to_record(self) -> Dict[str, object]:
        """The case's summary row, kept in its record so that a rerun that skips the case reports it the same."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("image", "reused")}

    @classmethod
    def from_record(cls, record: Dict[str, object], image: Path) -> "SegmentedCase":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in known}, image=image, reused=True)


@dataclass
class BatchReport:
    output_dir: Path
    summary_csv: Path
    cases: List[SegmentedCase] = field(default_factory=list)
    shard: str = ""  # which shard ran and its share of the cases, when sharded
    merged: str = ""  # the merge of the shard summaries, when this shard was the last to finish

    @property
    def failed(self) -> List[SegmentedCase]:
        return [c for c in self.cases if c.status != "ok"]

    @property
    def succeeded(self) -> List[SegmentedCase]:
        return [c for c in self.cases if c.status == "ok"]

    @property
    def reused(self) -> List[SegmentedCase]:
        return [c for c in self.cases if c.reused]

    def summary(self) -> str:
        text = f"{self.shard}\n" if self.shard else ""
        text += f"{len(self.succeeded)} of {len(self.cases)} cases segmented"
        if self.reused:
            text += f" ({len(self.reused)} finished by an earlier run, not redone)"
        text += f"; summary in {self.summary_csv}" + (f"\n{self.merged}" if self.merged else "")
        text += "".join(f"\n  {printable(c.case)}: {c.slice_filter}" for c in self.succeeded if c.slice_filter)
        text += "".join(f"\n  {printable(c.case)}: warning: {w}" for c in self.succeeded for w in c.warnings)
        return text + "".join(f"\n  {printable(c.case)}: FAILED: {c.error}" for c in self.failed)


def guidance_parameters_for(model: ModelSource) -> GuidanceParameters:
    """The OOI parameters the model was trained with (``dataset.json["agcrc"]``), else the defaults."""
    path = model.folder / "dataset.json"
    dataset = read_json(path, error=ModelError) if path.exists() else {}
    recorded = dataset.get("agcrc") or (model.metadata.guidance if model.metadata is not None else {}) or {}
    parameters = GuidanceParameters()
    ooi = recorded.get("ooi", {})
    if "dilation_mm" in ooi:
        parameters.dilation_mm = float(ooi["dilation_mm"])
    if "wall_width_mm" in ooi:
        parameters.wall_width_mm = float(ooi["wall_width_mm"])
    if recorded.get("organ_set") in ORGAN_SETS:
        parameters.organ_set = recorded["organ_set"]
    return parameters


def case_folder_or_file(given: Optional[Union[str, Path]], files: Sequence[Path], what: str) -> Optional[Path]:
    """``given`` as a folder of ``<case>`` files, or as the one file of a one-CT run; None when not given."""
    if given is None:
        return None
    given = Path(given)
    if given.is_dir():
        return given
    if not given.exists():
        raise InputError(f"{what}: {given} does not exist")
    if len(files) != 1:
        raise InputError(f"{what}: {given} is a file, but {len(files)} CTs are given; give a folder of "
                         "<case>.nii.gz files, one per CT")
    return given


def _find(given: Path, case: str) -> Optional[Path]:
    return given if given.is_file() else find_case_file(given, case)


class _OrganSource:
    """MOS for one case: from a folder of label maps (or the one file of a one-CT run), or from TotalSegmentator."""

    def __init__(self, organs: Optional[Path], convention: str, organ_set: str, device: str) -> None:
        self.folder = organs
        if self.folder is None:
            from OrganGuidanceLib.providers import TotalSegmentatorProvider

            self.provider = TotalSegmentatorProvider(organ_set=organ_set, device=device)
        else:
            self.convention = load_convention(convention)

    def segment(self, case: str, ct: Image) -> MOSSource:
        if self.folder is None:
            return self.provider.segment(ct)
        path = _find(self.folder, case)
        if path is None:
            raise InputError(f"{case}: no organ label map named {case}.nii.gz in {self.folder}")
        return MOSSource(read_image(path, name=f"{case} organ map"), self.convention)


def model_fingerprint(model: ModelSource) -> Dict[str, str]:
    """What identifies a model's predictions: the SHA-256 of every weight file and of its JSON descriptions."""
    recorded = model.metadata.checkpoint_sha256 if model.metadata is not None else {}
    files = {str(p.relative_to(model.folder)): recorded.get(str(p.relative_to(model.folder))) or input_digest(p)
             for p in model.checkpoint_paths()}
    files.update({p.name: input_digest(p) for p in sorted(model.folder.glob("*.json"))})
    return files


def _owned(name: str) -> bool:
    """Top-level entries of an output folder that ``crcseg segment`` writes (``--overwrite`` replaces them)."""
    return name in (SUMMARY_FILE, RECORDS) or _is_shard_summary(name) or name.endswith((TUMOR_ENDING, LABELS_ENDING, *DICOM_ENDINGS)) \
        or name.startswith(".tmp-case-")


def _result_files(folder: Path, case: str) -> List[Path]:
    return [p for p in (folder / f"{case}{ending}" for ending in (TUMOR_ENDING, LABELS_ENDING, *DICOM_ENDINGS))
            if p.exists()]


def _refuse_earlier_results(results: ResultFolder, cases: Sequence[Tuple[str, Path]], common: Dict[str, object]) -> None:
    """Earlier results that this run would replace: made by another model or settings, or by no resumable run."""
    if results.overwrite:
        return
    foreign = [p for case, _ in cases if results.record(case, complete_only=False) is None
               for p in _result_files(results.folder, case)]
    if not foreign and (results.folder / SUMMARY_FILE).exists() and not (results.folder / RECORDS).is_dir():
        foreign = [results.folder / SUMMARY_FILE]  # a summary of a run that kept no records
    if foreign:
        names = ", ".join(printable(str(p)) for p in foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise InputError(f"output: {names} exists already and was not written by a resumable run; pass --overwrite "
                         "to replace it, or choose another output folder")
    changed = results.conflicts([case for case, _ in cases], common, ignore=("inputs",))
    if changed:
        raise InputError(f"output: {results.folder} holds results of {len(changed)} of these cases made otherwise: "
                         f"{'; '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}; pass --overwrite to "
                         "replace them, or choose another output folder")


def segment_files(
    inputs: Union[str, Path, Sequence[Union[str, Path]]],
    model: Union[ModelSource, str, Path],
    output_dir: Union[str, Path],
    organs: Optional[Union[str, Path]] = None,
    references: Optional[Union[str, Path]] = None,
    parameters: Optional[SegmentationParameters] = None,
    convention: str = "totalsegmentator",
    overwrite: bool = False,
    slice_filter: Optional[Union[ModelSource, str, Path]] = None,
    output_types: Sequence[str] = ("nifti",),
    shard: Optional[Shard] = None,
) -> BatchReport:
    """Segment every CT of ``inputs``; ``organs``: folder of label maps, or one file for one CT (else TotalSegmentator).

    ``slice_filter``: an HCF bundle (or classifier-only bundle, folder or catalogue name) whose slice
    classifier then clears the tumor on the slices it calls normal; the summary reports what it removed.
    ``output_types``: ``OUTPUT_TYPES``; the DICOM ones (SEG, RTSTRUCT, SR) need a DICOM input: a case
    read from another format fails with a message saying so.
    ``shard``: segment only this shard's share of the cases (``Shard.select``); shards run at once into one
    output folder, each writes ``summary.shard-I-of-N.csv``, and the last to finish merges them into the summary.

    The output folder is a ``ResultFolder``: each case is written whole or not at all, with a record of
    what made it; the same call again skips the finished cases and does the rest (a killed or cancelled
    batch resumes). Results made otherwise (another model or settings, or no record) are never replaced
    unless ``overwrite``, which replaces the earlier result whole once the new one is complete.
    """
    cases = [(found.case, found.path) for found in find_cases(inputs)]
    shard_note = ""
    if shard is not None:  # the organ and reference checks below apply to the shard's own cases only
        total = len(cases)
        cases = shard.select(cases, name=lambda item: printable(item[0]))
        shard_note = shard.describe(len(cases), total)
        print(shard_note)
    files = [path for _, path in cases]
    organ_maps = case_folder_or_file(organs, files, "--organs")
    reference_folder = case_folder_or_file(references, files, "--references")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"output: {output_dir} is a file, not a folder")
    source = model if isinstance(model, ModelSource) else open_model(model)
    if source.no_guidance_reason and organs is not None:
        raise InputError(f"--organs: model '{source.name}' {source.no_guidance_reason} and takes no organ guidance")
    parameters = parameters or SegmentationParameters()
    dicom_types = checked_output_types(output_types)
    resolve_device(parameters.device)  # 'cuda' without a GPU is the run's error, before the model loads at a case
    cleaner = None
    if slice_filter is not None:
        from CRCSegmentationLib.models.slice_filter import SliceFilter

        if source.modality != "CT":
            raise InputError(f"--slice-filter: an HCF slice classifier reads CT slices; model '{source.name}' "
                             f"segments {source.modality} images")
        cleaner = SliceFilter(slice_filter, parameters.device, what="--slice-filter")  # fails before the model runs
    # A CT-only model runs TotalSegmentator only when asked to (organ guidance then just narrows the region).
    needs_guidance = source.uses_guidance or organs is not None
    guidance_parameters = guidance_parameters_for(source)
    common = _common_parts(source, parameters, guidance_parameters if needs_guidance else None,
                           organ_maps, convention, cleaner)
    if dicom_types:  # a rerun asking for other files must not skip cases that lack them
        common["dicom_outputs"] = list(dicom_types)
    # Before any case: a bad --convention or a missing TotalSegmentator is the run's error, not a case's
    organ_source = _OrganSource(organ_maps, convention, guidance_parameters.organ_set, parameters.device) \
        if needs_guidance else None
    with open_result_folder(output_dir, overwrite, _owned, shard=shard) as results:
        _refuse_earlier_results(results, cases, common)
        batch = _Batch(source, parameters, cleaner, guidance_parameters, reference_folder, dicom_types)
        summary_name = shard_summary_name(SUMMARY_FILE, shard) if shard is not None else SUMMARY_FILE
        report = BatchReport(output_dir, output_dir / summary_name, shard=shard_note)
        bar = tqdm(cases, desc="segment", unit="case")
        for case, path in bar:
            bar.set_postfix_str(printable(case))
            result = SegmentedCase(case, path, "failed")
            start = time.perf_counter()
            try:
                organ_map = _find(organ_maps, case) if organ_maps is not None else None
                reference = _find(reference_folder, case) if reference_folder is not None else None
                parts = {**common, "inputs": {role: input_digest(p) for role, p in
                                              (("image", path), ("organs", organ_map), ("reference", reference))
                                              if p is not None}}
                key = run_key(parts)
                finished = results.finished(case, key)
                if finished is not None:
                    result = SegmentedCase.from_record(finished.result, path)
                else:
                    if results.record(case) is not None:  # same model and settings (checked above): new files
                        result.warnings.append("redone: its image, organ map or reference changed since the earlier run")
                    with results.case_staging(case, key, parts) as (staging, record):
                        batch.segment_case(result, organ_source, staging)
                        result.status = "ok"
                        result.seconds = round(time.perf_counter() - start, 2)
                        record.result = result.to_record()
            except ModelError:  # the model, not the case: loaded at the first case that needs it
                raise
            except Exception as error:  # noqa: BLE001 - one bad case must not stop a batch; Ctrl-C still does
                result.status = "failed"
                result.error = failure_message(error)
                result.seconds = round(time.perf_counter() - start, 2)
            report.cases.append(result)
        bar.close()
        write_summary(report, results, summary_name)  # last: the mark of a finished run (or shard)
        if shard is not None:  # the last shard to finish merges (all N shard summaries present)
            try:
                merged = merge_shard_summaries(output_dir, SUMMARY_FILE)
                report.merged = merged.message() if merged.path is not None else ""
            except InputError as error:  # e.g. summaries of an earlier split: this shard's own work stands
                report.merged = f"summary.csv not merged: {error}"
    return report


def _common_parts(source: ModelSource, parameters: SegmentationParameters, guidance: Optional[GuidanceParameters],
                  organ_maps: Optional[Path], convention: str, cleaner) -> Dict[str, object]:
    """What every case's result depends on besides its own files (the device is not: a run may move to a GPU)."""
    settings = {k: v for k, v in dataclasses.asdict(parameters).items() if k != "device"}
    parts: Dict[str, object] = {"model": model_fingerprint(source), "settings": settings}
    if guidance is not None:
        parts["guidance"] = vars(guidance).copy()
        parts["organs"] = f"label maps ({convention})" if organ_maps is not None else "TotalSegmentator"
    if cleaner is not None:
        parts["slice_filter"] = model_fingerprint(cleaner.model)
    return parts


class _Batch:
    """What one case of a batch runs: guidance, the model, the slice filter, statistics and metrics."""

    def __init__(self, source: ModelSource, parameters: SegmentationParameters, cleaner, guidance_parameters,
                 reference_folder: Optional[Path], dicom_types: Sequence[str] = ()) -> None:
        self.source, self.cleaner, self.guidance_parameters = source, cleaner, guidance_parameters
        self.reference_folder = reference_folder
        self.dicom_types = tuple(dicom_types)
        self.parameters = parameters
        self._segmenter = None

    @property
    def segmenter(self):
        """Loaded once, for the first case that is not finished already (a resumed batch may need none)."""
        if self._segmenter is None:
            self._segmenter = self.source.segmenter(self.parameters)
        return self._segmenter

    def segment_case(self, result: SegmentedCase, organ_source: Optional["_OrganSource"], staging: Path) -> None:
        case, source = result.case, self.source
        ct = read_image(result.image, name=case)
        if ct.source is not None:
            result.series = ct.source.describe()
        if self.dicom_types and ct.source is None:  # before the model runs: the asked-for files cannot be made
            raise InputError(f"{case}: {printable(result.image.name)} is not a DICOM series: the DICOM outputs "
                             f"({', '.join(self.dicom_types)}) reference the series they were made from; give the "
                             "DICOM series, or leave out --output-type for this case")
        source.check_image(ct)  # before organ masks: TotalSegmentator on a non-CT would waste minutes
        guidance: Optional[GuidanceResult] = None
        if organ_source is not None:
            guidance = run_guidance(ct, [organ_source.segment(case, ct)], self.guidance_parameters)
            result.warnings.extend(guidance.warnings)
        segmentation = self.segmenter.segment(ct, guidance)
        if self.cleaner is not None:
            segmentation = self.cleaner.apply(ct, segmentation)
            filtered = segmentation.slice_filter
            result.slice_filter = filtered.summary()
            result.slices.update({"filter_removed_voxels": filtered.removed_voxels,
                                  "filter_rejected_slices": len(filtered.rejected_slices),
                                  "filter_tumor_slices": filtered.tumor_slices})
        if segmentation.slice_counts:
            result.slices.update({"slices": segmentation.slice_counts["slices"],
                                  "sanet_slices": segmentation.slice_counts["abnormal"]})
        written = write_image(segmentation.mask, staging / f"{case}{TUMOR_ENDING}")
        result.output = written.name
        if segmentation.organs is not None:  # e.g. RCSegNeXt's rectum: every label of the model in one map
            write_image(model_label_map(segmentation, source), staging / f"{case}{LABELS_ENDING}")
        result.statistics = tumor_statistics(segmentation.mask).to_dict()
        result.warnings.extend(segmentation.warnings)
        result.device = segmentation.device
        result.efficiency = dict(segmentation.efficiency)
        if self.reference_folder is not None:
            result.metrics = _metrics(case, segmentation.mask, self.reference_folder)
        if self.dicom_types:
            self._write_dicom(result, ct, segmentation, staging)

    def _write_dicom(self, result: SegmentedCase, ct: Image, segmentation, staging: Path) -> None:
        from CRCSegmentationLib.dicom.export import write_dicom_outputs

        written = write_dicom_outputs(
            self.dicom_types, staging, result.case, ct.source.files, ct, model_segments(segmentation, self.source),
            self.source.name, self.source.metadata.version if self.source.metadata is not None else "",
            statistics=TumorStatistics(**result.statistics))
        result.dicom = [path.name for path in written.files.values()]
        result.warnings.extend(written.notes)


def checked_output_types(output_types: Sequence[str]) -> Tuple[str, ...]:
    """The DICOM types among ``output_types`` (``OUTPUT_TYPES``); ``InputError`` naming an unknown one."""
    unknown = [t for t in output_types if t not in OUTPUT_TYPES]
    if unknown or not output_types:
        raise InputError(f"--output-type: {', '.join(unknown) or 'none given'}; choose from {', '.join(OUTPUT_TYPES)}")
    return tuple(t for t in OUTPUT_TYPES if t in output_types and t != "nifti")


def model_segments(segmentation, model: ModelSource) -> Dict[str, np.ndarray]:
    """Every label of the result as a 0/1 array on the CT grid: the tumor, and the model's organs when it segments
    organs too (RCSegNeXt's rectum), named as the model names them."""
    segments = {"tumor": segmentation.mask.array > 0}
    if segmentation.organs is not None:
        for name, value in model.labels.items():
            if value and value not in model.tumor_labels:
                segments[name] = segmentation.organs.array == value
    return segments


def model_label_map(segmentation, model: ModelSource) -> Image:
    """The organs the model segmented with the tumor painted over them, in the model's label values."""
    array = segmentation.organs.array.copy()
    array[segmentation.mask.array > 0] = model.tumor_labels[0]
    return segmentation.mask.with_array(array.astype(np.uint8), "Labels")


def _metrics(case: str, mask: Image, folder: Path) -> Dict[str, float]:
    path = _find(folder, case)
    if path is None:
        raise InputError(f"{case}: no reference named {case}.nii.gz in {folder}")
    reference = read_image(path, name=f"{case} reference")
    if not reference.same_grid(mask):
        raise InputError(f"{case}: the reference {path.name} is not on the CT grid ({reference.shape} vs {mask.shape})")
    metrics = compute_metrics(mask.array > 0, reference.array > 0, mask.spacing_zyx)
    return {name: float(getattr(metrics, name)) for name in METRIC_COLUMNS}


def _is_shard_summary(name: str) -> bool:
    """``summary.shard-I-of-N.csv``: a shard's summary (``OrganGuidanceLib.shards``)."""
    return name.startswith(SUMMARY_FILE[:-4] + ".shard-") and name.endswith(".csv")


def write_summary(report: BatchReport, results: ResultFolder, name: str = SUMMARY_FILE) -> Path:
    """One row per case, sorted by case name: a merge of shard summaries gives the same rows in the same order."""
    columns = ["case", "status", *STATISTICS_COLUMNS, *METRIC_COLUMNS, "seconds", "device", *EFFICIENCY_COLUMNS,
               *SLICE_COLUMNS, "output", "dicom", "series", "error", "warnings"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for case in sorted(report.cases, key=lambda c: printable(c.case)):
        row = {"case": printable(case.case), "status": case.status, "seconds": case.seconds, "device": case.device,
               "output": printable(case.output), "dicom": " ".join(case.dicom), "series": printable(case.series),
               "error": printable(case.error),
               "warnings": " | ".join(case.warnings)}
        row.update({k: _format(v) for k, v in case.statistics.items()})
        row.update({k: _format(v) for k, v in case.metrics.items()})
        row.update({k: _format(v) for k, v in case.efficiency.items()})
        row.update({k: _format(v) for k, v in case.slices.items()})
        writer.writerow(row)
    return results.write_last(name, buffer.getvalue())


def _format(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}"
    return str(value)
