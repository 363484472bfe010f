"""The choices a user makes by name, written once (standard library only: a panel imports this before torch).

``DEVICES``: where a network runs (DESIGN.md: GPU when present, the CPU always works); ``auto`` takes CUDA when
present. Every ``--device`` option, parameter dataclass and panel combo box reads this tuple.
"""
from __future__ import annotations

DEVICES = ("auto", "cuda", "cpu")
DEFAULT_DEVICE = "auto"
