"""The choices of the CRC Segmentation panel, written once (standard library only: the panel imports this before torch).

These are the strings its parameter node stores and the logic's settings expect. Devices are
``OrganGuidanceLib.choices.DEVICES`` (re-exported here); Testing/test_slicer_module_static.py
checks each tuple against the engine that reads it.
"""
from __future__ import annotations

from OrganGuidanceLib.choices import DEFAULT_DEVICE, DEVICE_LABELS, DEVICES  # noqa: F401 - re-exported: the panel's device choice

GUIDANCE_SOURCES = ("scene", "compute", "none")  # an Organ Guidance result, computed now, none (CT-only models)
ORGAN_SOURCES = ("totalsegmentator", "node", "file")  # organ masks when the guidance is computed now
CONVENTIONS = ("totalsegmentator", "word")  # label names of organ masks read from the scene or a file
MODEL_SOURCES = ("catalogue", "folder")
PRESETS = ("default", "fast")  # = core.segmentation.PRESETS (FLARE24 §3.2: tile step 7/8, no mirroring)
POINT_ROLES = ("positive", "negative")  # = mrml_points.POINT_ROLES (tumor / not tumor), in placing order
# The segmentation node's reference to its statistics table; = mrml.STATISTICS_REFERENCE_ROLE (mrml needs cc3d).
STATISTICS_REFERENCE_ROLE = "crcSegmentationStatistics"

# --- interactive refinement (U-SAM) -------------------------------------------------------
# How the next prompt is placed; each starts Slicer's place mode for one markups type
# (panel_state.PROMPT_NODE_CLASSES): points are fiducials, a box is an ROI, a scribble an open
# curve (points along it), a lasso a closed curve (its box + points inside).
PROMPT_MODES = ("positive", "negative", "box", "scribble", "lasso")
# Key -> action of the refinement section (a prompt mode, or a RefinementController method).
# Slicer's keys: P/B/S/L as SlicerNNInteractive binds them; Ctrl+Z / Ctrl+Y as the Segment Editor does.
REFINEMENT_SHORTCUTS = {
    "P": "positive",
    "N": "negative",
    "B": "box",
    "S": "scribble",
    "L": "lasso",
    "Ctrl+Z": "undo",
    "Ctrl+Y": "redo",
}
USAM_MODEL_SOURCES = ("catalogue", "file")  # a catalogue model of kind "usam", or a .pt checkpoint / bundle file
DEFAULT_USAM_MODEL = "demo_usam_phantom"  # the shipped demonstration model (models.json)
USAM_KIND = "usam"  # = usam.bundle.KIND: the catalogue entries the refinement section offers

