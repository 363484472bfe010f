"""Shared fixtures. Real test data lives outside the repository, in ../shared/data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SLICERCRC_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of real CT and label maps (see shared/data/README.md); tests need it."""
    if not (SHARED_DATA / "ts_example_ct.nii.gz").exists():
        pytest.fail(f"real test data not found in {SHARED_DATA}; set SLICERCRC_TEST_DATA to the shared/data folder")
    return SHARED_DATA


# Real data read once per session; tests derive new images and never write into these arrays.
@pytest.fixture(scope="session")
def ct(shared_data):
    """The TotalSegmentator example CT: 3 mm, direction diag(-1, -1, 1)."""
    from OrganGuidanceLib.io import read_image

    return read_image(shared_data / "ts_example_ct.nii.gz", name="ts_example_ct")


@pytest.fixture(scope="session")
def organs(shared_data):
    """TotalSegmentator v2 `total` label map of ``ct``, same grid."""
    from OrganGuidanceLib.io import read_image

    return read_image(shared_data / "ts_example_ct_seg_total_v2.nii.gz", name="organs")


@pytest.fixture(scope="session")
def ts():
    """TotalSegmentator v2 label convention, read from its class map."""
    from OrganGuidanceLib.labels import totalsegmentator_convention

    return totalsegmentator_convention()


# --- MRML scene under slicer-core (Qt-free Slicer); used by the MRML glue and logic tests ---
@pytest.fixture
def mrml_scene():
    """A fresh ``vtkMRMLScene`` with the segmentation converter rules registered."""
    from OrganGuidanceLib.mrml import new_scene

    scene = new_scene()
    yield scene
    scene.Clear(1)
