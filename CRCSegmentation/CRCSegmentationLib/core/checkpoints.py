"""Weights-only loading of checkpoints: a tampered pickle cannot run code.

Checkpoints are opened with ``torch.load(weights_only=True)``. nnU-Net 2.8.1 checkpoints hold tensors, dicts,
lists, strings and numbers, plus numpy float32 scalars in their training log (``logging``, ``_best_ema``),
which ``weights_only`` refuses by default ("Unsupported global: numpy._core.multiarray.scalar", then
"numpy.dtypes.Float32DType"). Exactly those are allow-listed (``checkpoint_safe_globals``): rebuilding a numpy
scalar from its bytes runs no code. torch is imported when a file is loaded, not with this module.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from CRCSegmentationLib.core.errors import ModelError

# Keys nnU-Net's predictor reads from a checkpoint (initialize_from_trained_model_folder).
REQUIRED_CHECKPOINT_KEYS = ("network_weights", "trainer_name", "init_args")
PREDICTOR_KEYS = (*REQUIRED_CHECKPOINT_KEYS, "inference_allowed_mirroring_axes")


def checkpoint_safe_globals() -> list:
    """The numpy globals an nnU-Net checkpoint's training log needs (numpy 1.25+ and 2.x names)."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
    return [core.multiarray.scalar, np.dtype, np.dtypes.Float32DType, np.dtypes.Float64DType]


def load_weights_only(path: Path, what: str = "checkpoint", safe_globals: Sequence = ()) -> object:
    """``torch.load(weights_only=True)`` on the CPU; ``ModelError`` naming ``path`` if it cannot be read so."""
    import torch

    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file; all mean "unusable"
        raise ModelError(
            f"{path}: cannot be loaded as a weights-only {what} ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); the file is corrupt, truncated, or holds code"
        ) from error


def load_checkpoint(path: Path) -> dict:
    """Unpickle a checkpoint without running code (``weights_only=True``); ``ModelError`` if corrupt."""
    data = load_weights_only(path, "checkpoint", checkpoint_safe_globals())
    if not isinstance(data, dict):
        raise ModelError(f"{path}: holds a {type(data).__name__}, not an nnU-Net checkpoint")
    missing = [k for k in REQUIRED_CHECKPOINT_KEYS if k not in data]
    if missing:
        raise ModelError(f"{path}: not an nnU-Net checkpoint (keys {missing} are missing)")
    return data
