"""The layout's rules (README "Layout"), read from the source: no import cycle, imports only downward, engine
without Slicer, no private name imported, argparse only in the command-line package, each choice written once."""
from __future__ import annotations

import ast
from typing import Dict, List

import pytest
from import_graph import PACKAGE_ROOTS, edges, read_modules, strongly_connected

# CRCSegmentationLib's layers (LAYOUT.md rule 2), declared once: a module imports only its own layer or below.
LAYERS: Dict[str, int] = {
    "core": 1, "networks": 1, "measurement": 1, "dicom": 1,
    "nnunet": 2, "hcf": 2, "usam": 2,
    "models": 3,
    "demo": 4,
}
ROOT_LAYER = 4  # the Lib root: Slicer glue, logic, batch
ENGINE_PACKAGES = tuple(LAYERS)  # never import slicer, qt, vtk
GUI_MODULES = ("slicer", "qt", "vtk", "ctk")


@pytest.fixture(scope="module")
def modules():
    return read_modules()


def layer(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "CRCSegmentationLib" or len(parts) < 2:
        return ROOT_LAYER
    return LAYERS.get(parts[1], ROOT_LAYER)


def test_the_graph_is_read(modules):
    """The graph holds every module and sees imports made inside functions (the ones that hid the old cycle)."""
    assert len(modules) > 150 and all(name.split(".")[0] in PACKAGE_ROOTS for name in modules)
    inner = [(a, b) for a, b, _, _ in edges(modules) if a == "CRCSegmentationLib.models.kinds"]
    assert ("CRCSegmentationLib.models.kinds", "CRCSegmentationLib.nnunet.segmenter") in inner


def test_no_import_cycle(modules):
    cycles = [sorted(component) for component in strongly_connected(modules) if len(component) > 1]
    assert cycles == [], f"import cycles (imports inside functions and TYPE_CHECKING blocks count): {cycles}"


def test_imports_go_only_downward_in_crcsegmentationlib(modules):
    upward = [f"{a} (L{layer(a)}) imports {b} (L{layer(b)}), line {line}"
              for a, b, _, line in edges(modules)
              if a.startswith("CRCSegmentationLib.") and b.startswith("CRCSegmentationLib.") and layer(b) > layer(a)]
    assert upward == []


def test_the_engine_never_imports_slicer_qt_or_vtk(modules):
    found = []
    for module in modules.values():
        parts = module.name.split(".")
        engine = parts[0] == "CRCSegmentationLib" and len(parts) > 1 and parts[1] in ENGINE_PACKAGES
        if not engine and parts[0] != "CRCTraining":
            continue
        found += [f"{module.name}: {target} (line {line})" for target, _, line in module.imports
                  if target.split(".")[0] in GUI_MODULES]
    assert found == []


def test_no_module_imports_a_private_name(modules):
    private = [f"{a} imports {b}.{name} (line {line})" for a, b, name, line in edges(modules)
               if name and name.startswith("_") and not name.startswith("__")]
    assert private == []


def test_argparse_only_in_the_command_line_package(modules):
    users = sorted(m.name for m in modules.values()
                   if any(target == "argparse" for target, _, _ in m.imports)
                   and not m.name.startswith("CRCTraining.cli"))
    assert users == []


def _string_tuples(modules) -> Dict[str, List[tuple]]:
    found: Dict[str, List[tuple]] = {}
    for module in modules.values():
        for node in ast.walk(module.tree):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts and all(
                    isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                found.setdefault(module.name, []).append(tuple(e.value for e in node.elts))
    return found


def test_the_device_choices_and_the_kind_names_are_written_once(modules):
    tuples = _string_tuples(modules)
    devices = sorted(name for name, values in tuples.items() for v in values if {"auto", "cuda"} <= set(v))
    assert devices == ["OrganGuidanceLib.choices"]
    kinds = sorted(name for name, values in tuples.items() for v in values if {"nnunet", "hcf"} <= set(v))
    assert kinds == ["CRCSegmentationLib.core.bundle"]


def test_no_branch_on_the_model_kind_outside_the_registry(modules):
    """``kind == "hcf"`` and the like: the kind's behaviour is registered in ``models/kinds.py`` instead."""
    kind_names = {"nnunet", "hcf", "usam"}
    branches = []
    for module in modules.values():
        if module.name == "CRCSegmentationLib.models.kinds":
            continue
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute) and node.left.attr == "kind":
                constants = [c.value for c in node.comparators if isinstance(c, ast.Constant)]
                if kind_names & set(constants):
                    branches.append(f"{module.name}, line {node.lineno}")
    assert branches == []
