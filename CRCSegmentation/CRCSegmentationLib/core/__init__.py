"""L1: what every model kind shares, importing nothing above it (no torch at import).

``errors`` (ModelError), ``bundle`` (the bundle format: read, verify, write), ``checkpoints`` (weights-only
loading), ``model`` (``ModelSource`` and the channel names), ``segmentation`` (parameters, presets, result, the
``Segmenter`` Protocol), ``running`` (device, CPU fallback, small components), ``efficiency``, ``mr_checks``,
``model_fit``.
"""
