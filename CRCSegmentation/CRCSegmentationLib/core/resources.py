"""Where the CRCSegmentation module's run-time files are: found relative to this file, never the repository.

- A checkout, Slicer's "Additional module paths" and an installed extension: the module's own
  ``Resources/`` beside this package (CMake installs it next to ``CRCSegmentationLib/``).
- A wheel (``pip install``): the same files as package data inside the package, ``CRCSegmentationLib/Resources``
  (``setup.py`` copies them in at build time).
"""
from __future__ import annotations

from pathlib import Path

LIB_FOLDER = Path(__file__).resolve().parent.parent  # core/ -> CRCSegmentationLib/
CATALOGUE_NAME = "models.json"
# Inside the package first: in a wheel, the folder beside the package would be site-packages/Resources.
CANDIDATES = (LIB_FOLDER / "Resources", LIB_FOLDER.parent / "Resources")


def resources_folder() -> Path:
    """The folder holding the model catalogue and the shipped models."""
    for folder in CANDIDATES:
        if (folder / CATALOGUE_NAME).is_file():
            return folder
    raise FileNotFoundError(
        f"the CRCSegmentation resources (model catalogue {CATALOGUE_NAME}) are missing from this installation; "
        f"looked in {', '.join(str(c) for c in CANDIDATES)}"
    )


def catalogue_file() -> Path:
    return resources_folder() / CATALOGUE_NAME
