"""Resolve the device choice (``choices.DEVICES``) to a ``torch.device``."""
from __future__ import annotations

from OrganGuidanceLib.choices import DEVICES
from OrganGuidanceLib.validation import InputError


def resolve_device(device: str = "auto"):
    """A ``torch.device``: ``auto`` picks CUDA when present; CUDA asked for without one is an ``InputError``."""
    import torch

    if device not in DEVICES:
        raise InputError(f"device '{device}' is not one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was requested but no CUDA GPU is available here; choose 'auto' or 'cpu'")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)
