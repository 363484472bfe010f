"""The Python packages SlicerCRC's two Libs import: one table, with the releases it is tested with.

``REQUIREMENTS`` lists every third-party module that ``OrganGuidanceLib`` and
``CRCSegmentationLib`` import (sub-packages included), except those Slicer provides
(``SLICER_PROVIDED``): its pip distribution pinned with ``==`` to the release this project
is tested with, the pinned release's ``Requires-Python``, and the features whose first use
installs it. Testing/test_install_requirements.py reads both Libs and checks that their
imports are exactly these names plus ``SLICER_PROVIDED``, and that every pin is the version
installed in the test environment. Both panels take their lists from here only.

Pure Python (no Slicer, no Qt): the widget asks the user and then installs what
``missing_requirements`` returns, with ``slicer.util.pip_install`` for ``pip``
requirements and the PyTorch extension's ``PyTorchUtils`` for ``torch`` and
``torchvision`` (it installs both together, in the build that matches the GPU
driver). Presence is checked with ``importlib.util.find_spec``, which does not import (torch or TotalSegmentator
take seconds to import); a package that is present at another version is left alone.

Supported Slicer: 5.10 and later (Python 3.12), tested with Slicer 5.12, which bundles the
numpy and SciPy releases of the test environment. Slicer 5.8's Python 3.9 is older than the
``Requires-Python`` of torch, nnU-Net v2, scikit-image and matplotlib:
``unsupported_python_message`` says so, and the panels show it instead of starting a pip
run that cannot succeed (edt and cc3d, the only packages of a run with organ masks from a
file or a segmentation, still install there).
"""
from __future__ import annotations

import importlib.util
import re
import sys
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

# Features: what the user does that needs the package (a package is installed on the first use of any of its features).
CORE = "core"
TOTALSEGMENTATOR = "totalsegmentator"
TUMOR = "tumor"
REFINEMENT = "refinement"
HEADLESS = "headless"
DICOM_EXPORT = "dicom_export"
FEATURES: Dict[str, str] = {
    CORE: "organ guidance (every run of either panel)",
    TOTALSEGMENTATOR: "organ masks made by TotalSegmentator (either panel)",
    TUMOR: "the CRC Segmentation tumor model (nnU-Net v2, from the model catalogue)",
    REFINEMENT: "U-SAM point refinement (CRC Segmentation)",
    HEADLESS: "command line, batch evaluation and QA pictures (outside the panels)",
    DICOM_EXPORT: "export of the segmentation as DICOM SEG, RTSTRUCT and SR (CRCSegmentationLib.dicom)",
}
PANEL_FEATURES = (CORE, TOTALSEGMENTATOR, TUMOR, REFINEMENT, DICOM_EXPORT)


class Requirement(NamedTuple):
    import_name: str  # what ``import`` finds, e.g. "cc3d"
    pip_requirement: str  # what pip installs, e.g. "connected-components-3d==4.1.1"
    purpose: str  # shown to the user before anything is installed
    installer: str = "pip"  # "pip" | "pytorch" (the PyTorch extension's PyTorchUtils)
    features: Tuple[str, ...] = (CORE,)
    requires_python: str = ""  # the pinned release's Requires-Python ("": none declared)
    also_imports: Tuple[str, ...] = ()  # further top-level modules of the same distribution

    @property
    def distribution(self) -> str:
        return self.pip_requirement.partition("==")[0]

    @property
    def version(self) -> str:
        return self.pip_requirement.partition("==")[2]

    @property
    def import_names(self) -> Tuple[str, ...]:
        return (self.import_name,) + self.also_imports


# Table order is install order. scikit-image, matplotlib and tqdm are imported by the headless
# tools only (and tqdm by the catalogue download), but nnU-Net v2 and TotalSegmentator depend
# on them unpinned: listing them with those features makes pip install the tested release.
_WITH_NNUNET = (TOTALSEGMENTATOR, TUMOR, HEADLESS)
REQUIREMENTS: Tuple[Requirement, ...] = (
    Requirement("edt", "edt==3.1.2", "millimetre dilation and erosion (Euclidean distance transform)",
                features=(CORE,), requires_python=">=3.8,<4"),
    Requirement("cc3d", "connected-components-3d==4.1.1",
                "largest connected component for the body crop (FLARE24) and tumor statistics",
                features=(CORE,), requires_python=">=3.9,<4.0"),
    Requirement("torch", "torch==2.14.1", "PyTorch, which runs TotalSegmentator, nnU-Net v2 and U-SAM", "pytorch",
                features=(TOTALSEGMENTATOR, TUMOR, REFINEMENT), requires_python=">=3.10"),
    # PyTorchUtils installs torch and torchvision together (its installTorch takes a torchvisionVersionRequirement).
    # The HCF tumour model's networks are torchvision ResNet18s; segment_anything imports torchvision too.
    Requirement("torchvision", "torchvision==0.29.1", "torchvision, whose ResNet18 the HCF tumor networks build on",
                "pytorch", features=(TUMOR, REFINEMENT), requires_python=">=3.10,!=3.14.1"),
    Requirement("totalsegmentator", "TotalSegmentator==2.18.0", "TotalSegmentator multi-organ segmentation",
                features=(TOTALSEGMENTATOR,), requires_python=">=3.9"),
    # TotalSegmentator 2.18 runs on nnU-Net v2 too (it asks for >=2.3.1; this is the tested release).
    Requirement("nnunetv2", "nnunetv2==2.8.1", "nnU-Net v2, which runs the tumor model and TotalSegmentator",
                features=(TOTALSEGMENTATOR, TUMOR), requires_python=">=3.10"),
    Requirement("segment_anything", "segment-anything==1.0", "Segment Anything, on which U-SAM point refinement builds",
                features=(REFINEMENT,)),
    Requirement("skimage", "scikit-image==0.26.0", "surface areas for the evaluation metrics",
                features=_WITH_NNUNET, requires_python=">=3.11"),
    Requirement("matplotlib", "matplotlib==3.11.2", "QA overlay pictures", features=_WITH_NNUNET,
                requires_python=">=3.11", also_imports=("mpl_toolkits",)),
    Requirement("tqdm", "tqdm==4.70.1", "download and batch progress bars", features=_WITH_NNUNET,
                requires_python=">=3.8"),
    # highdicom 0.28.2 needs pydicom >= 3.0.1: pinned here so that pip installs the tested release, not the newest.
    Requirement("pydicom", "pydicom==3.0.2", "DICOM reading and writing for the DICOM export",
                features=(DICOM_EXPORT, HEADLESS), requires_python=">=3.10"),
    Requirement("highdicom", "highdicom==0.28.2", "DICOM SEG and SR (TID 1500) writing for the DICOM export",
                features=(DICOM_EXPORT, HEADLESS), requires_python=">=3.10"),
)

# Modules the Libs import that Slicer (or the PyTorch extension, which SlicerCRC's extension
# depends on) provides: never pip-installed. A pip copy of numpy, SciPy or SimpleITK would
# replace the one Slicer was built and tested with (Slicer's SimpleITK also registers its IO),
# so the Libs use whatever release the running Slicer bundles.
SLICER_PROVIDED: Dict[str, str] = {
    "slicer": "the Slicer application",
    "qt": "Slicer's PythonQt",
    "vtk": "Slicer's VTK",
    "numpy": "bundled with Slicer (2.0.2 in Slicer 5.10, 2.4.6 in 5.12: the tested release)",
    "scipy": "bundled with Slicer (1.13.1 in Slicer 5.10, 1.17.1 in 5.12: the tested release)",
    "SimpleITK": "bundled with Slicer (its own build in 5.10, 2.5.5 in 5.12)",
    "PyTorchUtils": "the PyTorch extension, which installs torch",
}


class SlicerRelease(NamedTuple):
    version: str
    python: Tuple[int, int, int]  # Slicer_REQUIRED_PYTHON_VERSION of its SuperBuild


SLICER_RELEASES = (
    SlicerRelease("5.8", (3, 9, 10)),
    SlicerRelease("5.10", (3, 12, 10)),
    SlicerRelease("5.12", (3, 12, 10)),
)
TESTED_SLICER = "5.12"


def requirements_for(features: Iterable[str]) -> List[Requirement]:
    """The requirements of any of ``features``, in table (install) order."""
    wanted = set(features)
    unknown = wanted - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown features {sorted(unknown)}; known: {sorted(FEATURES)}")
    return [requirement for requirement in REQUIREMENTS if wanted & set(requirement.features)]


def requirements(totalsegmentator: bool = False, features: Iterable[str] = ()) -> List[Requirement]:
    """The requirements of a run: the core ones, TotalSegmentator's when it makes the organ masks, and ``features``'."""
    return requirements_for([CORE, *([TOTALSEGMENTATOR] if totalsegmentator else []), *features])


CORE_REQUIREMENTS = tuple(requirements_for([CORE]))
TOTALSEGMENTATOR_REQUIREMENTS = tuple(requirements_for([TOTALSEGMENTATOR]))
TORCH_REQUIREMENT = next(r for r in REQUIREMENTS if r.import_name == "torch")
TORCH_VERSION_REQUIREMENT = "==" + TORCH_REQUIREMENT.version  # PyTorchUtils' torchVersionRequirement
TORCHVISION_REQUIREMENT = next(r for r in REQUIREMENTS if r.import_name == "torchvision")
TORCHVISION_VERSION_REQUIREMENT = "==" + TORCHVISION_REQUIREMENT.version  # its torchvisionVersionRequirement


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


# ---------------------------------------------------------------------------- Slicer's Python
def python_lower_bound(requires_python: str) -> Tuple[int, int, int]:
    """The oldest Python a ``Requires-Python`` admits, e.g. ">=3.10" -> (3, 10, 0); (0, 0, 0) when unbounded."""
    bounds = [(0, 0, 0)]
    for specifier in requires_python.split(","):
        match = re.fullmatch(r"\s*(?:>=|~=|>)\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?\s*", specifier)
        if match:
            major, minor, micro = match.groups()
            bounds.append((int(major), int(minor or 0), int(micro or 0)))
    return max(bounds)


def _dotted(version: Sequence[int]) -> str:
    return ".".join(str(part) for part in version)


def minimum_slicer(python: Sequence[int]) -> Optional[SlicerRelease]:
    """The first Slicer release whose Python is ``python`` or newer (None: no release known here)."""
    return next((release for release in SLICER_RELEASES if release.python >= tuple(python)), None)


def unsupported_python_message(
    required: Iterable[Requirement],
    python_version: Optional[Sequence[int]] = None,
    slicer_version: Optional[str] = None,
) -> Optional[str]:
    """None when every pinned release of ``required`` supports this Python; otherwise why not, to show instead of installing.

    ``python_version`` defaults to the running interpreter (inside Slicer: Slicer's Python);
    ``slicer_version`` (``slicer.app.applicationVersion``) only names the application in the message.
    """
    python = tuple(sys.version_info[:3] if python_version is None else python_version)
    blocked = [r for r in required if python < python_lower_bound(r.requires_python)]
    if not blocked:
        return None
    needed = max(python_lower_bound(r.requires_python) for r in blocked)
    found = f"Python {_dotted(python)}" + (f" (Slicer {slicer_version})" if slicer_version else "")
    release = minimum_slicer(needed)
    newer = (f"Slicer {release.version} or later (Python {_dotted(release.python[:2])})" if release
             else f"a Slicer whose Python is {_dotted(needed[:2])} or later")
    listed = ", ".join(f"{r.pip_requirement} (Python {r.requires_python})" for r in blocked)
    return (f"These packages cannot be installed on {found}: {listed}. Nothing was installed. "
            f"They need Python {_dotted(needed[:2])} or later: use {newer}; "
            f"SlicerCRC is tested with Slicer {TESTED_SLICER}.")
