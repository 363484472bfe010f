"""U-SAM checkpoints of this project: one torch file holding format, version, config and weights.

Layout (a dict saved with ``torch.save``, readable with ``torch.load(weights_only=True)``)::

    {"format": "crcseg-usam", "version": 2, "config": asdict(USAMConfig), "model": state_dict, **extra}

Version 2 added the network's size fields to the config (``USAMConfig.SIZE_FIELDS``); a version 1
checkpoint has none and is read as the only size there was then, SAM ViT-B.

``extra`` holds anything else a caller keeps (epoch, metrics, optimizer state) made of tensors,
numbers, strings, None, lists, tuples and dicts only.
"""
from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from CRCSegmentationLib.networks.usam import USAM, USAMConfig
from CRCSegmentationLib.networks.usam.config import SIZE_FIELDS
from OrganGuidanceLib.atomic import atomic_path
from OrganGuidanceLib.validation import InputError

CHECKPOINT_FORMAT = "crcseg-usam"
CHECKPOINT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: config without size fields (ViT-B)
RESERVED_KEYS = ("format", "version", "config", "model")
_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _check_plain(value: Any, where: str) -> None:
    """Only what torch.load(weights_only=True) reads back may go into a checkpoint."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise InputError(f"U-SAM checkpoint extra: key {key!r} in {where} must be a string or an integer")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
    elif not isinstance(value, _PLAIN):
        raise InputError(
            f"U-SAM checkpoint extra: {where} is a {type(value).__name__}; "
            "use tensors, numbers, strings, lists or dicts"
        )


def save_usam_checkpoint(path: Union[str, Path], model: USAM, extra: Optional[Dict[str, Any]] = None) -> None:
    """Write ``model`` (config + weights) and ``extra`` to ``path`` atomically."""
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(RESERVED_KEYS))
    if clash:
        raise InputError(f"U-SAM checkpoint extra: keys {clash} are reserved for the checkpoint layout")
    _check_plain(extra, "extra")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": asdict(model.config),
        "model": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        **extra,
    }
    with atomic_path(Path(path), suffix=".pt") as temporary:
        torch.save(payload, temporary)


def read_usam_checkpoint(
    path: Union[str, Path], device: Union[str, torch.device] = "cpu"
) -> Tuple[USAM, Dict[str, Any]]:
    """Load a U-SAM checkpoint: the model (eval mode, on ``device``) and the caller's extra entries."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"U-SAM checkpoint {path}: file not found")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle, not a torch file...
        raise InputError(
            f"U-SAM checkpoint {path}: cannot be read by torch.load ({type(error).__name__}: {str(error)[:200]}); "
            f"the file is truncated, corrupt or not a checkpoint"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        hint = ""
        if isinstance(payload, dict) and "image_encoder.pos_embed" in payload:
            hint = "; it looks like a SAM checkpoint: use usam_with_sam_weights(config, sam_checkpoint=...)"
        raise InputError(f"U-SAM checkpoint {path}: not a '{CHECKPOINT_FORMAT}' checkpoint{hint}")
    version = payload.get("version")
    if version not in READABLE_VERSIONS:
        raise InputError(
            f"U-SAM checkpoint {path}: format version {version!r}; this code reads versions {READABLE_VERSIONS}"
        )
    stored = payload.get("config")
    known = {f.name for f in fields(USAMConfig)}
    if version == 1:
        known -= set(SIZE_FIELDS)  # ViT-B defaults fill them in
    if not isinstance(stored, dict) or set(stored) != known:
        raise InputError(f"U-SAM checkpoint {path}: config {stored!r} does not have the fields {sorted(known)}")
    try:
        config = USAMConfig(**stored)
    except (InputError, TypeError) as error:
        raise InputError(f"U-SAM checkpoint {path}: invalid config: {error}") from error
    model = USAM(config)
    state = payload.get("model")
    if not isinstance(state, dict):
        raise InputError(f"U-SAM checkpoint {path}: no model weights")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise InputError(
            f"U-SAM checkpoint {path}: weights do not fit the stored config: {str(error)[:500]}"
        ) from error
    extra = {key: value for key, value in payload.items() if key not in RESERVED_KEYS}
    return model.to(device).eval(), extra


def load_usam_checkpoint(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> USAM:
    """Load a U-SAM checkpoint written by ``save_usam_checkpoint``; the model is in eval mode."""
    return read_usam_checkpoint(path, device)[0]
