"""Models opened once per choice: the Slicer panel must not hash and load every checkpoint on each click.

``open_model`` verifies every checkpoint's SHA-256 and unpickles it, and a segmenter builds nnU-Net's
predictor and loads the weights again: seconds for a real model. The cache keeps the last model and
its segmenters until a file of the model folder changes (size or modification time), so a changed or
replaced bundle is verified again. One entry: a second model would double the (GPU) memory held.
"""
from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from CRCSegmentationLib.core.model import ModelSource
from CRCSegmentationLib.models.open import open_model

Fingerprint = Tuple[Tuple[str, int, int], ...]


def folder_fingerprint(folder: Path) -> Fingerprint:
    """(relative path, size, mtime) of every file of the model folder."""
    entries = []
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            stat = path.stat()
            entries.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


class ModelCache:
    """``open`` and ``segmenter`` as ``open_model`` and ``ModelSource.segmenter``, done once per model choice."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the panel opens on the main thread, its worker builds segmenters
        self._key: Optional[tuple] = None
        self._model: Optional[ModelSource] = None
        self._segmenters: Dict[tuple, object] = {}
        self.opened = 0  # how many times a model was really opened (for tests and the log)

    def open(self, spec, folds: Optional[Sequence[str]] = None, checkpoint: Optional[str] = None) -> ModelSource:
        from CRCSegmentationLib.models.catalogue import resolve_model

        folder = resolve_model(spec).resolve()
        key = (str(folder), tuple(str(f) for f in folds) if folds is not None else None, checkpoint,
               folder_fingerprint(folder))
        with self._lock:
            if key == self._key and self._model is not None:
                return self._model
        model = open_model(folder, folds, checkpoint)  # outside the lock: seconds for a real model
        with self._lock:
            self._key, self._model, self._segmenters = key, model, {}
            self.opened += 1
        return model

    def segmenter(self, model: ModelSource, parameters=None):
        """The segmenter of ``model`` for these parameters, built once (its predictor holds the weights)."""
        key = dataclasses.astuple(parameters) if parameters is not None else None
        with self._lock:
            if model is self._model and key in self._segmenters:
                return self._segmenters[key]
        segmenter = model.segmenter(parameters)
        with self._lock:
            if model is self._model:
                self._segmenters = {key: segmenter}  # one: other parameters build another predictor
        return segmenter
