"""``crcseg demo``: organ guidance end to end, offline, in a few seconds.

With no sample, a synthetic phantom (``phantom.py``) gives a CT, TotalSegmentator-
style organ labels and a known rectal tumor, so the demo can say whether the OOI
covers the tumor. ``--sample ts-example`` downloads TotalSegmentator's public
example CT (checksum-verified, cached in the output folder) and segments it with
TotalSegmentator; without a network or without its weights the demo says why in
one line and falls back to the phantom.
"""
from __future__ import annotations

import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from OrganGuidanceLib.download import DownloadUnavailable, download_verified
from OrganGuidanceLib.guidance import GuidanceParameters, GuidanceResult, MOSSource, run_guidance
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.validation import InputError

TS_EXAMPLE_URL = (
    "https://github.com/wasserth/TotalSegmentator/raw/0effae9d718aab0c118ce1f8982dcd16b9e32a50/"
    "tests/reference_files/example_ct.nii.gz"
)
TS_EXAMPLE_SHA256 = "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1"
SAMPLES = {"ts-example": "ts_example_ct.nii.gz"}  # sample name -> cached file name in the output folder
DEFAULT_OUTPUT = Path("demo_output")
PHANTOM_FILES = {"ct": "ct.nii.gz", "labels": "labels_total.nii.gz", "tumor": "tumor_gt.nii.gz", "text": "summary.txt"}

Log = Callable[[str], None]


@dataclass
class DemoReport:
    source: str  # "phantom" | "ts-example"
    output_dir: Path
    files: Dict[str, Path] = field(default_factory=dict)
    fallback_reason: Optional[str] = None  # why a requested sample was not used
    tumor_coverage: Optional[float] = None  # fraction of tumor voxels inside the OOI (phantom only)
    volumes_ml: Dict[str, float] = field(default_factory=dict)
    crop_shape: Optional[Tuple[int, int, int]] = None  # (z, y, x)
    full_shape: Tuple[int, int, int] = (0, 0, 0)
    timings_s: Dict[str, float] = field(default_factory=dict)
    summary: str = ""


def _segment_sample(ct: Image, parameters: GuidanceParameters) -> MOSSource:
    """TotalSegmentator on the sample; raises ``MissingWeightsError`` before any long wait."""
    from OrganGuidanceLib.providers import TotalSegmentatorProvider, check_totalsegmentator_weights

    provider = TotalSegmentatorProvider(organ_set=parameters.organ_set, fast=True)
    check_totalsegmentator_weights(fast=True, roi_subset=provider.roi_subset)
    return provider.segment(ct)


# --- summary ------------------------------------------------------------------------
def _summary(report: DemoReport, ct: Image, result: GuidanceResult, tumor: Optional[Image], title: str) -> str:
    from OrganGuidanceLib.labels import ORGAN_ALIASES

    voxel_ml = float(np.prod(ct.spacing)) / 1000.0
    gi_names = {alias for aliases in ORGAN_ALIASES.values() for alias in aliases}
    lines = [title]
    if report.fallback_reason:
        lines.append(f"(fallback: {report.fallback_reason})")
    nx, ny, nz = ct.shape[::-1]
    lines.append(f"CT: {nx} x {ny} x {nz} voxels (x, y, z), spacing {' x '.join(f'{s:.2f}' for s in ct.spacing)} mm")
    lines.append("Organs of interest (MOS, TotalSegmentator v2 ids):")
    counts = np.bincount(result.mos.array.ravel().astype(np.int64))
    others = []
    for value, name in sorted(result.organ_names.items()):
        if name not in gi_names:
            others.append(name)
            continue
        volume = counts[value] * voxel_ml if value < counts.size else 0.0
        lines.append(f"  {name:<14} {value:>4}  {volume:8.1f} ml")
    if others:
        lines += textwrap.wrap(f"Other organs in the MOS ({len(others)}): {', '.join(others)}",
                               width=100, subsequent_indent="  ")
    volumes = report.volumes_ml
    lines.append(
        f"OOI: {volumes['ooi']:.1f} ml (undilated {volumes['ooi0']:.1f} ml), bowel wall: {volumes['bowel_wall']:.1f} ml"
    )
    if tumor is not None and report.tumor_coverage is not None:
        touches = bool(np.logical_and(tumor.array > 0, result.bowel_wall.array).any())
        lines.append(
            f"Tumor: {volumes['tumor']:.1f} ml; OOI covers the tumor: "
            f"{'yes' if report.tumor_coverage >= 1.0 else 'no'} ({100 * report.tumor_coverage:.1f} % of tumor voxels); "
            f"bowel wall touches the tumor: {'yes' if touches else 'no'}"
        )
    if report.crop_shape is not None:
        crop, full = report.crop_shape[::-1], report.full_shape[::-1]
        fraction = float(np.prod(crop)) / float(np.prod(full))
        lines.append(
            f"Body crop box: {' x '.join(map(str, crop))} of {' x '.join(map(str, full))} voxels (x, y, z), "
            f"{100 * fraction:.0f} % of the volume"
        )
    else:
        lines.append("Body crop: off")
    lines.append("Timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in report.timings_s.items()))
    lines.append(f"Output: {report.output_dir}")
    for key, path in sorted(report.files.items()):
        lines.append(f"  {key:<11} {path.name}")
    return "\n".join(lines) + "\n"


def _finish(report: DemoReport, ct: Image, result: GuidanceResult, parameters: GuidanceParameters,
            tumor: Optional[Image], title: str, extra_images: Dict[str, Tuple[Image, str]]) -> DemoReport:
    """Write images and guidance outputs, measure, and write ``summary.txt``."""
    from OrganGuidanceLib.io import write_image
    from OrganGuidanceLib.outputs import write_guidance_outputs, write_text_atomic

    start = time.perf_counter()
    for key, (image, name) in extra_images.items():
        report.files[key] = write_image(image, report.output_dir / name)
    report.files.update(write_guidance_outputs(ct, result, report.output_dir, parameters, tumor=tumor))
    report.timings_s["writing"] = time.perf_counter() - start
    voxel_ml = float(np.prod(ct.spacing)) / 1000.0
    report.volumes_ml = {
        "ooi0": float(result.ooi0.array.sum()) * voxel_ml,
        "ooi": float(result.ooi.array.sum()) * voxel_ml,
        "bowel_wall": float(result.bowel_wall.array.sum()) * voxel_ml,
    }
    if tumor is not None:
        tumor_mask = tumor.array > 0
        report.volumes_ml["tumor"] = float(tumor_mask.sum()) * voxel_ml
        report.tumor_coverage = float(np.logical_and(tumor_mask, result.ooi.array).sum()) / max(int(tumor_mask.sum()), 1)
    report.full_shape = ct.shape
    report.crop_shape = result.crop_box.shape if result.crop_box is not None else None
    report.timings_s["total"] = sum(report.timings_s.values())
    report.files["text"] = report.output_dir / PHANTOM_FILES["text"]  # listed in its own text
    report.summary = _summary(report, ct, result, tumor, title)
    write_text_atomic(report.files["text"], report.summary)
    return report


# --- the demo ---------------------------------------------------------------------
def _run_phantom(output_dir: Path, parameters: GuidanceParameters, fallback_reason: Optional[str]) -> DemoReport:
    from OrganGuidanceLib.labels import totalsegmentator_convention
    from OrganGuidanceLib.phantom import make_abdominal_phantom

    report = DemoReport(source="phantom", output_dir=output_dir, fallback_reason=fallback_reason)
    start = time.perf_counter()
    phantom = make_abdominal_phantom()
    report.timings_s["phantom"] = time.perf_counter() - start
    start = time.perf_counter()
    result = run_guidance(phantom.ct, [MOSSource(phantom.labels, totalsegmentator_convention())], parameters)
    report.timings_s["guidance"] = time.perf_counter() - start
    images = {
        "ct": (phantom.ct, PHANTOM_FILES["ct"]),
        "labels": (phantom.labels, PHANTOM_FILES["labels"]),
        "tumor_gt": (phantom.tumor, PHANTOM_FILES["tumor"]),
    }
    title = "SlicerCRC demo: organ guidance on a synthetic abdominal CT phantom (known rectal tumor)"
    return _finish(report, phantom.ct, result, parameters, phantom.tumor, title, images)


def _run_sample(output_dir: Path, sample: str, url: str, sha256: str, parameters: GuidanceParameters,
                log: Log) -> DemoReport:
    """Raises ``DownloadUnavailable`` or ``MissingWeightsError`` for the caller to fall back."""
    from OrganGuidanceLib.io import read_image

    report = DemoReport(source=sample, output_dir=output_dir)
    start = time.perf_counter()
    path = download_verified(url, sha256, output_dir / SAMPLES[sample])
    report.files["sample_ct"] = path
    report.timings_s["download"] = time.perf_counter() - start
    ct = read_image(path, name=f"{sample} CT")
    start = time.perf_counter()
    log(f"segmenting organs with TotalSegmentator (fast model, organ set '{parameters.organ_set}') ...")
    source = _segment_sample(ct, parameters)
    report.timings_s["totalsegmentator"] = time.perf_counter() - start
    start = time.perf_counter()
    result = run_guidance(ct, [source], parameters)
    report.timings_s["guidance"] = time.perf_counter() - start
    images = {"labels": (source.label_map, PHANTOM_FILES["labels"])}
    title = f"SlicerCRC demo: organ guidance on the TotalSegmentator example CT ({sample})"
    return _finish(report, ct, result, parameters, None, title, images)


def run_demo(
    output_dir: Path,
    sample: str | None = None,
    sample_url: str = TS_EXAMPLE_URL,
    sample_sha256: str = TS_EXAMPLE_SHA256,
    parameters: GuidanceParameters | None = None,
    log: Optional[Log] = print,
) -> DemoReport:
    """Run the demo into ``output_dir`` and print its summary (``log=None`` keeps it quiet).

    ``sample``: None for the phantom, or ``"ts-example"``. A sample that cannot be
    downloaded or segmented (no network, no TotalSegmentator weights) falls back to
    the phantom with ``DemoReport.fallback_reason`` set; a checksum mismatch raises.
    """
    say: Log = log or (lambda message: None)
    output_dir = Path(output_dir)
    parameters = parameters or GuidanceParameters()
    fallback_reason = None
    report: Optional[DemoReport] = None
    if sample is not None:
        if sample not in SAMPLES:
            raise InputError(f"demo sample '{sample}': unknown; choose one of {sorted(SAMPLES)}")
        from OrganGuidanceLib.providers import MissingWeightsError

        try:
            report = _run_sample(output_dir, sample, sample_url, sample_sha256, parameters, say)
        except DownloadUnavailable as error:
            fallback_reason = str(error)
        except (MissingWeightsError, ImportError) as error:  # ImportError: TotalSegmentator not installed
            fallback_reason = f"organ segmentation unavailable: {error}"
        if fallback_reason:
            say(f"demo: {fallback_reason} -> using the synthetic phantom instead")
    if report is None:
        report = _run_phantom(output_dir, parameters, fallback_reason)
    say(report.summary.rstrip())
    return report
