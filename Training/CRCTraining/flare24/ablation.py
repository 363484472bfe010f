"""``crcseg flare24-ablation``: FLARE24 Table 4's comparison, base (tumor-only labels) vs organ interference.

Both arms get the same training cases, organ maps, plans, trainer schedule and test cases:

- base: ``prepare`` with tumor labels, ``nnUNetTrainerBaseline`` (nnU-Net's default);
- organ interference: ``prepare --labels organ-interference``, ``nnUNetTrainerOrganInterference``
  (class-first sampling 5:1 and the class-weighted Dice + CE, FLARE24 §2.2 Eq. 1-3, as the public code trains
  it: Dice + CE weights 1 and 1 under nnU-Net's SGD, the weighted CE averaged per sample, and a warm-up that
  mixes the uniform- and class-weighted losses over ``--warmup-epochs`` (default the public code's 50)).

Each arm is exported as a bundle and run by ``crcseg segment`` on the test cases with their organ
maps and references. Reported: Dice and NSD@4 mm on the cases with a tumor, and the paper's
motivation, the false-positive tumor volume (ml) on the tumor-free cases (empty reference).
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from OrganGuidanceLib.atomic import write_text_atomic

ARMS = {"base": ("tumor", "nnUNetTrainerBaseline"),
        "organ_interference": ("organ-interference", "nnUNetTrainerOrganInterference")}


@dataclass
class ArmResult:
    arm: str
    trainer: str
    bundle: str
    loss: str = ""  # the training loss, as the trainer builds it
    dice: List[float] = field(default_factory=list)  # per tumor case
    nsd: List[float] = field(default_factory=list)
    false_positive_ml: List[float] = field(default_factory=list)  # per tumor-free case

    def row(self) -> Dict[str, object]:
        mean = lambda values: round(float(np.mean(values)), 4) if values else ""
        return {"arm": self.arm, "trainer": self.trainer, "tumor_cases": len(self.dice), "dice": mean(self.dice),
                "nsd": mean(self.nsd), "tumor_free_cases": len(self.false_positive_ml),
                "false_positive_ml": mean(self.false_positive_ml)}


def run_ablation(train_source: Path, test_source: Path, output: Path, dataset_id: int, organs: Path,
                 test_organs: Path, convention: str = "totalsegmentator", epochs: int = 100,
                 iterations: Optional[int] = None, val_iterations: Optional[int] = None, device: str = "auto",
                 gpu_memory_gb: Optional[float] = None, processes: int = 2, preset: str = "default",
                 warmup_epochs: Optional[int] = None) -> List[ArmResult]:
    """Prepare, plan, train, export and test both arms (dataset ids ``dataset_id`` and ``dataset_id + 1``).

    ``warmup_epochs``: the organ-interference loss's warm-up (None: the trainer's, the public code's 50)."""
    from CRCSegmentationLib.batch import segment_files
    from CRCSegmentationLib.core.segmentation import SegmentationParameters
    from CRCTraining.data.prepare_ct import prepare_dataset
    from CRCTraining.flare24.losses import ENV_WARMUP_EPOCHS
    from CRCTraining.nnunet.env import configure, dataset_name
    from CRCTraining.nnunet.export import export_bundle, trained_model_folder
    from CRCTraining.nnunet.mixins import ENV_FINAL_VALIDATION
    from CRCTraining.nnunet.planning import plan_and_preprocess
    from CRCTraining.nnunet.train import train
    from OrganGuidanceLib.guidance import GuidanceParameters
    from OrganGuidanceLib.validation import InputError

    if warmup_epochs is not None and warmup_epochs < 0:
        raise InputError(f"--warmup-epochs {warmup_epochs}: must be a whole number of epochs >= 0")
    check_inputs(Path(train_source), Path(test_source), Path(organs), Path(test_organs))  # before hours of training
    output = Path(output)
    paths = configure(output / "work")
    os.environ[ENV_FINAL_VALIDATION] = "0"  # the test cases below are the evaluation
    if warmup_epochs is not None:
        os.environ[ENV_WARMUP_EPOCHS] = str(int(warmup_epochs))
    results = []
    for offset, (arm, (labels, trainer)) in enumerate(ARMS.items()):
        identifier = int(dataset_id) + offset
        prepare_dataset(Path(train_source), identifier, f"FLARE24{arm.title().replace('_', '')}", paths.raw,
                        organs=Path(organs), convention=convention, labels=labels,
                        parameters=GuidanceParameters(body_crop=False), device=device)
        plan_and_preprocess(identifier, gpu_memory_gb=gpu_memory_gb, num_processes=processes)
        train(identifier, trainer, fold="all", device=device, epochs=epochs, iterations=iterations,
              val_iterations=val_iterations)
        bundle = output / "bundles" / arm
        if not bundle.exists():
            export_bundle(trained_model_folder(paths.results, dataset_name(identifier), trainer), bundle,
                          folds=("all",), name=f"FLARE24 ablation: {arm}")
        report = segment_files(Path(test_source) / "imagesTr", bundle, output / "predictions" / arm,
                               organs=Path(test_organs), references=Path(test_source) / "labelsTr",
                               parameters=SegmentationParameters.for_preset(preset, device=device), convention=convention,
                               overwrite=True)
        result = ArmResult(arm, trainer, str(bundle), _loss_description(trainer))
        for case in report.cases:
            if case.status != "ok":
                raise RuntimeError(f"{arm}: test case {case.case} failed: {case.error}")
            if _reference_is_empty(test_source, case.case):
                result.false_positive_ml.append(float(case.statistics["volume_ml"]))
            else:
                result.dice.append(float(case.metrics["dice"]))
                result.nsd.append(float(case.metrics["nsd"]))
        results.append(result)
    _write(output, results)
    return results


def _loss_description(trainer: str) -> str:
    """The loss ``trainer`` trains with: nnU-Net's Dice + CE, or the FLARE24 loss with its weights and warm-up."""
    from CRCTraining.flare24.losses import ClassWeightedLossTrainerMixin, warmup_epochs_from_environment
    from CRCTraining.nnunet.train import trainer_class

    cls = trainer_class(trainer)
    if not issubclass(cls, ClassWeightedLossTrainerMixin):
        return "nnU-Net Dice + CE (weights 1 and 1)"
    return (f"FLARE24 class-weighted Dice + CE (weights {cls.loss_alpha_dice:g} and {cls.loss_alpha_ce:g}; tumor "
            f"{cls.loss_tumor_weight:g}, others {cls.loss_other_weight:g}; per-sample CE; warm-up "
            f"{warmup_epochs_from_environment(cls.loss_warmup_epochs)} epochs mixing uniform and weighted losses)")


def check_inputs(train_source: Path, test_source: Path, organs: Path, test_organs: Path) -> None:
    """Every case of both sources paired (``prepare``'s rules: hidden files ignored, unpaired files refused with
    their names) and with its organ map; a test case without a reference would otherwise fail after training."""
    from CRCTraining.data.sources import read_source_dataset
    from OrganGuidanceLib.case_folders import files_by_case, name_list, pair_images_and_labels
    from OrganGuidanceLib.validation import InputError

    training = read_source_dataset(train_source, organs)
    without = [case.case_id for case in training.cases if case.organs is None]
    if without:
        raise InputError(f"--organs {organs}: no organ map for training case(s) {name_list(without)}")
    pairs = pair_images_and_labels(test_source / "imagesTr", test_source / "labelsTr", "test_source imagesTr",
                                   "test_source labelsTr")
    test_maps = files_by_case(test_organs, "--test-organs")
    without = [pair.case for pair in pairs if pair.case not in test_maps]
    if without:
        raise InputError(f"--test-organs {test_organs}: no organ map for test case(s) {name_list(without)}")


def _reference_is_empty(test_source: Path, case: str) -> bool:
    from OrganGuidanceLib.cases import find_case_file
    from OrganGuidanceLib.io import read_image

    path = find_case_file(Path(test_source) / "labelsTr", case)
    return path is not None and not read_image(path).array.any()


def _write(output: Path, results: List[ArmResult]) -> None:
    rows = [r.row() for r in results]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(output / "ablation.csv", buffer.getvalue())
    write_text_atomic(output / "ablation.json", json.dumps([asdict(r) for r in results], indent=2) + "\n")


def format_table(results: List[ArmResult]) -> str:
    lines = [f"{'arm':20s} {'Dice':>7s} {'NSD':>7s} {'FP ml (tumor-free)':>19s}"]
    for result in results:
        row = result.row()
        lines.append(f"{result.arm:20s} {row['dice']!s:>7s} {row['nsd']!s:>7s} {row['false_positive_ml']!s:>19s}")
    return "\n".join(lines)
