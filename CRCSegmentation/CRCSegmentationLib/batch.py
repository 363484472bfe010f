"""Tumor segmentation over many CT files: the console's batch call and ``crcseg segment``.

Per case: read the CT -> organ masks (a folder of label maps ``<case>.nii.gz``, or
TotalSegmentator) -> organ guidance with the parameters the model was trained with
(``dataset.json["agcrc"]``) -> ``TumorSegmenter.segment`` -> ``<case>_tumor.nii.gz``
-> statistics, and AG-CRC metrics against ``<case>.nii.gz`` in a reference folder.
A case that fails is reported in the summary and skipped; the model is loaded once.
Models that take no organ guidance (MR, HCF) get none. ``slice_filter``: an HCF bundle whose slice
classifier clears the tumor on the slices it calls normal (``slice_filter.SliceFilter``), after any model.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from OrganGuidanceLib.atomic import write_text_atomic
from OrganGuidanceLib.guidance import GuidanceParameters, GuidanceResult, MOSSource, run_guidance
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import IMAGE_SUFFIXES, read_image, write_image
from OrganGuidanceLib.labels import ORGAN_SETS, load_convention
from OrganGuidanceLib.validation import InputError

from .inference import SegmentationParameters
from .metrics import compute_metrics
from .model_source import ModelSource, open_model
from .statistics import tumor_statistics

NNUNET_CHANNEL_SUFFIX = "_0000"  # nnU-Net's imagesTs naming: the CT channel of case <case>
SUMMARY_FILE = "summary.csv"
STATISTICS_COLUMNS = ("volume_ml", "largest_axial_diameter_mm", "craniocaudal_extent_mm", "components")
# FLARE's efficiency measures (efficiency.py): the model run's wall time, peak resident memory on the CPU,
# peak GPU memory and the area under the GPU-memory-time curve on CUDA (empty where they do not apply)
EFFICIENCY_COLUMNS = ("wall_s", "peak_rss_mb", "gpu_peak_mb", "gpu_memory_time_mb_s")
METRIC_COLUMNS = ("dice", "nsd", "precision", "recall", "hd95")
# Slice models (HCF): axial slices and how many of them went to SANet; the slice filter's report
SLICE_COLUMNS = ("slices", "sanet_slices", "filter_removed_voxels", "filter_rejected_slices", "filter_tumor_slices")


@dataclass
class CaseResult:
    case: str
    image: Path
    status: str  # "ok" | "failed"
    output: Optional[Path] = None
    error: str = ""
    statistics: Dict[str, float] = field(default_factory=dict)
    metrics: Dict[str, float] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    seconds: float = 0.0
    device: str = ""
    efficiency: Dict[str, float] = field(default_factory=dict)  # FLARE's measures of the model run
    slices: Dict[str, int] = field(default_factory=dict)  # SLICE_COLUMNS that apply (HCF, slice filter)
    slice_filter: str = ""  # the slice filter's summary line, when one ran


@dataclass
class BatchReport:
    output_dir: Path
    summary_csv: Path
    cases: List[CaseResult] = field(default_factory=list)

    @property
    def failed(self) -> List[CaseResult]:
        return [c for c in self.cases if c.status != "ok"]

    @property
    def succeeded(self) -> List[CaseResult]:
        return [c for c in self.cases if c.status == "ok"]

    def summary(self) -> str:
        text = f"{len(self.succeeded)} of {len(self.cases)} cases segmented; summary in {self.summary_csv}"
        text += "".join(f"\n  {c.case}: {c.slice_filter}" for c in self.succeeded if c.slice_filter)
        return text + "".join(f"\n  {c.case}: FAILED: {c.error}" for c in self.failed)


def case_name(path: Path) -> str:
    """File name without its image ending (and without nnU-Net's ``_0000`` channel suffix)."""
    name = path.name
    for ending in IMAGE_SUFFIXES:
        if name.endswith(ending):
            name = name[: -len(ending)]
            break
    return name[: -len(NNUNET_CHANNEL_SUFFIX)] if name.endswith(NNUNET_CHANNEL_SUFFIX) else name


def find_inputs(inputs: Union[str, Path, Sequence[Union[str, Path]]]) -> List[Path]:
    """One file, a folder (its image files, sorted) or a list of files."""
    if isinstance(inputs, (str, Path)):
        path = Path(inputs)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(IMAGE_SUFFIXES)
                           and not p.name.startswith("."))
            if not files:
                raise InputError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            return files
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        return [path]
    return [Path(p) for p in inputs]


def find_case_file(folder: Path, case: str) -> Optional[Path]:
    for ending in IMAGE_SUFFIXES:
        for name in (f"{case}{ending}", f"{case}{NNUNET_CHANNEL_SUFFIX}{ending}"):
            if (folder / name).is_file():
                return folder / name
    return None


def guidance_parameters_for(model: ModelSource) -> GuidanceParameters:
    """The OOI parameters the model was trained with (``dataset.json["agcrc"]``), else the defaults."""
    try:
        dataset = json.loads((model.folder / "dataset.json").read_text())
    except (OSError, ValueError):
        dataset = {}
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


def case_files(given: Optional[Union[str, Path]], files: Sequence[Path], what: str) -> Optional[Path]:
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
) -> BatchReport:
    """Segment every CT of ``inputs``; ``organs``: folder of label maps, or one file for one CT (else TotalSegmentator).

    ``slice_filter``: an HCF bundle (or classifier-only bundle, folder or catalogue name) whose slice
    classifier then clears the tumor on the slices it calls normal; the summary reports what it removed.
    Existing results in ``output_dir`` are never replaced unless ``overwrite``: the run is refused first.
    """
    files = find_inputs(inputs)
    organ_maps = case_files(organs, files, "organ masks")
    reference_folder = case_files(references, files, "references")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"output: {output_dir} is a file, not a folder")
    if not overwrite:
        existing = [p for p in [output_dir / f"{case_name(f)}_tumor.nii.gz" for f in files] + [output_dir / SUMMARY_FILE]
                    if p.exists()]
        if existing:
            raise InputError(f"output: {', '.join(str(p) for p in existing[:3])}{' ...' if len(existing) > 3 else ''} "
                             "exists already; pass --overwrite to replace it, or choose another output folder")
    source = model if isinstance(model, ModelSource) else open_model(model)
    if source.no_guidance_reason and organs is not None:
        raise InputError(f"--organs: model '{source.name}' {source.no_guidance_reason} and takes no organ guidance")
    parameters = parameters or SegmentationParameters()
    cleaner = None
    if slice_filter is not None:
        from .slice_filter import SliceFilter

        if source.modality != "CT":
            raise InputError(f"--slice-filter: an HCF slice classifier reads CT slices; model '{source.name}' "
                             f"segments {source.modality} images")
        cleaner = SliceFilter(slice_filter, parameters.device)  # before the model: a wrong filter fails fast
    segmenter = source.segmenter(parameters)  # loads the model once for every case
    # A CT-only model runs TotalSegmentator only when asked to (organ guidance then just narrows the region).
    needs_guidance = source.uses_guidance or organs is not None
    guidance_parameters = guidance_parameters_for(source)
    organ_source = _OrganSource(organ_maps, convention, guidance_parameters.organ_set, parameters.device) \
        if needs_guidance else None
    output_dir.mkdir(parents=True, exist_ok=True)
    report = BatchReport(output_dir, output_dir / SUMMARY_FILE)

    bar = tqdm(files, desc="segment", unit="case")
    for path in bar:
        case = case_name(path)
        bar.set_postfix_str(case)
        result = CaseResult(case, path, "failed")
        start = time.perf_counter()
        try:
            ct = read_image(path, name=case)
            source.check_image(ct)  # before organ masks: TotalSegmentator on a non-CT would waste minutes
            guidance: Optional[GuidanceResult] = None
            if organ_source is not None:
                guidance = run_guidance(ct, [organ_source.segment(case, ct)], guidance_parameters)
                result.warnings.extend(guidance.warnings)
            segmentation = segmenter.segment(ct, guidance)
            if cleaner is not None:
                segmentation = cleaner.apply(ct, segmentation)
                filtered = segmentation.slice_filter
                result.slice_filter = filtered.summary()
                result.slices.update({"filter_removed_voxels": filtered.removed_voxels,
                                      "filter_rejected_slices": len(filtered.rejected_slices),
                                      "filter_tumor_slices": filtered.tumor_slices})
            if segmentation.slice_counts:
                result.slices.update({"slices": segmentation.slice_counts["slices"],
                                      "sanet_slices": segmentation.slice_counts["abnormal"]})
            result.output = write_image(segmentation.mask, output_dir / f"{case}_tumor.nii.gz")
            if segmentation.organs is not None:  # e.g. RCSegNeXt's rectum: every label of the model in one map
                write_image(model_label_map(segmentation, source), output_dir / f"{case}_labels.nii.gz")
            result.statistics = tumor_statistics(segmentation.mask).to_dict()
            result.warnings.extend(segmentation.warnings)
            result.device = segmentation.device
            result.efficiency = dict(segmentation.efficiency)
            if reference_folder is not None:
                result.metrics = _metrics(case, segmentation.mask, reference_folder)
            result.status = "ok"
        except Exception as error:  # noqa: BLE001 - one bad case must not stop a batch; Ctrl-C still does
            result.error = str(error) if isinstance(error, InputError) else f"{type(error).__name__}: {error}"
        result.seconds = round(time.perf_counter() - start, 2)
        report.cases.append(result)
        write_summary(report)  # after every case: an interrupted batch keeps what it did
    bar.close()
    return report


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


def write_summary(report: BatchReport) -> Path:
    columns = ["case", "status", *STATISTICS_COLUMNS, *METRIC_COLUMNS, "seconds", "device", *EFFICIENCY_COLUMNS,
               *SLICE_COLUMNS, "output", "error", "warnings"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for case in report.cases:
        row = {"case": case.case, "status": case.status, "seconds": case.seconds, "device": case.device,
               "output": case.output.name if case.output else "", "error": case.error,
               "warnings": " | ".join(case.warnings)}
        row.update({k: _format(v) for k, v in case.statistics.items()})
        row.update({k: _format(v) for k, v in case.metrics.items()})
        row.update({k: _format(v) for k, v in case.efficiency.items()})
        row.update({k: _format(v) for k, v in case.slices.items()})
        writer.writerow(row)
    return write_text_atomic(report.summary_csv, buffer.getvalue())


def _format(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}"
    return str(value)


# --- command line: ``crcseg segment`` ------------------------------------------------------------
def add_segment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="a CT file or a folder of CT files (NIfTI, NRRD, MHA); MR files for an MR "
                        "model (RCSegNeXt)")
    parser.add_argument("-m", "--model", required=True,
                        help="a model bundle, an nnU-Net results folder, or a catalogue name (e.g. demo_phantom)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="folder for <case>_tumor.nii.gz and summary.csv (and <case>_labels.nii.gz, "
                        "every label of the model, when it segments organs too: the rectum of an MR model)")
    parser.add_argument("--organs", type=Path, default=None,
                        help="folder of organ label maps <case>.nii.gz, or one label map for one CT "
                             "(default: run TotalSegmentator)")
    parser.add_argument("--convention", default="totalsegmentator",
                        help="label convention of --organs: totalsegmentator, word or a JSON mapping file")
    parser.add_argument("--references", type=Path, default=None,
                        help="folder of tumor references <case>.nii.gz (or one file for one CT): adds Dice, NSD, "
                             "precision, recall, HD95")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the <case>_tumor.nii.gz and summary.csv of an earlier run in the output folder")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--no-mirroring", action="store_true", help="no test-time mirroring (about 8x faster)")
    parser.add_argument("--preset", choices=("default", "fast"), default="default",
                        help="fast: FLARE24's inference settings, tile step 7/8 of the patch and no mirroring")
    parser.add_argument("--folds", nargs="+", default=None, help="folds to ensemble (default: all available)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint file name (default: checkpoint_final.pth)")
    parser.add_argument("--min-component-ml", type=float, default=0.0, help="remove tumor components smaller than this")
    parser.add_argument("--slice-filter", default=None, metavar="MODEL",
                        help="an HCF bundle or classifier-only bundle (folder or catalogue name): its slice classifier "
                             "clears the tumor on the axial slices it calls normal (false-positive filter, any model)")
    parser.add_argument("--exact-tiles", action="store_true",
                        help="run every full-volume tile touching the OOI box: inside it, exactly nnU-Net's "
                             "full-volume result (default: skip tiles weighing < 5 %% of their peak on the OOI)")


def segment_main(args: argparse.Namespace) -> int:
    model = open_model(args.model, folds=args.folds, checkpoint=args.checkpoint)  # a folder or a catalogue name
    chosen = {"device": args.device, "min_component_ml": args.min_component_ml,
              "min_tile_weight": 0.0 if args.exact_tiles else SegmentationParameters.min_tile_weight}
    if args.no_mirroring:
        chosen["mirroring"] = False
    parameters = SegmentationParameters.for_preset(args.preset, **chosen)
    report = segment_files(args.input, model, args.output, organs=args.organs, references=args.references,
                           parameters=parameters, convention=args.convention, overwrite=args.overwrite,
                           slice_filter=args.slice_filter)
    print(report.summary())
    return 0 if not report.failed else 1
