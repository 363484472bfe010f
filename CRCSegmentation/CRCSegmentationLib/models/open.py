"""``open_model``: a bundle, an nnU-Net results folder or a catalogue model (by name) -> a checked ``ModelSource``.

The bundle's metadata is verified (SHA-256 of every weight file) before its kind's opener
(``models.kinds``) checks the rest; the returned source carries the kind's segmenter factory, so
``open_model(...).segmenter(parameters).segment(...)`` runs any kind.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from CRCSegmentationLib.core.bundle import METADATA_FILE, verify_bundle
from CRCSegmentationLib.core.errors import BundleError, ModelError
from CRCSegmentationLib.core.model import ModelSource
from CRCSegmentationLib.models.catalogue import resolve_model
from CRCSegmentationLib.models.kinds import RESULTS_FOLDER_KIND, model_kind


def open_model(path: Union[str, Path], folds: Optional[Sequence[Union[str, int]]] = None,
               checkpoint: Optional[str] = None, load_checkpoints: bool = True) -> ModelSource:
    """Validate a bundle, an nnU-Net results folder or a catalogue model (by name) and describe it.

    Raises ``ModelError``. ``open_model(...).segmenter(parameters)`` gives the model's segmenter.

    ``folds``: None = the bundle's folds, or every ``fold_*`` holding the checkpoint.
    ``load_checkpoints``: also unpickle every checkpoint (``weights_only=True``) and check its
    network's input channels against ``dataset.json``; off only where the caller loads them next anyway.
    """
    folder = resolve_model(path)
    metadata = None
    if (folder / METADATA_FILE).is_file():
        try:
            metadata = verify_bundle(folder)  # SHA-256 of every recorded checkpoint
        except BundleError as error:
            raise ModelError(str(error)) from error
    kind = model_kind(metadata.kind if metadata is not None else RESULTS_FOLDER_KIND, folder)
    source = kind.open(folder, metadata, folds, checkpoint)
    source.segmenter_factory = kind.segmenter
    if load_checkpoints:
        source.loaded_checkpoints.update(kind.load_weights(source))
    return source
