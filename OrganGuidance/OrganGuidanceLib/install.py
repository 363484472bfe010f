"""Python packages that organ guidance needs, with the versions it is tested with.

Pure Python (no Slicer, no Qt): the widget asks the user and then installs what
``missing_requirements`` returns, with ``slicer.util.pip_install`` for ``pip``
requirements and the PyTorch extension's ``PyTorchUtils`` for ``torch`` (it picks
the build that matches the GPU driver). Presence is checked with
``importlib.util.find_spec``, which does not import (torch or TotalSegmentator
take seconds to import).

Pins must install on Slicer 5.8's Python 3.9 as well as on newer Slicer releases:
each pinned release below declares ``Requires-Python`` that includes 3.9.
"""
from __future__ import annotations

import importlib.util
from typing import Iterable, List, NamedTuple, Optional, Sequence


class Requirement(NamedTuple):
    import_name: str  # what ``import`` finds, e.g. "cc3d"
    pip_requirement: str  # what pip installs, e.g. "connected-components-3d==4.1.1"
    purpose: str  # shown to the user before anything is installed
    installer: str = "pip"  # "pip" | "pytorch" (the PyTorch extension's PyTorchUtils)


# Needed for every run: the morphology and body crop of the guidance engine.
CORE_REQUIREMENTS = (
    Requirement("edt", "edt==3.1.2", "millimetre dilation and erosion (Euclidean distance transform)"),
    Requirement("cc3d", "connected-components-3d==4.1.1", "largest connected component for the body crop (FLARE24)"),
)

# Needed only when TotalSegmentator makes the organ masks (AG-CRC §III-B).
TORCH_VERSION_REQUIREMENT = ">=2.0.0"  # TotalSegmentator 2.x needs PyTorch 2
TOTALSEGMENTATOR_REQUIREMENTS = (
    Requirement("torch", "torch" + TORCH_VERSION_REQUIREMENT, "PyTorch, which runs TotalSegmentator", "pytorch"),
    Requirement("totalsegmentator", "TotalSegmentator==2.18.0", "TotalSegmentator multi-organ segmentation"),
)


def requirements(totalsegmentator: bool = False) -> List[Requirement]:
    """The requirements of a run; TotalSegmentator's only when it makes the organ masks."""
    return list(CORE_REQUIREMENTS) + (list(TOTALSEGMENTATOR_REQUIREMENTS) if totalsegmentator else [])


def is_importable(import_name: str) -> bool:
    """Whether ``import import_name`` would find a module, without importing it."""
    try:
        return importlib.util.find_spec(import_name) is not None
    except (ImportError, ValueError):
        # A dotted name whose parent package is missing raises instead of returning None.
        return False


def missing_requirements(
    required: Optional[Iterable[Requirement]] = None, totalsegmentator: bool = False
) -> List[Requirement]:
    """Requirements whose module cannot be imported (all of ``requirements(totalsegmentator)`` by default)."""
    candidates = requirements(totalsegmentator) if required is None else list(required)
    return [requirement for requirement in candidates if not is_importable(requirement.import_name)]


def pip_requirements(required: Sequence[Requirement]) -> List[str]:
    """The pip specifiers of the requirements that pip installs (torch goes through PyTorchUtils)."""
    return [requirement.pip_requirement for requirement in required if requirement.installer == "pip"]


def describe(required: Sequence[Requirement]) -> str:
    """One line per requirement, for the question asked before installing."""
    return "\n".join(f"- {r.pip_requirement}: {r.purpose}" for r in required)
