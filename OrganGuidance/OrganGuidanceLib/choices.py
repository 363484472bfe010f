"""The choices a user makes by name, written once (standard library only: a panel imports this before torch).

``DEVICES``: where a network runs (DESIGN.md: GPU when present, the CPU always works); ``auto`` takes an NVIDIA
GPU (CUDA), then an Apple GPU (MPS), then the CPU. Every ``--device`` option, parameter dataclass and panel combo
box reads this tuple; ``DEVICE_LABELS`` are the panels' words for them.

The OrganGuidance panel's organ sources (the values ``logic.OrganSourceChoice`` takes) and label conventions
are here too, so the panel writes no choice of its own and a test checks them against the logic.
"""
from __future__ import annotations

DEVICES = ("auto", "cuda", "mps", "cpu")
DEVICE_LABELS = {"auto": "Auto (GPU when available)", "cuda": "GPU (NVIDIA CUDA)", "mps": "GPU (Apple MPS)",
                 "cpu": "CPU"}
DEFAULT_DEVICE = "auto"

PRIMARY_KINDS = ("totalsegmentator", "node", "file")
SECONDARY_KINDS = ("none", "node", "file")  # TotalSegmentator twice would add nothing
CONVENTIONS = ("totalsegmentator", "word", "json")  # "json": the mapping file field gives the path
