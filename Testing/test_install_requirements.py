"""The one requirements table (``OrganGuidanceLib.install``) against what the two Libs really import.

The Libs are read with ``ast`` (not imported: widget files need Slicer, engine files need
torch), every ``.py`` under both Lib folders, sub-packages included. Their third-party
top-level imports (module level and inside functions) must be exactly the table's import
names plus the modules Slicer provides, so a new import without a pin fails, and so does a
pin nothing imports any more. Pins are exact and equal to this environment's versions.
"""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

from OrganGuidanceLib import install

REPO_ROOT = Path(__file__).resolve().parents[1]
LIB_ROOTS = (REPO_ROOT / "OrganGuidance" / "OrganGuidanceLib", REPO_ROOT / "CRCSegmentation" / "CRCSegmentationLib")
OWN_PACKAGES = {"OrganGuidanceLib", "CRCSegmentationLib"}
FORBIDDEN_PACKAGES = {"CRCTraining"}  # training code is not shipped with the extension
PANEL_FILES = (
    REPO_ROOT / "OrganGuidance" / "OrganGuidanceLib" / "widget.py",
    REPO_ROOT / "OrganGuidance" / "OrganGuidanceLib" / "run_panel.py",
    REPO_ROOT / "OrganGuidance" / "OrganGuidanceLib" / "run_controller.py",
    REPO_ROOT / "OrganGuidance" / "OrganGuidanceLib" / "panel_state.py",
    REPO_ROOT / "CRCSegmentation" / "CRCSegmentationLib" / "widget.py",
    REPO_ROOT / "CRCSegmentation" / "CRCSegmentationLib" / "refinement_panel.py",
    REPO_ROOT / "CRCSegmentation" / "CRCSegmentationLib" / "panel_state.py",
)
PIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*==[0-9]+(\.[0-9]+)*")

needs_stdlib_list = pytest.mark.skipif(
    not hasattr(sys, "stdlib_module_names"), reason="needs sys.stdlib_module_names (Python 3.10+)"
)


def lib_files() -> List[Path]:
    return sorted(path for root in LIB_ROOTS for path in root.rglob("*.py"))


def absolute_imports(path: Path) -> Set[str]:
    """Top-level names of the absolute imports anywhere in ``path`` (module level, functions, try blocks)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def third_party_imports() -> Dict[str, Set[str]]:
    """Third-party top-level module -> the Lib files (relative paths) that import it."""
    found: Dict[str, Set[str]] = {}
    for path in lib_files():
        for name in absolute_imports(path):
            if name in sys.stdlib_module_names or name in OWN_PACKAGES:
                continue
            found.setdefault(name, set()).add(path.relative_to(REPO_ROOT).as_posix())
    return found


def public_version(distribution: str) -> str:
    """The installed version without a local label (a CUDA build of torch reads "2.14.1+cu130")."""
    return importlib.metadata.version(distribution).partition("+")[0]


def table_import_names() -> Set[str]:
    return {name for requirement in install.REQUIREMENTS for name in requirement.import_names}


# ---------------------------------------------------------------------------- table == imports
def test_both_libs_and_their_sub_packages_are_read():
    files = lib_files()
    for root in LIB_ROOTS:
        assert any(path.parent == root for path in files), root
    assert any(path.parent.parent == LIB_ROOTS[1] for path in files), "no CRCSegmentationLib sub-package found"


@needs_stdlib_list
def test_no_lib_imports_the_training_package():
    offenders = {name: files for name, files in third_party_imports().items() if name in FORBIDDEN_PACKAGES}
    assert not offenders, f"the Libs must not import the training package: {offenders}"


@needs_stdlib_list
def test_third_party_imports_are_exactly_the_table_and_slicer_provided_modules():
    imported = third_party_imports()
    expected = table_import_names() | set(install.SLICER_PROVIDED)
    unpinned = {name: sorted(files) for name, files in imported.items() if name not in expected}
    unused = sorted(expected - set(imported))
    assert not unpinned, f"imported by the Libs but neither pinned in install.REQUIREMENTS nor Slicer-provided: {unpinned}"
    assert not unused, f"in install.REQUIREMENTS / SLICER_PROVIDED but imported by no Lib file: {unused}"


def test_slicer_provided_modules_are_never_pip_installed():
    assert not table_import_names() & set(install.SLICER_PROVIDED)
    distributions = {r.distribution.lower() for r in install.REQUIREMENTS}
    assert not distributions & {name.lower() for name in install.SLICER_PROVIDED}
    assert "torch" in table_import_names() and "PyTorchUtils" in install.SLICER_PROVIDED


def test_import_names_are_unique():
    names = [name for requirement in install.REQUIREMENTS for name in requirement.import_names]
    assert len(names) == len(set(names)), names


# ---------------------------------------------------------------------------- pins
@pytest.mark.parametrize("requirement", install.REQUIREMENTS, ids=lambda r: r.import_name)
def test_every_pin_is_exact(requirement):
    assert PIN.fullmatch(requirement.pip_requirement), requirement.pip_requirement
    assert requirement.installer in ("pip", "pytorch")


@pytest.mark.parametrize("requirement", install.REQUIREMENTS, ids=lambda r: r.import_name)
def test_pin_is_the_version_this_project_is_tested_with(requirement):
    assert public_version(requirement.distribution) == requirement.version


@pytest.mark.parametrize("requirement", install.REQUIREMENTS, ids=lambda r: r.import_name)
def test_requires_python_is_the_pinned_release_metadata(requirement):
    declared = importlib.metadata.metadata(requirement.distribution).get("Requires-Python") or ""
    assert requirement.requires_python == declared


@needs_stdlib_list  # packages_distributions is Python 3.10+ too
@pytest.mark.parametrize("requirement", install.REQUIREMENTS, ids=lambda r: r.import_name)
def test_import_names_belong_to_the_pinned_distribution(requirement):
    providers = importlib.metadata.packages_distributions()
    for name in requirement.import_names:
        owners = {d.lower().replace("_", "-") for d in providers.get(name, [])}
        assert requirement.distribution.lower().replace("_", "-") in owners, (name, owners)


def test_every_requirement_is_offered_by_a_panel():
    for requirement in install.REQUIREMENTS:
        assert requirement.features and set(requirement.features) <= set(install.FEATURES), requirement
        assert set(requirement.features) & set(install.PANEL_FEATURES), f"no panel installs {requirement.pip_requirement}"
    offered = {r for feature in install.PANEL_FEATURES for r in install.requirements_for([feature])}
    assert offered == set(install.REQUIREMENTS)


def test_feature_lists_and_torch_through_pytorch_utils():
    core = {r.import_name for r in install.requirements()}
    assert core == {"edt", "cc3d"} and install.CORE_REQUIREMENTS == tuple(install.requirements())
    tumor = {r.import_name for r in install.requirements(features=[install.TUMOR])}
    assert {"torch", "nnunetv2", "tqdm"} <= tumor and "totalsegmentator" not in tumor
    refinement = {r.import_name for r in install.requirements(features=[install.REFINEMENT])}
    assert refinement == core | {"torch", "torchvision", "segment_anything"}  # segment_anything imports torchvision
    everything = install.requirements(totalsegmentator=True, features=install.PANEL_FEATURES)
    assert everything == list(install.REQUIREMENTS)  # table order is install order
    # PyTorchUtils installs torch and torchvision together (torchVersionRequirement, torchvisionVersionRequirement)
    assert [r.import_name for r in everything if r.installer == "pytorch"] == ["torch", "torchvision"]
    assert not any(p.startswith("torch") for p in install.pip_requirements(everything))
    assert install.TORCH_VERSION_REQUIREMENT == "==" + public_version("torch")
    assert install.TORCHVISION_VERSION_REQUIREMENT == "==" + public_version("torchvision")
    assert "torchvision" in tumor  # the HCF networks are torchvision ResNet18s
    with pytest.raises(ValueError):
        install.requirements_for(["no-such-feature"])


def test_panels_take_their_requirements_from_the_table():
    """No Requirement is built and no pin is written in the GUI files; each install is checked before it is offered."""
    asks = 0
    for path in PANEL_FILES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                assert callee != "Requirement", f"{path.name}:{node.lineno} builds its own Requirement"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not re.search(r"[A-Za-z]==\d", node.value), f"{path.name}:{node.lineno} pins {node.value!r}"
            if isinstance(node, ast.FunctionDef):
                lines: Dict[str, List[int]] = {}
                for call in ast.walk(node):
                    if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute):
                        lines.setdefault(call.func.attr, []).append(call.lineno)
                if "askInstall" in lines:  # the one install flow (run_controller.InstallFlow.ensure)
                    assert min(lines.get("unsupported_python_message", [10**9])) < min(lines["askInstall"]), (
                        f"{path.name}: {node.name} asks to install before checking Slicer's Python")
                    asks += 1
    assert asks == 1, f"the install question is asked from {asks} places; one install flow asks it"


# ---------------------------------------------------------------------------- Slicer's Python
def test_python_lower_bound():
    assert install.python_lower_bound(">=3.10") == (3, 10, 0)
    assert install.python_lower_bound(">=3.8,<4") == (3, 8, 0)
    assert install.python_lower_bound("!=3.0.*, >=3.9.2") == (3, 9, 2)
    assert install.python_lower_bound("") == (0, 0, 0)


def test_the_pins_need_python_3_11_so_slicer_5_10():
    needed = max(install.python_lower_bound(r.requires_python) for r in install.REQUIREMENTS)
    assert needed == (3, 11, 0)
    assert install.minimum_slicer(needed).version == "5.10"
    assert install.minimum_slicer((3, 13, 0)) is None
    assert install.TESTED_SLICER in {release.version for release in install.SLICER_RELEASES}


def test_supported_and_tested_python_accepts_every_pin():
    assert install.unsupported_python_message(install.REQUIREMENTS) is None  # this environment
    for release in install.SLICER_RELEASES:
        if release.version in ("5.10", "5.12"):
            assert install.unsupported_python_message(install.REQUIREMENTS, release.python, release.version) is None


def test_old_slicer_gets_a_message_instead_of_a_pip_run():
    message = install.unsupported_python_message(
        install.requirements(totalsegmentator=True), python_version=(3, 9, 10), slicer_version="5.8.1"
    )
    assert message is not None
    for text in ("Slicer 5.8.1", "Python 3.9.10", "Python 3.11 or later", "Slicer 5.10 or later",
                 "torch==2.14.1", "nnunetv2==2.8.1", "scikit-image==0.26.0", "Nothing was installed"):
        assert text in message, (text, message)
    assert "edt==" not in message and "TotalSegmentator==" not in message  # those support Python 3.9


def test_old_slicer_still_installs_what_supports_its_python():
    # A run with organ masks from a file needs only edt and cc3d, which support Python 3.9.
    assert install.unsupported_python_message(install.requirements(), python_version=(3, 9, 10)) is None
    refinement = install.unsupported_python_message(
        install.requirements(features=[install.REFINEMENT]), python_version=(3, 9, 10)
    )
    assert refinement is not None and "torch==2.14.1" in refinement and "Python 3.10 or later" in refinement
    assert "Slicer" in refinement and "(Slicer" not in refinement  # no application version given: none named


def test_python_3_10_is_too_old_for_scikit_image_and_matplotlib():
    message = install.unsupported_python_message(install.REQUIREMENTS, python_version=(3, 10, 4))
    assert message is not None and "scikit-image==0.26.0" in message and "matplotlib==3.11.2" in message
    assert "torch==" not in message


# --- the install checks, for real (moved from the static module checks) ---
def test_nothing_is_missing_in_this_environment():
    assert install.missing_requirements(totalsegmentator=True) == []
    assert install.missing_requirements() == []


def test_a_missing_requirement_is_listed():
    fake = install.Requirement("slicercrc_no_such_module_x7", "slicercrc-no-such==1.0", "test")
    dotted = install.Requirement("slicercrc_no_such_parent.child", "slicercrc-no-such-parent==1.0", "test")
    present = install.CORE_REQUIREMENTS[0]
    assert install.missing_requirements([present, fake, dotted]) == [fake, dotted]
    assert install.is_importable("edt") and not install.is_importable("slicercrc_no_such_parent.child")


def test_requirements_are_pinned_and_torch_goes_through_pytorch_utils():
    everything = install.requirements(totalsegmentator=True)
    assert set(install.CORE_REQUIREMENTS) < set(everything)
    assert not any(r.import_name == "totalsegmentator" for r in install.requirements())
    for requirement in everything:
        if requirement.installer == "pip":
            assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", requirement.pip_requirement), requirement
    assert [r.import_name for r in everything if r.installer == "pytorch"] == ["torch"]  # TotalSegmentator: no torchvision
    assert "torch" not in " ".join(install.pip_requirements(everything))
    assert "connected-components-3d==" in install.describe(install.CORE_REQUIREMENTS)
