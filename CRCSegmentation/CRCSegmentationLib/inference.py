"""Deprecated module path, kept for one release (removed in SlicerCRC 0.2.0): the names moved.

``SegmentationParameters``, ``PRESETS``, ``TumorSegmentation`` -> ``core.segmentation``; ``TumorSegmenter`` is
``nnunet.segmenter.NNUNetSegmenter`` (get a segmenter of any kind with ``open_model(...).segmenter(...)``);
``ProgressCallback``, ``progress_step`` -> ``OrganGuidanceLib.progress``.
"""
from __future__ import annotations

import warnings

from CRCSegmentationLib.core.segmentation import (  # noqa: F401 - re-exported from their old home
    PRESETS,
    SegmentationParameters,
    TumorSegmentation,
)
from CRCSegmentationLib.nnunet.segmenter import NNUNetSegmenter as TumorSegmenter  # noqa: F401 - old name
from CRCSegmentationLib.nnunet.segmenter import build_input_channels  # noqa: F401 - re-exported
from OrganGuidanceLib.progress import ProgressCallback, progress_step  # noqa: F401 - re-exported

warnings.warn("CRCSegmentationLib.inference is deprecated (removed in 0.2.0): import from "
              "CRCSegmentationLib.core.segmentation, or use open_model(...).segmenter(...)", DeprecationWarning,
              stacklevel=2)
