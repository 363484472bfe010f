"""``load_usam_model``: a U-SAM checkpoint file, a U-SAM bundle folder or a catalogue name -> the network."""
from __future__ import annotations

from pathlib import Path
from typing import List, Union

import torch

from CRCSegmentationLib.core.errors import ModelError
from CRCSegmentationLib.models.catalogue import list_models, resolve_model
from CRCSegmentationLib.networks.usam import USAM
from CRCSegmentationLib.usam.bundle import KIND, load_usam_bundle
from CRCSegmentationLib.usam.checkpoint import read_usam_checkpoint
from OrganGuidanceLib.validation import InputError


def load_usam_model(source: Union[str, Path], device: Union[str, torch.device] = "cpu") -> USAM:
    """The U-SAM network (eval mode, on ``device``) of ``source``.

    ``source``: a ``.pt`` checkpoint (``usam.checkpoint``), a U-SAM bundle folder (``usam.bundle``) or the
    name of a catalogue model of kind ``usam`` (``"demo_usam_phantom"``). ``ModelError`` when it is missing,
    corrupt or not a U-SAM model.
    """
    if not isinstance(source, (str, Path)) or not str(source).strip():
        raise ModelError(f"U-SAM model: {source!r} is not a checkpoint file, a bundle folder or a catalogue name")
    path = Path(source).expanduser()
    if path.is_file():
        try:
            return read_usam_checkpoint(path, device)[0]
        except InputError as error:
            raise ModelError(str(error)) from error
    if not path.is_dir() and (path.suffix or len(path.parts) > 1):
        raise ModelError(f"U-SAM model {path}: no such checkpoint file or bundle folder")
    return load_usam_bundle(resolve_model(source), device)


def usam_catalogue_names() -> List[str]:
    """The catalogue's models of kind ``usam`` (what the point-refinement panel offers)."""
    return [entry.name for entry in list_models() if entry.extra.get("kind") == KIND]
