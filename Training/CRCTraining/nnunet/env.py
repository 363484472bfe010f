"""Where nnU-Net v2 keeps its data, and how it finds our trainers.

nnU-Net reads ``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results`` and
``nnUNet_extTrainer`` from the environment each time it needs them, so setting
them here (in this process, inherited by its children and DDP workers) is all
it takes. ``nnUNet_extTrainer`` gets our trainer folder in front of whatever
the user already had, so ``nnUNetv2_train -tr nnUNetTrainerAGCRC`` and
``nnUNetv2_predict`` work from a shell that sourced the same variables.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from OrganGuidanceLib.validation import InputError

TRAINERS_FOLDER = Path(__file__).resolve().parent.parent / "trainers"


@dataclass(frozen=True)
class NNUNetPaths:
    raw: Path
    preprocessed: Path
    results: Path

    @classmethod
    def under(cls, root: Path) -> "NNUNetPaths":
        root = Path(root)
        return cls(root / "nnUNet_raw", root / "nnUNet_preprocessed", root / "nnUNet_results")

    @classmethod
    def from_environment(cls) -> "NNUNetPaths":
        missing = [n for n in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results") if not os.environ.get(n)]
        if missing:
            raise InputError(
                f"nnU-Net folders are not set ({', '.join(missing)}): pass --workdir DIR or export "
                "nnUNet_raw, nnUNet_preprocessed and nnUNet_results"
            )
        return cls(Path(os.environ["nnUNet_raw"]), Path(os.environ["nnUNet_preprocessed"]),
                   Path(os.environ["nnUNet_results"]))

    def export(self) -> None:
        for folder in (self.raw, self.preprocessed, self.results):
            folder.mkdir(parents=True, exist_ok=True)
        os.environ["nnUNet_raw"] = str(self.raw)
        os.environ["nnUNet_preprocessed"] = str(self.preprocessed)
        os.environ["nnUNet_results"] = str(self.results)
        register_trainers()


def register_trainers() -> None:
    """Put our trainer folder on ``nnUNet_extTrainer`` (once, in front of what the user had).

    Only training and nnU-Net's own commands need it: our inference builds the network itself
    (``CRCSegmentationLib.networks.nnunet_architectures``).
    """
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if str(TRAINERS_FOLDER) not in current:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join([str(TRAINERS_FOLDER), *current])
    # 0 breaks nnU-Net's planning (set_num_threads(0)); 1 keeps small machines responsive.
    os.environ.setdefault("nnUNet_n_proc_DA", str(max(1, min(8, (os.cpu_count() or 2) - 1))))


def configure(workdir: Optional[Path]) -> NNUNetPaths:
    """Folders under ``workdir`` if given, else nnU-Net's environment variables; exported for nnU-Net."""
    paths = NNUNetPaths.under(workdir) if workdir is not None else NNUNetPaths.from_environment()
    paths.export()
    return paths


def dataset_name(dataset_id: int) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(int(dataset_id))
    except RuntimeError as error:  # nnU-Net's "Could not find a dataset with the ID ..."
        raise InputError(
            f"dataset id {dataset_id}: no such nnU-Net dataset in nnUNet_raw, nnUNet_preprocessed or nnUNet_results "
            f"({os.environ.get('nnUNet_raw', 'unset')}, ...); run `crcseg prepare` and `crcseg plan` first, "
            "or check --workdir"
        ) from error
