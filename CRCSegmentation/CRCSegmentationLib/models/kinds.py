"""The model kinds: one registry, one entry per name in the bundle format (``core.bundle.KINDS``).

Each kind says how to open its files (``open``: folder, verified metadata or None, folds, checkpoint ->
``ModelSource``), how to load and check its weights (``load_weights``) and which segmenter runs it
(``segmenter``). ``models.open.open_model`` reads the bundle's kind, calls its opener and injects its
segmenter factory into the ``ModelSource``; nothing else branches on the kind. Each entry imports its
engine when called, so importing this module imports no torch. A kind in the bundle format that is not
registered here is refused with that said. Kind ``usam`` (point prompts) opens, but has no 3D segmenter:
asking it for one is a ``ModelError`` saying so (``usam.bundle``; ``models.usam.load_usam_model`` loads it).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Optional

from CRCSegmentationLib.core.bundle import KINDS, BundleMetadata
from CRCSegmentationLib.core.errors import ModelError
from CRCSegmentationLib.core.model import ModelSource

if TYPE_CHECKING:
    from CRCSegmentationLib.core.segmentation import SegmentationParameters, Segmenter


@dataclass(frozen=True)
class Kind:
    name: str
    open: Callable[[Path, Optional[BundleMetadata], object, Optional[str]], ModelSource]
    load_weights: Callable[[ModelSource], Dict[Path, dict]]
    segmenter: Callable[[ModelSource, Optional["SegmentationParameters"]], "Segmenter"]


def _open_nnunet(folder, metadata, folds, checkpoint) -> ModelSource:
    from CRCSegmentationLib.nnunet.open import open_nnunet_model

    return open_nnunet_model(folder, metadata, folds, checkpoint)


def _nnunet_weights(source: ModelSource) -> Dict[Path, dict]:
    from CRCSegmentationLib.nnunet.open import load_nnunet_weights

    return load_nnunet_weights(source)


def _nnunet_segmenter(source: ModelSource, parameters) -> "Segmenter":
    from CRCSegmentationLib.nnunet.segmenter import NNUNetSegmenter

    return NNUNetSegmenter(source, parameters)


def _open_hcf(folder, metadata, folds, checkpoint) -> ModelSource:
    from CRCSegmentationLib.hcf.bundle import open_hcf_model

    return open_hcf_model(folder, metadata, folds, checkpoint)


def _hcf_weights(source: ModelSource) -> Dict[Path, dict]:
    from CRCSegmentationLib.hcf.bundle import load_hcf_model_weights

    return load_hcf_model_weights(source)


def _hcf_segmenter(source: ModelSource, parameters) -> "Segmenter":
    from CRCSegmentationLib.hcf.segmenter import HCFSegmenter

    return HCFSegmenter(source, parameters)


def _open_usam(folder, metadata, folds, checkpoint) -> ModelSource:
    from CRCSegmentationLib.usam.bundle import open_usam_model

    return open_usam_model(folder, metadata, folds, checkpoint)


def _usam_weights(source: ModelSource) -> Dict[Path, dict]:
    from CRCSegmentationLib.usam.bundle import load_usam_source_weights

    return load_usam_source_weights(source)


def _usam_segmenter(source: ModelSource, parameters) -> "Segmenter":
    from CRCSegmentationLib.usam.bundle import refuse_usam_segmenter

    return refuse_usam_segmenter(source, parameters)


# kind name -> its behaviour; a plain nnU-Net results folder (no bundle metadata) is kind "nnunet".
MODEL_KINDS: Dict[str, Kind] = {
    "nnunet": Kind("nnunet", _open_nnunet, _nnunet_weights, _nnunet_segmenter),
    "hcf": Kind("hcf", _open_hcf, _hcf_weights, _hcf_segmenter),
    "usam": Kind("usam", _open_usam, _usam_weights, _usam_segmenter),
}
RESULTS_FOLDER_KIND = "nnunet"
_unknown = set(MODEL_KINDS) - set(KINDS)
if _unknown:  # checked at import: a kind registered here must be one a bundle can declare
    raise RuntimeError(f"model kinds {sorted(_unknown)} are registered but not in the bundle format's {KINDS}")


def model_kind(name: str, folder: Path) -> Kind:
    """The registered kind ``name``; ``ModelError`` naming ``folder`` when this version cannot run it."""
    kind = MODEL_KINDS.get(name)
    if kind is None:
        raise ModelError(
            f"{folder}: a model of kind '{name}', which this version of SlicerCRC cannot run yet "
            f"(it runs {sorted(MODEL_KINDS)}); update SlicerCRC"
        )
    return kind
