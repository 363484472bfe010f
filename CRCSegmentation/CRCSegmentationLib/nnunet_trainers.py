"""How nnU-Net finds our trainer classes at inference, without importing ``CRCTraining``.

nnU-Net rebuilds a model's network through its trainer class, named in the model
folder (``<trainer>__<plans>__<configuration>``) and in every checkpoint. Classes
outside nnU-Net's package are found through ``nnUNet_extTrainer`` (folders separated
by ``os.pathsep``). Our trainers live in ``CRCTraining/nnunet_trainers``; the
dependency rule forbids importing ``CRCTraining`` from here, so the folder is
located with ``importlib.util.find_spec`` (which does not import the package).
``CRCTraining.nnunet_env.register_trainers`` calls ``register_trainer_folder`` too:
one implementation of the environment change.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional

TRAINING_PACKAGE = "CRCTraining"
TRAINERS_SUBFOLDER = "nnunet_trainers"


def register_trainer_folder(folder: Path) -> None:
    """Put ``folder`` on ``nnUNet_extTrainer`` (once, in front of what the user had)."""
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if str(folder) not in current:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join([str(folder), *current])
    # 0 breaks nnU-Net's planning (set_num_threads(0)); 1 keeps small machines responsive.
    os.environ.setdefault("nnUNet_n_proc_DA", str(max(1, min(8, (os.cpu_count() or 2) - 1))))


def training_trainers_folder() -> Optional[Path]:
    """``CRCTraining/nnunet_trainers`` when the training package is installed, else None."""
    try:
        spec = importlib.util.find_spec(TRAINING_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / TRAINERS_SUBFOLDER
    return folder if folder.is_dir() else None


def register_our_trainers() -> bool:
    """Register our trainer folder if the training package is installed; True if it was found."""
    folder = training_trainers_folder()
    if folder is None:
        return False
    register_trainer_folder(folder)
    return True


def is_nnunet_trainer(name: str) -> bool:
    """True for nnU-Net's own trainers (``nnunetv2.training.nnUNetTrainer``), found without our folder."""
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    root = Path(nnunetv2.__path__[0])
    found = recursive_find_python_class(
        str(root / "training" / "nnUNetTrainer"), name, "nnunetv2.training.nnUNetTrainer", str(root)
    )
    return found is not None


def ensure_trainer_available(name: str) -> None:
    """Make the trainer ``name`` findable by nnU-Net, or raise a ``RuntimeError`` that says what to install."""
    if register_our_trainers() or is_nnunet_trainer(name):
        return
    raise RuntimeError(
        f"the model was trained with the trainer '{name}', which nnU-Net does not ship: install SlicerCRC's "
        f"training package ({TRAINING_PACKAGE}, `pip install slicercrc[segmentation]`) or add the folder that "
        "defines it to the nnUNet_extTrainer environment variable"
    )
