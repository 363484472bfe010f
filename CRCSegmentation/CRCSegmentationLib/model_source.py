"""Deprecated module path, kept for one release (removed in SlicerCRC 0.2.0): the names moved.

``ModelError`` -> ``core.errors``; ``ModelSource``, the channel names -> ``core.model``; ``open_model`` ->
``models.open``; ``load_checkpoint``, ``load_weights_only`` -> ``core.checkpoints``; ``DEFAULT_CHECKPOINT`` ->
``nnunet.open``. ``from CRCSegmentationLib import open_model, ModelError`` is the stable import.
"""
from __future__ import annotations

import warnings

from CRCSegmentationLib.core.checkpoints import (  # noqa: F401 - re-exported from their old home
    PREDICTOR_KEYS,
    REQUIRED_CHECKPOINT_KEYS,
    checkpoint_safe_globals,
    load_checkpoint,
    load_weights_only,
)
from CRCSegmentationLib.core.errors import ModelError  # noqa: F401 - re-exported
from CRCSegmentationLib.core.model import (  # noqa: F401 - re-exported
    CHANNEL_ALIASES,
    IMAGE_CHANNEL,
    KNOWN_CHANNELS,
    ModelSource,
    dataset_channel_names,
    dataset_modality,
)
from CRCSegmentationLib.models.open import open_model  # noqa: F401 - re-exported
from CRCSegmentationLib.nnunet.open import DEFAULT_CHECKPOINT  # noqa: F401 - re-exported

warnings.warn("CRCSegmentationLib.model_source is deprecated (removed in 0.2.0): import from "
              "CRCSegmentationLib (open_model, ModelError) or CRCSegmentationLib.core.model", DeprecationWarning,
              stacklevel=2)
