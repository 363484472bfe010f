"""Dataset preparation: a source dataset -> an nnU-Net v2 raw dataset with AG-CRC's input channels.

For every case (AG-CRC §III-B, Algorithm 1; §III-D):

    imagesTr/<case>_0000.nii.gz   CT, the source image's voxels and geometry (no reorientation)
    imagesTr/<case>_0001.nii.gz   MOS, remapped to the compact organ code ``MOS_CODES``
    imagesTr/<case>_0002.nii.gz   OOI, dilated organs-of-interest mask 0/1
    labelsTr/<case>.nii.gz        tumor 0/1, or with ``ssl=True`` the bowel wall 0/1 (AG-SSL, Eq. 7), or
                                  with ``labels="organ-interference"`` FLARE24's organs 1..K + tumor K+1 (§2.2)
    ooi0Tr/<case>.nii.gz          undilated OOI (the AG-SSL bowel wall's source, §III-D footnote 2)
    bowelwallTr/<case>.nii.gz     bowel wall: dilate(OOI0) XOR erode(OOI0)

AG-CRC Table V: the CT + MOS + OOI input is the best of the three input sets. nnU-Net reads
only ``imagesTr``, ``labelsTr`` and ``dataset.json``; the extra folders, ``.agcrc_cache`` and
``prepare_report.json`` sit beside them untouched by its planning and preprocessing.

Cases are cached: ``.agcrc_cache/<case>.json`` holds a SHA-256 over the input files' bytes,
the parameters and our version; a re-run skips a case whose hash matches and whose outputs
exist. A case that fails is reported and skipped; only a dataset where every case fails stops.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

import OrganGuidanceLib
from CRCTraining import __version__
from CRCTraining.data.raw_dataset import (
    FILE_ENDING,
    TEMPORARY_PREFIX,
    CaseReport,
    PrepareError,
    RawDatasetLayout,
    read_json,
    write_if_changed,
)
from CRCTraining.data.sources import SourceCase, SourceDataset, find_case_map, read_source_dataset
from CRCTraining.flare24.labels import (
    FLARE22_ORGANS,
    InterferenceLabels,
    inference_mos_values,
    interference_labels,
    match_organs,
    merge_labels,
    organ_voxel_counts,
)
from OrganGuidanceLib.checksum import input_digest
from OrganGuidanceLib.guidance import GuidanceParameters, MOSSource, run_guidance
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.image_files import printable
from OrganGuidanceLib.io import read_image, write_image
from OrganGuidanceLib.labels import ORGAN_SETS, LabelConvention, load_convention
from OrganGuidanceLib.mos_codes import MOS_CODES, compact_mos
from OrganGuidanceLib.validation import InputError, check_label_map, failure_message

if TYPE_CHECKING:
    from OrganGuidanceLib.providers import TotalSegmentatorProvider
    from OrganGuidanceLib.shards import Shard

CACHE_FORMAT = 1  # bump when the outputs of the same inputs change
CACHE_FOLDER = ".agcrc_cache"
EXTRA_FOLDERS = {"ooi0Tr": "undilated OOI (OOI0), 0/1", "bowelwallTr": "bowel wall, dilate(OOI0) XOR erode(OOI0), 0/1"}

# nnU-Net picks each channel's normalisation from its name (nnunetv2.preprocessing.normalization.
# map_channel_name_to_normalization): "CT" -> CTNormalization (clip to the foreground's 0.5..99.5
# percentiles, z-score with its mean/std), "noNorm" -> none, so the MOS codes and OOI 0/1 reach the
# network unchanged. The human names travel in "channel_descriptions", which nnU-Net ignores.
CHANNEL_NAMES = {"0": "CT", "1": "noNorm", "2": "noNorm"}
CHANNEL_DESCRIPTIONS = {"0": "CT", "1": "MOS", "2": "OOI"}  # AG-CRC Table V: CT + MOS + OOI

# Compact, convention-independent MOS code: a model trained on TotalSegmentator maps can read a
# WORD-style map (or the next TotalSegmentator release) without depending on their label ids.
# Conventions without a rectum class (TotalSegmentator v2: rectum inside "colon") give 4, never 5.
Organs = Union[str, Path]  # "totalsegmentator" or a folder of label maps named <case>.nii.gz


# --- report -----------------------------------------------------------------------------------
@dataclass
class PrepareReport(CaseReport):
    dataset_folder: Path
    done: List[str] = field(default_factory=list)  # computed in this run
    cached: List[str] = field(default_factory=list)  # skipped: hash matched, outputs present
    failed: Dict[str, str] = field(default_factory=dict)  # case id -> error message
    # failed in this run, but complete outputs of an earlier run are kept (a rerun must not shrink a dataset)
    kept: Dict[str, str] = field(default_factory=dict)  # case id -> this run's error message
    removed: List[str] = field(default_factory=list)  # stale cases deleted from the dataset
    warnings: Dict[str, List[str]] = field(default_factory=dict)  # case id -> things to check
    statistics: Dict[str, dict] = field(default_factory=dict)  # case id -> voxel counts, tumor coverage

    @property
    def num_training(self) -> int:
        """The cases the dataset holds: the kept ones too."""
        return len(self.done) + len(self.cached) + len(self.kept)

    def summary(self) -> str:
        counts = f"{len(self.done)} prepared, {len(self.cached)} cached, {len(self.failed)} failed"
        if self.kept:
            counts += f", {len(self.kept)} failed but kept from an earlier run"
        text = f"{self.dataset_folder.name}: {counts}"
        text += "".join(f"\n  {case}: {message}" for case, message in self.failed.items())
        return text + "".join(f"\n  {case}: {message} (the earlier run's outputs are kept; fix the input and rerun, "
                              "or remove the case)" for case, message in self.kept.items())


# --- paths and hashing ------------------------------------------------------------------------
def dataset_folder_name(dataset_id: int, dataset_name: str) -> str:
    if not 1 <= int(dataset_id) <= 999:
        raise PrepareError(f"dataset id {dataset_id}: nnU-Net needs 1..999")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", dataset_name or ""):
        raise PrepareError(f"dataset name {dataset_name!r}: use letters, digits, '_' and '-' only")
    return f"Dataset{int(dataset_id):03d}_{dataset_name}"


def case_outputs(folder: Path, case_id: str) -> Dict[str, Path]:
    return {
        "ct": folder / "imagesTr" / f"{case_id}_0000{FILE_ENDING}",
        "mos": folder / "imagesTr" / f"{case_id}_0001{FILE_ENDING}",
        "ooi": folder / "imagesTr" / f"{case_id}_0002{FILE_ENDING}",
        "label": folder / "labelsTr" / f"{case_id}{FILE_ENDING}",
        "ooi0": folder / "ooi0Tr" / f"{case_id}{FILE_ENDING}",
        "bowel_wall": folder / "bowelwallTr" / f"{case_id}{FILE_ENDING}",
    }


def _is_agcrc_dataset(description: dict) -> bool:
    """A dataset.json that prepare_dataset wrote (it carries the "agcrc" block)."""
    return "agcrc" in description


LAYOUT = RawDatasetLayout(CACHE_FOLDER, case_outputs, "prepare_dataset", _is_agcrc_dataset, PrepareError,
                          CACHE_FORMAT, extra_folders=tuple(EXTRA_FOLDERS))


def input_hash(inputs: Dict[str, Path], settings: dict) -> str:
    """SHA-256 over the input files' bytes (in role order) and the settings that shape the outputs."""
    digest = hashlib.sha256()
    for role in sorted(inputs):
        digest.update(f"\0{role}\0".encode())
        digest.update(input_digest(Path(inputs[role])).encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


# --- one case ---------------------------------------------------------------------------------
def _label_on_grid(label: Image, ct: Image, case_id: str) -> np.ndarray:
    """The label's voxels on the CT grid; header noise is tolerated, another grid is a mismatch."""
    check_label_map(label)
    voxel = np.asarray(ct.spacing)
    if (
        label.shape == ct.shape
        and np.allclose(label.spacing, ct.spacing, rtol=1e-4)
        and np.all(np.abs(np.subtract(label.origin, ct.origin)) <= 0.1 * voxel)
        and np.allclose(label.direction, ct.direction, atol=1e-4)
    ):
        return label.array
    raise InputError(
        f"{case_id}: the tumor label's grid ({label.shape} voxels, spacing {label.spacing}, origin "
        f"{tuple(round(o, 2) for o in label.origin)}) is not the image's ({ct.shape}, {ct.spacing}, "
        f"{tuple(round(o, 2) for o in ct.origin)}); geometry mismatch"
    )


@dataclass
class _Setup:
    """What every case shares: how organ maps are obtained, the parameters, the output folder."""

    folder: Path
    parameters: GuidanceParameters
    convention: LabelConvention
    second_convention: Optional[LabelConvention]
    second_organs: Optional[Path]
    provider: Optional["TotalSegmentatorProvider"]  # None: organ maps come from a folder
    ssl: bool
    tumor_labels: Optional[Tuple[int, ...]]
    settings: dict  # hashed with every case
    # FLARE24 §2.2 organ interference: organ pseudo-labels from the MOS + tumor; None: AG-CRC's tumor 0/1
    interference: Optional[InterferenceLabels] = None
    # MOS values kept in the MOS channel (None: all); see flare24.labels.inference_mos_values
    mos_channel_values: Optional[Tuple[int, ...]] = None


def _case_inputs(case: SourceCase, setup: _Setup) -> Dict[str, Path]:
    """The files a case's outputs depend on, by role (the tumor label only outside AG-SSL)."""
    inputs: Dict[str, Path] = {"image": case.image}
    if not setup.ssl:
        if case.label is None:
            raise InputError(f"{case.case_id}: has no tumor label")
        inputs["label"] = case.label
    if setup.provider is None:
        if case.organs is None:
            raise InputError(f"{case.case_id}: no organ map named {case.case_id}.nii.gz in the organ folder")
        inputs["organs"] = case.organs
    if setup.second_organs is not None:
        second = find_case_map(setup.second_organs, case.case_id)
        if second is None:
            raise InputError(
                f"{case.case_id}: no second organ map named {case.case_id}.nii.gz in {setup.second_organs}"
            )
        inputs["second_organs"] = second
    return inputs


def _compute_case(case: SourceCase, inputs: Dict[str, Path], setup: _Setup) -> Tuple[Dict[str, Image], dict]:
    """Guidance for one case (AG-CRC Algorithm 1, §III-D) and the images to write, with statistics."""
    ct = read_image(inputs["image"], name=f"{case.case_id} image")
    if setup.provider is not None:  # AG-CRC §III-B: TotalSegmentator as the MOS model
        sources = [setup.provider.segment(ct)]
    else:
        sources = [MOSSource(read_image(inputs["organs"], name=f"{case.case_id} organ map"), setup.convention)]
    if setup.second_convention is not None:  # Algorithm 1 line 14: a second MOS model, OR-merged into the OOI
        second = read_image(inputs["second_organs"], name=f"{case.case_id} second organ map")
        sources.append(MOSSource(second, setup.second_convention))
    result = run_guidance(ct, sources, setup.parameters)

    ooi = result.ooi.array.astype(bool)
    statistics = {"ooi_voxels": int(ooi.sum()), "bowel_wall_voxels": int(result.bowel_wall.array.sum())}
    warnings = list(result.warnings)
    if not result.bowel_wall.array.any():
        message = "the bowel wall is empty (the organs of interest cover the whole image or nothing)"
        if setup.ssl:  # nothing to reconstruct, and nnU-Net's fingerprint needs some foreground
            raise InputError(f"{case.case_id}: {message}")
        warnings.append(message)
    if setup.ssl:
        label = result.bowel_wall.array.astype(np.uint8)  # AG-SSL Eq. 7: B travels with X through augmentation
    else:
        values = _label_on_grid(read_image(inputs["label"], name=f"{case.case_id} label"), ct, case.case_id)
        tumor = values > 0 if setup.tumor_labels is None else np.isin(values, setup.tumor_labels)
        label = tumor.astype(np.uint8)
        if setup.interference is not None:  # FLARE24 Fig. 2: the first source's MOS on the CT grid + tumor
            label = merge_labels(result.mos.array, tumor, setup.interference)
            statistics["label_voxels"] = organ_voxel_counts(label, setup.interference)
        covered = int(np.count_nonzero(tumor & ooi))
        statistics.update(tumor_voxels=int(tumor.sum()), tumor_in_ooi=covered / max(1, int(tumor.sum())))
        if covered < tumor.sum():  # AF-loss (Eq. 8) would ignore these voxels
            warnings.append(
                f"{int(tumor.sum()) - covered} of {int(tumor.sum())} tumor voxels lie outside the OOI; "
                "the AF-loss ignores them (a larger OOI dilation covers them)"
            )
        if not tumor.any():
            warnings.append("the tumor label is empty")
    mos_map = result.mos
    if setup.mos_channel_values is not None:  # organs segmented only for the labels stay out of the MOS channel
        kept = np.isin(mos_map.array, setup.mos_channel_values)
        mos_map = mos_map.with_array(np.where(kept, mos_map.array, 0).astype(mos_map.array.dtype), "MOS")
    mos = compact_mos(mos_map, sources[0].convention)
    statistics["mos_codes"] = [int(v) for v in np.unique(mos.array)]
    images = {
        "ct": ct,
        "mos": mos,
        "ooi": ct.with_array(ooi.astype(np.uint8), "OOI"),
        "label": ct.with_array(label, "label"),
        "ooi0": ct.with_array(result.ooi0.array.astype(np.uint8), "OOI0"),
        "bowel_wall": ct.with_array(result.bowel_wall.array.astype(np.uint8), "bowel wall"),
    }
    statistics["warnings"] = warnings
    return images, statistics


def _replace_case_outputs(folder: Path, case_id: str, images: Dict[str, Image], outputs: Dict[str, Path],
                          cache_path: Path) -> None:
    """Write every output of a case to a staging folder, then move them into place together.

    The earlier sidecar goes first: from then until the new sidecar is written the case does not
    look cached, so a run killed between the renames recomputes it next time.
    """
    staging = Path(tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}{case_id}-", dir=folder))
    try:
        staged = {key: write_image(images[key], staging / path.relative_to(folder)) for key, path in outputs.items()}
        if cache_path.exists():
            cache_path.unlink()
        for key, path in outputs.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged[key], path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _prepare_case(case: SourceCase, setup: _Setup, report: PrepareReport) -> str:
    """Prepare one case (or find it cached); returns "done", "cached" or "failed"."""
    cache_path = LAYOUT.sidecar(setup.folder, case.case_id)
    outputs = case_outputs(setup.folder, case.case_id)
    try:
        inputs = _case_inputs(case, setup)
        digest = input_hash(inputs, setup.settings)
        if LAYOUT.reuse_cached(report, setup.folder, case.case_id, digest):
            return "cached"
        start = time.perf_counter()
        images, statistics = _compute_case(case, inputs, setup)
        _replace_case_outputs(setup.folder, case.case_id, images, outputs, cache_path)
        statistics["seconds"] = round(time.perf_counter() - start, 2)
    except Exception as error:  # noqa: BLE001 - one bad case must not stop a dataset; KeyboardInterrupt still does
        message = failure_message(error)
        message = message[len(case.case_id) + 2:] if message.startswith(f"{case.case_id}: ") else message
        if cache_path.exists() and all(p.exists() for p in outputs.values()):
            report.kept[case.case_id] = message  # a temporary failure (e.g. out of memory) must not lose them
            report.statistics[case.case_id] = read_json(cache_path).get("statistics", {})
            return "kept"
        report.failed[case.case_id] = message
        if LAYOUT.remove_case(setup.folder, case.case_id):  # partial outputs of an interrupted earlier run
            report.removed.append(case.case_id)
        return "failed"
    return LAYOUT.finish_case(report, setup.folder, case.case_id, digest, inputs, statistics)


# --- the dataset ------------------------------------------------------------------------------
def _organ_setup(
    organs: Organs, convention: str, parameters: GuidanceParameters, device: str, fast: bool,
    interference_organs: Optional[Sequence[str]] = None,
) -> Tuple[Optional["TotalSegmentatorProvider"], LabelConvention, dict, Optional[Path]]:
    """(TotalSegmentator provider or None, convention, hashed settings, organ folder or None)."""
    if isinstance(organs, str) and organs.strip().lower() in ("totalsegmentator", "total", "ts"):
        from importlib.metadata import version

        from OrganGuidanceLib.providers import TotalSegmentatorProvider

        provider = TotalSegmentatorProvider(organ_set=parameters.organ_set, fast=fast, device=device)
        if interference_organs is not None:  # FLARE24 §2.2: TotalSegmentator also segments the organs to label
            matched = match_organs(provider.convention, interference_organs)
            names = [provider.convention.labels[v] for values in matched.source_values.values() for v in values]
            provider.extra_organs = tuple(dict.fromkeys([*provider.extra_organs, *names]))
        settings = {"organs": "totalsegmentator", "fast": fast, "roi_subset": provider.roi_subset,
                    "totalsegmentator": version("TotalSegmentator")}
        return provider, provider.convention, settings, None
    folder = Path(organs)
    if not folder.is_dir():
        raise PrepareError(f"--organs: {printable(str(organs))} is neither 'totalsegmentator' nor an existing folder")
    return None, load_convention(convention), {"organs": "label maps"}, folder


def _convention_settings(spec: str) -> dict:
    path = Path(spec)
    return {"spec": spec, "file": path.read_text()} if path.is_file() else {"spec": spec.strip().lower()}


def _dataset_json(name: str, source: SourceDataset, setup: _Setup, organ_settings: dict, num_training: int) -> dict:
    description = _plain_dataset_json(name, source, setup, organ_settings, num_training)
    if setup.interference is not None:  # FLARE24 §2.2; `crcseg export` reads the block for organ_labels
        description["description"] += "; labels: FLARE24 organ interference (organ pseudo-labels + tumor)"
        description["labels"] = setup.interference.dataset_labels()
        description["agcrc"]["task"] = "organ_interference"
        description["agcrc"]["organ_interference"] = setup.interference.metadata()
    return description


def _plain_dataset_json(name: str, source: SourceDataset, setup: _Setup, organ_settings: dict,
                        num_training: int) -> dict:
    organ_set = setup.parameters.organ_set
    return {
        "name": name,
        "description": "AG-CRC input channels CT + MOS + OOI (Table V) prepared by SlicerCRC",
        "channel_names": dict(CHANNEL_NAMES),
        "channel_descriptions": dict(CHANNEL_DESCRIPTIONS),
        "_comment": "channel_names select nnU-Net's normalisation (CT -> CTNormalization, noNorm -> none); "
                    "channel_descriptions are the human names",
        "labels": {"background": 0, "bowel_wall": 1} if setup.ssl else {"background": 0, "tumor": 1},
        "numTraining": num_training,
        "file_ending": FILE_ENDING,
        "agcrc": {
            "version": __version__,
            "engine_version": OrganGuidanceLib.__version__,
            "task": "ssl_bowel_wall" if setup.ssl else "tumor",
            "mos_codes": {str(k): v for k, v in MOS_CODES.items()},
            "mos_source": {**organ_settings, "convention": setup.convention.name},
            "second_mos_source": None if setup.second_convention is None else {
                "folder": str(setup.second_organs), "convention": setup.second_convention.name,
            },
            "organ_set": organ_set,
            "organs_of_interest": list(ORGAN_SETS[organ_set]),
            "ooi": {"dilation_mm": setup.parameters.dilation_mm, "wall_width_mm": setup.parameters.wall_width_mm},
            "extra_folders": dict(EXTRA_FOLDERS),
            "source": {"folder": str(Path(source.folder).resolve()), "layout": source.layout},
        },
    }


def _failure_summary(failed: Dict[str, str], most: int = 5) -> str:
    """Cases grouped by identical message (e.g. missing TotalSegmentator weights fail them all alike)."""
    groups: Dict[str, List[str]] = {}
    for case, message in failed.items():
        groups.setdefault(message, []).append(case)
    parts = []
    for message, cases in list(groups.items())[:most]:
        names = ", ".join(cases[:most]) + (f" and {len(cases) - most} more" if len(cases) > most else "")
        parts.append(f"{names}: {message}")
    more = f" (and {len(groups) - most} other reasons)" if len(groups) > most else ""
    return "; ".join(parts) + more


def prepare_dataset(
    source: Path,
    dataset_id: int,
    dataset_name: str,
    nnunet_raw: Path,
    organs: Organs = "totalsegmentator",
    convention: str = "totalsegmentator",
    second_organs: Optional[Path] = None,
    second_convention: str = "word",
    parameters: Optional[GuidanceParameters] = None,
    device: str = "auto",
    fast: bool = True,
    ssl: bool = False,
    tumor_labels: Optional[Sequence[int]] = None,
    labels: str = "tumor",
    interference_organs: Sequence[str] = FLARE22_ORGANS,
    shard: Optional["Shard"] = None,
) -> PrepareReport:
    """Write ``nnunet_raw/DatasetNNN_Name`` with CT + MOS + OOI channels (AG-CRC Table V); resumable.

    ``organs``: "totalsegmentator" (run it per case) or a folder of label maps ``<case>.nii.gz`` in
    ``convention`` ("totalsegmentator", "word" or a JSON mapping file). ``second_organs``: a folder
    of a second MOS source, OR-merged into the OOI (Algorithm 1, line 15). ``ssl``: labels are the
    bowel wall (AG-SSL pretraining, Eq. 7) and unlabeled images are accepted. ``tumor_labels``:
    source label values that are tumor (default: every non-zero value). ``labels``: "tumor" (0/1) or
    "organ-interference" (FLARE24 §2.2): ``interference_organs`` (default FLARE22's 13) found by name
    in the first MOS source's convention as labels 1..K, the tumor K + 1 painted over them; an organ
    the convention lacks is absent from every case (``organ_interference.py``). Channels stay CT + MOS + OOI.
    ``shard``: prepare only this shard's share of the cases, beside the other shards (``raw_dataset.py``).
    """
    parameters = parameters or GuidanceParameters()
    valid, reason = parameters.is_valid()
    if not valid:
        raise PrepareError(f"guidance parameters: {reason}")
    wants_organs = interference_organs if labels == "organ-interference" else None
    provider, organ_convention, organ_settings, organ_folder = _organ_setup(
        organs, convention, parameters, device, fast, wants_organs)
    organ_convention.ooi_label_values(parameters.organ_set)  # a convention without OOI organs stops here
    interference = interference_labels(labels, interference_organs, organ_convention, ssl)
    second_folder = Path(second_organs) if second_organs is not None else None
    if second_folder is not None and not second_folder.is_dir():
        raise PrepareError(f"second organ maps: no such folder: {second_folder}")
    second = load_convention(second_convention) if second_folder is not None else None
    if second is not None:
        second.ooi_label_values(parameters.organ_set)
    dataset = read_source_dataset(Path(source), organ_folder, require_labels=not ssl)

    settings = {
        "cache_format": CACHE_FORMAT, "version": __version__, "engine": OrganGuidanceLib.__version__,
        "organ_set": parameters.organ_set, "dilation_mm": parameters.dilation_mm,
        "wall_width_mm": parameters.wall_width_mm,  # the body crop is not used here: it is not hashed
        "ssl": ssl, "tumor_labels": sorted(tumor_labels) if tumor_labels else None, "mos_codes": MOS_CODES,
        "organ_source": organ_settings, "convention": _convention_settings(convention) if provider is None else None,
        "second_convention": _convention_settings(second_convention) if second else None,
    }
    if interference is not None:  # only then: a tumor dataset keeps the hashes of earlier runs
        settings["labels"] = {"mode": labels, "organs": list(interference.organs),
                              "mos_values": interference.metadata()["mos_values"]}
    folder = LAYOUT.output_folder(Path(nnunet_raw), dataset_id, dataset_folder_name(dataset_id, dataset_name), shard)
    run_parameters = GuidanceParameters(**{**asdict(parameters), "body_crop": False})
    setup = _Setup(folder, run_parameters, organ_convention, second, second_folder, provider, ssl,
                   tuple(int(v) for v in tumor_labels) if tumor_labels else None, settings, interference,
                   inference_mos_values(provider, parameters.organ_set) if provider and interference else None)
    report = PrepareReport(folder)
    LAYOUT.prepare_cases(folder, dataset.cases, lambda case: _prepare_case(case, setup, report), report,
                         _failure_summary, shard)
    cases = report.num_training if shard is None else LAYOUT.complete_cases(folder)  # every shard's
    description = _dataset_json(dataset_name, dataset, setup, organ_settings, cases)
    write_if_changed(folder / "dataset.json", json.dumps(description, indent=2) + "\n")
    return report
