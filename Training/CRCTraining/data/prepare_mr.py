"""MR dataset preparation: T2 MRI with rectum + tumor labels -> an nnU-Net v2 raw dataset (RCSegNeXt §3.1).

For every case of the source dataset (MSD layout or an nnU-Net raw dataset, read by
``datasets.read_source_dataset``; of an nnU-Net source its channel 0 is the image)::

    imagesTr/<case>_0000.nii.gz   the MR image: the source's voxels and geometry, no reorientation
    labelsTr/<case>.nii.gz        0 background, 1 rectum, 2 tumor (remapped from the source's names)

The source's labels are found by name in its ``dataset.json`` (case-insensitive): the rectum
is a label named "rectum" or "rectal ..." (not "mesorectum"), the tumor one named with
"tumor", "tumour", "cancer" or "carcinoma"; ``rectum_label`` / ``tumor_label`` name them
explicitly (a name or a value). Several source labels may map to one output label; other
source labels become background.

The thick axis. A sagittal T2 series has thick slices (RCSegNeXt Dataset A: 4.0 mm) running
patient left-right: as the scanner stores it that is array axis 0 (ITK index k), after a tool
reorients the volume to LPS/RAS it is ITK x = array axis 2. The image is written as it is:
nnU-Net's planner itself transposes every case so that the axis of the largest spacing comes
first (``ExperimentPlanner.determine_transpose``: ``transpose_forward = [argmax(spacing), ...]``),
so the network's anisotropic (first) axis is the thick one in both storages, and predictions
are transposed back (``transpose_backward``) onto the input's grid.
``dataset.json`` records the training images' thick axis (``crcseg.thick_axis``, a
``mr_checks.TrainingThickAxis``: the patient axis most cases have it along, the median thick
spacing and anisotropy, cases per patient axis), read from the image headers here, where the
images are; ``crcseg export`` copies it into the bundle, and the model then warns about a
volume sliced in another plane (``CRCSegmentationLib.core.model_fit``).

Normalisation: channel name "zscore" -> nnU-Net's ``ZScoreNormalization`` (per image: subtract
the mean, divide by the standard deviation), the usual choice for MR, whose intensities have
no physical unit; "MR" travels in ``channel_descriptions`` (what our model loader reads).

Checks per case, each naming its file: the image is a plausible MR (``CRCSegmentationLib.
mr_checks.check_mr``: 3D, finite, not constant, not a CT in Hounsfield units), the label map
is a 3D integer map on the image's grid, its values are labels the source declares, and the
case has a rectum. A failing case is reported and left out (its earlier outputs are removed);
only a dataset where every case fails raises ``MRPrepareError``. Each file is written
atomically; ``.crcseg_cache/<case>.json`` holds a SHA-256 over the inputs' bytes and the label
mapping, so a rerun skips cases whose inputs are unchanged (and whose outputs exist).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from CRCSegmentationLib.core.mr_checks import ThickAxis, TrainingThickAxis, check_mr, thick_axis, training_thick_axis
from CRCTraining import __version__
from CRCTraining.data.prepare_ct import dataset_folder_name, input_hash
from CRCTraining.data.raw_dataset import (
    FILE_ENDING,
    TEMPORARY_PREFIX,
    CaseReport,
    PrepareError,
    RawDatasetLayout,
    write_if_changed,
)
from CRCTraining.data.sources import SourceCase, SourceDataset, read_source_dataset
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.io import read_image, write_image
from OrganGuidanceLib.validation import InputError, check_label_map, failure_message

CACHE_FORMAT = 1  # bump when the outputs of the same inputs change
CACHE_FOLDER = ".crcseg_cache"
CHANNEL_NAMES = {"0": "zscore"}  # nnU-Net: "zscore" -> ZScoreNormalization
CHANNEL_DESCRIPTIONS = {"0": "MR"}
LABELS = {"background": 0, "rectum": 1, "tumor": 2}  # RCSegNeXt §3.1: rectum and tumor
TUMOR_WORDS = ("tumor", "tumour", "cancer", "carcinoma")
_RECTUM_NAME = re.compile(r"(?<![a-z])rect(um|al)(?![a-z])")  # "Rectum", "rectal wall", not "mesorectum"

LabelChoice = Optional[Union[str, int]]


class MRPrepareError(PrepareError):
    """MR preparation cannot start (labels, folders), or every case failed; the message says why."""


# --- labels -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelMapping:
    """Which source label values become rectum (1) and tumor (2); the rest of ``known`` is background."""

    rectum: Tuple[int, ...]
    tumor: Tuple[int, ...]
    known: Tuple[int, ...]  # every value the source declares, background included
    names: Dict[int, str] = field(default_factory=dict)

    def remap(self, values: np.ndarray) -> np.ndarray:
        out = np.zeros(values.shape, dtype=np.uint8)
        out[np.isin(values, self.rectum)] = LABELS["rectum"]
        out[np.isin(values, self.tumor)] = LABELS["tumor"]
        return out

    def to_dict(self) -> dict:
        ignored = [v for v in self.known if v and v not in self.rectum and v not in self.tumor]
        return {
            "rectum": {str(v): self.names.get(v, "") for v in self.rectum},
            "tumor": {str(v): self.names.get(v, "") for v in self.tumor},
            "background": {str(v): self.names.get(v, "") for v in self.known if v == 0 or v in ignored},
        }


def _is_tumor_name(name: str) -> bool:
    return any(word in name.lower() for word in TUMOR_WORDS)


def _is_rectum_name(name: str) -> bool:
    return bool(_RECTUM_NAME.search(name.lower())) and not _is_tumor_name(name)


def _pick(choice: LabelChoice, names: Dict[int, str], role: str, where: str) -> Optional[Tuple[int, ...]]:
    """Values named by an explicit ``choice`` (a value, or a label name), or None for "find by name"."""
    if choice is None:
        return None
    if isinstance(choice, str) and choice.strip().lstrip("-").isdigit():
        choice = int(choice.strip())
    if isinstance(choice, (int, np.integer)) and not isinstance(choice, bool):
        value = int(choice)
        if value <= 0:
            raise MRPrepareError(f"{role} label {value}: must be a positive label value (0 is the background)")
        if names and value not in names:
            raise MRPrepareError(f"{where}: has no label value {value} for the {role}; its labels are {_listing(names)}")
        return (value,)
    wanted = str(choice).strip().lower()
    values = tuple(v for v, n in sorted(names.items()) if n.strip().lower() == wanted and v != 0)
    if not values:
        raise MRPrepareError(f"{where}: has no label named {choice!r} for the {role}; its labels are {_listing(names)}")
    return values


def _listing(names: Dict[int, str]) -> str:
    return "{" + ", ".join(f"{v}: {n!r}" for v, n in sorted(names.items())) + "}" if names else "none"


def _named_like(names: Dict[int, str], matches: Callable[[str], bool], role: str, like: str,
                where: str) -> Tuple[int, ...]:
    """The non-background values whose names ``matches``; none found asks for the explicit ``<role>_label``."""
    values = tuple(v for v, n in sorted(names.items()) if v and matches(n))
    if not values:
        raise MRPrepareError(
            f"{where}: no label named like {like} among its labels {_listing(names)}; "
            f"name the {role} label explicitly ({role}_label)"
        )
    return values


def resolve_labels(dataset: SourceDataset, rectum_label: LabelChoice = None,
                   tumor_label: LabelChoice = None) -> LabelMapping:
    """The source's rectum and tumor values, from the explicit choices or by name in its dataset.json."""
    where = str(Path(dataset.folder) / "dataset.json")
    names = dict(dataset.label_names)
    rectum = _pick(rectum_label, names, "rectum", where)
    tumor = _pick(tumor_label, names, "tumor", where)
    if not names and (rectum is None or tumor is None):
        raise MRPrepareError(
            f"{where}: names no labels (missing file or no 'labels'); the rectum and tumor labels cannot be found "
            "by name: give both values (rectum_label, tumor_label)"
        )
    if rectum is None:
        rectum = _named_like(names, _is_rectum_name, "rectum", "'rectum'", where)
    if tumor is None:
        tumor = _named_like(names, _is_tumor_name, "tumor", "'tumor', 'tumour', 'cancer' or 'carcinoma'", where)
    both = sorted(set(rectum) & set(tumor))
    if both:
        raise MRPrepareError(f"{where}: label value(s) {both} cannot be both the rectum and the tumor")
    known = tuple(sorted(set(names) | {0} | set(rectum) | set(tumor)))
    return LabelMapping(tuple(rectum), tuple(tumor), known, names)


# --- report -------------------------------------------------------------------------------------
@dataclass
class MRPrepareReport(CaseReport):
    dataset_folder: Path
    done: List[str] = field(default_factory=list)  # written in this run
    cached: List[str] = field(default_factory=list)  # skipped: inputs unchanged, outputs present
    failed: Dict[str, str] = field(default_factory=dict)  # case id -> error message (naming the file)
    removed: List[str] = field(default_factory=list)  # cases deleted from the dataset (failed now, or gone)
    warnings: Dict[str, List[str]] = field(default_factory=dict)  # case id -> things to check
    statistics: Dict[str, dict] = field(default_factory=dict)  # case id -> voxel counts, spacing, thick axis

    def summary(self) -> str:
        text = (f"{self.dataset_folder.name}: {len(self.done)} prepared, {len(self.cached)} cached, "
                f"{len(self.failed)} failed")
        if self.warnings:
            text += f", {len(self.warnings)} with warnings"
        text += "".join(f"\n  {case}: {message}" for case, message in self.failed.items())
        return text + "".join(f"\n  {case}: warning: {w}" for case, ws in self.warnings.items() for w in ws)


# --- one case -----------------------------------------------------------------------------------
def case_outputs(folder: Path, case_id: str) -> Dict[str, Path]:
    return {
        "image": folder / "imagesTr" / f"{case_id}_0000{FILE_ENDING}",
        "label": folder / "labelsTr" / f"{case_id}{FILE_ENDING}",
    }


def _is_mr_dataset(description: dict) -> bool:
    """A dataset.json that prepare_mr_dataset wrote (its "crcseg" block says MR)."""
    return (description.get("crcseg") or {}).get("modality") == "MR"


LAYOUT = RawDatasetLayout(CACHE_FOLDER, case_outputs, "prepare_mr_dataset", _is_mr_dataset, MRPrepareError,
                          CACHE_FORMAT, not_a_case=TEMPORARY_PREFIX)


def _check_grid(label: Image, image: Image) -> None:
    """The label map must lie on the image's grid; header rounding noise is tolerated."""
    tolerance = 0.1 * min(image.spacing)
    if (
        label.shape == image.shape
        and np.allclose(label.spacing, image.spacing, rtol=1e-4)
        and np.all(np.abs(np.subtract(label.origin, image.origin)) <= tolerance)
        and np.allclose(label.direction, image.direction, atol=1e-4)
    ):
        return
    raise InputError(
        f"{label.name}: the label map's grid ({label.shape} voxels, spacing {label.spacing}, origin "
        f"{tuple(round(o, 2) for o in label.origin)}) is not the image's ({image.shape}, {image.spacing}, "
        f"{tuple(round(o, 2) for o in image.origin)}); geometry mismatch"
    )


@dataclass
class _Setup:
    folder: Path
    source: SourceDataset
    mapping: LabelMapping
    settings: dict  # hashed with every case


def _display(path: Path, source: SourceDataset) -> str:
    """A file named for messages: relative to the source folder, with the folder's name."""
    try:
        return str(Path(source.folder).name / Path(path).relative_to(source.folder))
    except ValueError:
        return str(path)


def _compute_case(case: SourceCase, setup: _Setup) -> Tuple[Image, Image, dict]:
    image = read_image(case.image, name=_display(case.image, setup.source))
    check_mr(image)
    if case.label is None:
        raise InputError(f"{_display(case.image, setup.source)}: has no label map")
    label = read_image(case.label, name=_display(case.label, setup.source))
    check_label_map(label)
    _check_grid(label, image)
    present = {int(v) for v in np.unique(label.array)}
    unknown = sorted(present - set(setup.mapping.known))
    if unknown:
        raise InputError(
            f"{label.name}: label values {unknown} are not among the labels of "
            f"{Path(setup.source.folder) / 'dataset.json'} {_listing(setup.mapping.names)}"
        )
    remapped = setup.mapping.remap(label.array)
    rectum, tumor = int(np.count_nonzero(remapped == 1)), int(np.count_nonzero(remapped == 2))
    if rectum == 0:
        raise InputError(
            f"{label.name}: has no rectum voxels (source label value(s) {list(setup.mapping.rectum)}); "
            "every case needs the rectum"
        )
    axis = thick_axis(image)
    warnings = []
    if tumor == 0:
        warnings.append("the tumor label is empty (a tumor-free case)")
    if not axis.is_sagittal:
        warnings.append(
            f"the thickest axis (array axis {axis.array_axis}, {axis.spacing_mm:g} mm, anisotropy "
            f"{axis.anisotropy:.1f}) runs {axis.anatomical}: not a sagittal series with thick left-right slices"
        )
    statistics = {
        "shape": list(image.shape), "spacing_xyz": [round(s, 4) for s in image.spacing],
        "thick_array_axis": axis.array_axis, "thick_axis_runs": axis.anatomical,
        "rectum_voxels": rectum, "tumor_voxels": tumor,
        "voxel_ml": float(np.prod(image.spacing)) / 1000.0, "warnings": warnings,
    }
    return image, image.with_array(remapped, "labels (rectum 1, tumor 2)"), statistics


def _prepare_case(case: SourceCase, setup: _Setup, report: MRPrepareReport) -> str:
    """Prepare one case (or find it cached): "done", "cached" or "failed"."""
    outputs = case_outputs(setup.folder, case.case_id)
    cache_path = LAYOUT.sidecar(setup.folder, case.case_id)
    try:
        inputs = {"image": case.image, **({"label": case.label} if case.label is not None else {})}
        digest = input_hash(inputs, setup.settings)
        if LAYOUT.reuse_cached(report, setup.folder, case.case_id, digest):
            return "cached"
        image, label, statistics = _compute_case(case, setup)
        if cache_path.exists():  # from here until the new sidecar the case does not look cached
            cache_path.unlink()
        write_image(image, outputs["image"])
        write_image(label, outputs["label"])
    except Exception as error:  # noqa: BLE001 - one bad case must not stop a dataset; KeyboardInterrupt still does
        report.failed[case.case_id] = failure_message(error)
        if LAYOUT.remove_case(setup.folder, case.case_id):  # a case that fails now must not stay with old content
            report.removed.append(case.case_id)
        return "failed"
    return LAYOUT.finish_case(report, setup.folder, case.case_id, digest, inputs, statistics)


# --- the dataset --------------------------------------------------------------------------------
def _output_folder(raw: Path, dataset_id: int, name: str) -> Path:
    try:
        folder_name = dataset_folder_name(dataset_id, name)
    except PrepareError as error:
        raise MRPrepareError(str(error)) from error
    return LAYOUT.output_folder(Path(raw), dataset_id, folder_name)


def _case_thick_axis(statistics: dict) -> Optional[ThickAxis]:
    """A case's thick axis from its statistics (also those of sidecars written before it was recorded)."""
    try:
        spacing_zyx = [float(s) for s in reversed(statistics["spacing_xyz"])]
        array_axis = int(statistics["thick_array_axis"])
        runs = str(statistics["thick_axis_runs"])
    except (KeyError, TypeError, ValueError):
        return None
    return ThickAxis(array_axis, spacing_zyx[array_axis], runs, max(spacing_zyx) / min(spacing_zyx))


def dataset_thick_axis(report: MRPrepareReport) -> Optional[TrainingThickAxis]:
    """The thick axis of the cases the dataset holds (prepared now or cached), for ``dataset.json``."""
    cases = [*report.done, *report.cached]
    axes = [_case_thick_axis(report.statistics.get(case, {})) for case in cases]
    return training_thick_axis([axis for axis in axes if axis is not None])


def _dataset_json(name: str, dataset: SourceDataset, mapping: LabelMapping, num_training: int,
                  thick: Optional[TrainingThickAxis] = None) -> dict:
    return {
        "name": name,
        "description": "Rectum and rectal tumor on T2-weighted MRI (RCSegNeXt §3.1) prepared by SlicerCRC",
        "channel_names": dict(CHANNEL_NAMES),
        "channel_descriptions": dict(CHANNEL_DESCRIPTIONS),
        "_comment": "channel_names select nnU-Net's normalisation (zscore -> ZScoreNormalization); "
                    "channel_descriptions are the human names",
        "labels": dict(LABELS),
        "numTraining": num_training,
        "file_ending": FILE_ENDING,
        "crcseg": {
            "modality": "MR",
            "version": __version__,
            "task": "rectum_tumor",
            "source": {
                "folder": str(Path(dataset.folder).resolve()),
                "layout": dataset.layout,
                "labels": mapping.to_dict(),
            },
            **({"thick_axis": thick.to_dict()} if thick is not None else {}),
        },
    }


def _failure_summary(failed: Dict[str, str], most: int = 5) -> str:
    items = list(failed.items())
    text = "; ".join(f"{case}: {message}" for case, message in items[:most])
    return text + (f" (and {len(items) - most} more)" if len(items) > most else "")


def prepare_mr_dataset(
    source: Path,
    dataset_id: int,
    name: str,
    raw: Path,
    rectum_label: LabelChoice = None,
    tumor_label: LabelChoice = None,
) -> MRPrepareReport:
    """Write ``raw/DatasetNNN_<name>`` (T2 MR image + labels rectum 1, tumor 2) from ``source``; resumable.

    ``rectum_label`` / ``tumor_label``: the source's label value or name of the rectum and the
    tumor (default: found by name in the source's dataset.json). Returns the report; raises
    ``MRPrepareError`` when the labels cannot be resolved or every case fails.
    """
    dataset = read_source_dataset(Path(source), require_labels=True)
    mapping = resolve_labels(dataset, rectum_label, tumor_label)
    folder = _output_folder(Path(raw), dataset_id, name)
    settings = {
        "cache_format": CACHE_FORMAT, "version": __version__, "modality": "MR",
        "rectum": list(mapping.rectum), "tumor": list(mapping.tumor), "known": list(mapping.known),
    }
    setup = _Setup(folder, dataset, mapping, settings)
    report = MRPrepareReport(folder)
    LAYOUT.prepare_cases(folder, dataset.cases, lambda case: _prepare_case(case, setup, report), report,
                         _failure_summary)
    description = _dataset_json(name, dataset, mapping, report.num_training, dataset_thick_axis(report))
    write_if_changed(folder / "dataset.json", json.dumps(description, indent=2) + "\n")
    return report
