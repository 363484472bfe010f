"""Headless tumor-segmentation engine and its Slicer glue (builds on ``OrganGuidanceLib``, never the other way).

Layers, imports only downward (``Testing/test_layout.py`` holds this; imports inside functions count):

- L1 ``core/`` (what every kind shares: errors, bundle format, weights-only loading, ``ModelSource``, the
  segmentation contract, CPU fallback), ``networks/`` (nn.Modules that read no files), ``measurement/``
  (metrics, surface area, tumor statistics);
- L2 the kinds: ``nnunet/`` (AG-CRC, FLARE24, RCSegNeXt through nnU-Net's predictor), ``hcf/`` (slice
  classifier + SANet), ``usam/`` (point refinement);
- L3 ``models/``: the kind registry, ``open_model``, the catalogue, the model cache, the slice filter;
- L4 this folder's modules (``logic``, panels, MRML glue, ``batch``) and ``demo/``.

The sub-packages never import ``slicer``, ``qt`` or ``vtk``. ``open_model``, ``ModelError`` and
``SegmentationParameters`` are importable from here without importing torch.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["open_model", "ModelError", "SegmentationParameters"]


def __getattr__(name: str) -> Any:  # imported on first use: the Slicer panels import this package before torch
    if name == "open_model":
        from CRCSegmentationLib.models.open import open_model

        return open_model
    if name == "ModelError":
        from CRCSegmentationLib.core.errors import ModelError

        return ModelError
    if name == "SegmentationParameters":
        from CRCSegmentationLib.core.segmentation import SegmentationParameters

        return SegmentationParameters
    raise AttributeError(f"module 'CRCSegmentationLib' has no attribute '{name}'")
