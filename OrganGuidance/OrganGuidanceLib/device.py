"""Resolve the device choice (``choices.DEVICES``) to a ``torch.device``.

``auto``: CUDA, then Apple's MPS, then the CPU. On MPS, an operation PyTorch has not written for it runs on the
CPU (``PYTORCH_ENABLE_MPS_FALLBACK=1``, set here before the first MPS run; the segmenters also retry a whole case
on the CPU when the GPU fails, ``core.running.with_cpu_fallback``).
"""
from __future__ import annotations

import os

from OrganGuidanceLib.choices import DEVICES
from OrganGuidanceLib.validation import InputError

MPS_FALLBACK = "PYTORCH_ENABLE_MPS_FALLBACK"


def mps_available() -> bool:
    """Whether an Apple GPU is usable by this PyTorch (built with MPS, on macOS 12.3 or later)."""
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: str = "auto"):
    """A ``torch.device``: ``auto`` picks CUDA, then MPS, then the CPU; a GPU asked for but absent is an ``InputError``."""
    import torch

    if device not in DEVICES:
        raise InputError(f"device '{device}' is not one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was requested but no CUDA GPU is available here; choose 'auto' or 'cpu'")
    if device == "mps" and not mps_available():
        raise InputError("device 'mps' was requested but no Apple GPU (MPS) is available here (it needs macOS 12.3+ "
                         "on Apple silicon and a PyTorch built with MPS); choose 'auto' or 'cpu'")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if device == "mps":
        os.environ.setdefault(MPS_FALLBACK, "1")  # an operation missing on MPS runs on the CPU instead of failing
    return torch.device(device)
