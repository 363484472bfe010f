"""``crcseg hcf-export``: finished HCF runs (one per fold and stage) -> an ``hcf`` model bundle.

Reads the final files of ``hcf.train`` (weights + the ``hcf`` record: stage, slice preprocessing, fold)
and calls the Lib's ``hcf.bundle.write_hcf_bundle``, which the module, the console and ``crcseg segment`` open.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from CRCSegmentationLib.hcf.preprocessing import SliceDatasetConfig
from CRCTraining.hcf.settings import CLASSIFIER, FINAL_FILES, HCF_RECORD, SANET, STAGES
from OrganGuidanceLib.validation import InputError


@dataclass
class HCFRun:
    """A finished stage's final file: its weights and the record ``HCFTask.record`` wrote."""

    path: Path
    stage: str
    state_dict: Dict[str, torch.Tensor]
    record: Dict[str, object] = field(default_factory=dict)

    @property
    def slice_config(self) -> Dict[str, object]:
        return dict(self.record["slice_config"])  # type: ignore[arg-type]


def read_hcf_run(path: Path, stage: Optional[str] = None) -> HCFRun:
    """A run folder (its final file) or a final ``.pt`` file; ``stage``: the stage it must be."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / FINAL_FILES[s] for s in ([stage] if stage else STAGES) if (path / FINAL_FILES[s]).exists()]
        if not candidates:
            wanted = FINAL_FILES[stage] if stage else " or ".join(FINAL_FILES.values())
            running = (path / "checkpoint_latest.pt").exists()
            unfinished = " (its training has not finished: rerun it)" if running else ""
            raise InputError(f"{path}: holds no {wanted}{unfinished}")
        if len(candidates) > 1:
            raise InputError(f"{path}: holds both stages' final files; name the file")
        path = candidates[0]
    if not path.is_file():
        option = {CLASSIFIER: "--classifier: ", SANET: "--sanet: "}.get(stage, "")
        raise InputError(f"{option}{path}: no such run folder or file")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means "not a finished HCF run"
        raise InputError(f"{path}: not an HCF training file ({type(error).__name__})") from error
    record = data.get(HCF_RECORD) if isinstance(data, dict) else None
    if not isinstance(record, dict) or not isinstance(data.get("state_dict"), dict):
        raise InputError(f"{path}: not a file of `crcseg hcf-train` (no '{HCF_RECORD}' record)")
    if stage is not None and record.get("stage") != stage:
        raise InputError(f"{path}: a {record.get('stage')} run, given as a {stage} run")
    if not data.get("training", {}).get("finished", False):
        raise InputError(f"{path}: not a finished run")
    return HCFRun(path, str(record["stage"]), data["state_dict"], record)


def export_hcf_bundle(classifier_runs: Sequence[Path], sanet_runs: Sequence[Path], output: Path, name: str,
                      description: str = "", version: str = "1", classifier_threshold: float = 0.5,
                      keep_components: int = 1) -> Path:
    """Write an HCF model bundle (the Lib's ``hcf.bundle.write_hcf_bundle``) from finished runs, one per fold.

    Every run must have been trained with the same slice preprocessing (it is the bundle's); a mix is an
    ``InputError`` listing the runs and their settings.
    """
    from CRCSegmentationLib.hcf.bundle import write_hcf_bundle

    if not classifier_runs:
        raise InputError("hcf-export: at least one classifier run is needed (--classifier RUN ...)")
    runs = [read_hcf_run(p, CLASSIFIER) for p in classifier_runs] + [read_hcf_run(p, SANET) for p in sanet_runs]
    configs = {json.dumps(run.slice_config, sort_keys=True) for run in runs}
    if len(configs) > 1:
        listing = "; ".join(f"{run.path}: {run.slice_config}" for run in runs)
        raise InputError(f"hcf-export: the runs were trained with different slice preprocessing ({listing}); a "
                         "bundle has one, so retrain the odd ones out with the same --size and window")
    config = runs[0].slice_config
    slice_config = SliceDatasetConfig((float(config["hu_window"][0]), float(config["hu_window"][1])),
                                      int(config["size"]), float(config["body_threshold_hu"]),
                                      int(config["body_margin_px"]))
    classifiers = [run.state_dict for run in runs if run.stage == CLASSIFIER]
    sanets = [run.state_dict for run in runs if run.stage == SANET]
    if not description:
        description = (f"HCF (slice classifier + SANet), {len(classifiers)} classifier and {len(sanets)} SANet "
                       f"fold(s), slices {slice_config.size} x {slice_config.size}, "
                       f"window {list(slice_config.hu_window)} HU")
    return write_hcf_bundle(Path(output), classifiers, sanets, slice_config, name, description, version,
                            classifier_threshold, keep_components)
