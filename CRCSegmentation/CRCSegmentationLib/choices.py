"""The choices of the CRC Segmentation panel, written once (standard library only: the panel imports this before torch).

These are the strings its parameter node stores and the logic's settings expect. Devices are
``OrganGuidanceLib.choices.DEVICES`` (re-exported here); Testing/test_slicer_module_static.py
checks each tuple against the engine that reads it.
"""
from __future__ import annotations

from OrganGuidanceLib.choices import DEFAULT_DEVICE, DEVICES  # noqa: F401 - re-exported: the panel's device choice

GUIDANCE_SOURCES = ("scene", "compute", "none")  # an Organ Guidance result, computed now, none (CT-only models)
ORGAN_SOURCES = ("totalsegmentator", "node", "file")  # organ masks when the guidance is computed now
CONVENTIONS = ("totalsegmentator", "word")  # label names of organ masks read from the scene or a file
MODEL_SOURCES = ("catalogue", "folder")
PRESETS = ("default", "fast")  # = core.segmentation.PRESETS (FLARE24 §3.2: tile step 7/8, no mirroring)
POINT_ROLES = ("positive", "negative")  # = mrml_points.POINT_ROLES (tumor / not tumor), in placing order
# The segmentation node's reference to its statistics table; = mrml.STATISTICS_REFERENCE_ROLE (mrml needs cc3d).
STATISTICS_REFERENCE_ROLE = "crcSegmentationStatistics"
