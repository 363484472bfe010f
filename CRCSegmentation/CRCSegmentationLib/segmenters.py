"""One segmenter per model kind, all with the same ``segment`` (DESIGN.md, "A model bundle says what it is").

The module, the console API and ``crcseg segment`` call ``open_model(...).segmenter(parameters)``
and then ``segment(image, guidance, progress, cancel)``; none of them branches on the kind. A kind
is added by registering its factory in ``SEGMENTER_KINDS`` (``nnunet``: ``inference.TumorSegmenter``;
``hcf``: ``hcf_segmenter.HCFSegmenter``; ``usam`` bundles come with their method). Importing this module
is cheap: a factory imports its engine when called.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable, Dict, Optional

from OrganGuidanceLib.guidance import GuidanceResult
from OrganGuidanceLib.image import Image

if TYPE_CHECKING:  # type hints only: the engines import torch and nnU-Net
    from typing import Protocol

    from .inference import ProgressCallback, SegmentationParameters, TumorSegmentation
    from .model_source import ModelSource

    class Segmenter(Protocol):
        """What every kind's segmenter offers (``TumorSegmenter`` for ``nnunet``, ``HCFSegmenter`` for ``hcf``)."""

        def segment(self, image: Image, guidance: Optional[GuidanceResult] = None,
                    progress: Optional[ProgressCallback] = None,
                    cancel: Optional[threading.Event] = None) -> TumorSegmentation: ...


def _nnunet_segmenter(model: "ModelSource", parameters: Optional["SegmentationParameters"]) -> "Segmenter":
    from .inference import TumorSegmenter

    return TumorSegmenter(model, parameters)


def _hcf_segmenter(model: "ModelSource", parameters: Optional["SegmentationParameters"]) -> "Segmenter":
    from .hcf_segmenter import HCFSegmenter

    return HCFSegmenter(model, parameters)


# kind -> factory(model, parameters); bundle.KINDS lists every kind a bundle may declare.
SEGMENTER_KINDS: Dict[str, Callable[["ModelSource", Optional["SegmentationParameters"]], "Segmenter"]] = {
    "nnunet": _nnunet_segmenter,
    "hcf": _hcf_segmenter,
}


def make_segmenter(model: "ModelSource", parameters: Optional["SegmentationParameters"] = None) -> "Segmenter":
    """The segmenter for ``model``'s kind, initialised once (a batch reuses it for every case)."""
    from .model_source import ModelError

    factory = SEGMENTER_KINDS.get(model.kind)
    if factory is None:
        raise ModelError(f"{model.folder}: no segmenter for models of kind '{model.kind}' in this version "
                         f"(kinds: {sorted(SEGMENTER_KINDS)})")
    return factory(model, parameters)
