"""Static checks of the Slicer modules: what can be checked without the Slicer application.

The Qt widget code cannot run here (only the Qt-free ``slicer-core`` wheel is
installed), so these tests read the sources instead: the .ui file against the
widget code and the parameter-node wrapper, Python 3.9 grammar (Slicer 5.8),
the headless rule for the Lib packages, import order (the module must load
before its dependencies are installed) and the CMake files. ``install`` is pure
Python and is tested for real.
"""
from __future__ import annotations

import ast
import builtins
import struct
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Set, Tuple

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULES = ("OrganGuidance", "CRCSegmentation")
OG = REPO_ROOT / "OrganGuidance"
OG_LIB = OG / "OrganGuidanceLib"
UI_FILE = OG / "Resources" / "UI" / "OrganGuidance.ui"
WIDGET_FILE = OG_LIB / "widget.py"
RUN_PANEL_FILE = OG_LIB / "run_panel.py"  # the Qt binding both panels build on (RunPanelBase)
RUN_CONTROLLER_FILE = OG_LIB / "run_controller.py"  # the Qt-free run state machine and install flow
PANEL_STATE_FILE = OG_LIB / "panel_state.py"  # the Organ Guidance panel's decisions, Qt-free
MODULE_FILE = OG / "OrganGuidance.py"
GUI_LIB_FILE_NAMES = ("widget.py", "run_panel.py", "refinement_panel.py")
# Imports that need the Slicer application (Qt); only the GUI files and the module files may use them.
GUI_IMPORTS = ("qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper")
# Lib modules widget.py may import at load time: they import nothing outside the standard library
# (and ``slicer`` itself), directly or through each other.
DEPENDENCY_FREE_LIB_MODULES = {"install", "labels", "choices", "run_controller", "panel_state"}
SECTION_TITLES = {"Inputs", "Organ masks", "Guidance parameters", "Output", "Advanced"}
# Parameter-node field -> GuidanceParameters field, for the defaults and ranges checks.
GUIDANCE_FIELDS = {
    "organSet": "organ_set",
    "dilationMm": "dilation_mm",
    "wallWidthMm": "wall_width_mm",
    "bodyCrop": "body_crop",
    "bodyThresholdHu": "body_threshold_hu",
    "cropMarginMm": "crop_margin_mm",
}


CRC = REPO_ROOT / "CRCSegmentation"
CRC_LIB = CRC / "CRCSegmentationLib"
CRC_UI_FILE = CRC / "Resources" / "UI" / "CRCSegmentation.ui"
CRC_WIDGET_FILE = CRC_LIB / "widget.py"
CRC_REFINEMENT_PANEL_FILE = CRC_LIB / "refinement_panel.py"
CRC_PANEL_STATE_FILE = CRC_LIB / "panel_state.py"
CRC_REFINEMENT_CONTROLLER_FILE = CRC_LIB / "refinement_controller.py"  # the refinement section's decisions
CRC_CHOICES_FILE = CRC_LIB / "choices.py"
# The Qt-free halves of the panels: what they decide runs under slicer-core (Testing/test_panel_controllers.py).
QT_FREE_PANEL_FILES = (RUN_CONTROLLER_FILE, PANEL_STATE_FILE, CRC_PANEL_STATE_FILE, CRC_REFINEMENT_CONTROLLER_FILE,
                       CRC_CHOICES_FILE)
CRC_MODULE_FILE = CRC / "CRCSegmentation.py"
CRC_SECTION_TITLES = {"Inputs", "Model", "Advanced", "Output", "Point refinement", "Results"}
CRC_UNBOUND_FIELDS = {"modelName", "usamModelName"}  # set from their combo boxes, whose items come from the catalogue
# Parameter-node field -> SegmentationParameters field, for the defaults and ranges checks.
SEGMENTATION_FIELDS = {
    "device": "device",
    "mirroring": "mirroring",
    "restrictToOoi": "restrict_to_ooi",
    "ooiMarginMm": "ooi_margin_mm",
    "bodyCrop": "body_crop",
    "keepWithinOoi": "keep_within_ooi",
    "minComponentMl": "min_component_ml",
}


# ---------------------------------------------------------------------------- helpers
def python_files(*folders: Path) -> List[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def ui_tree(ui_file: Path = UI_FILE) -> ET.ElementTree:
    return ET.parse(ui_file)


def ui_widgets(ui_file: Path = UI_FILE) -> Dict[str, ET.Element]:
    """objectName -> <widget> element, the root widget excluded (it is not a child)."""
    root = ui_tree(ui_file).getroot().find("widget")
    return {w.get("name"): w for w in root.iter("widget") if w is not root}


def ui_property(widget: ET.Element, name: str) -> Optional[ET.Element]:
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop
    return None


def ui_parameter_names(ui_file: Path = UI_FILE) -> Dict[str, str]:
    """SlicerParameterName -> objectName."""
    names = {}
    for object_name, widget in ui_widgets(ui_file).items():
        prop = ui_property(widget, "SlicerParameterName")
        if prop is not None:
            names[prop.findtext("string")] = object_name
    return names


def ui_attribute_uses(path: Path) -> Set[str]:
    """Names used as ``self.ui.NAME`` or ``ui.NAME``."""
    names = set()
    for node in ast.walk(parse(path)):
        if not isinstance(node, ast.Attribute):
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id == "ui":
            names.add(node.attr)
        elif (isinstance(value, ast.Attribute) and value.attr == "ui"
              and isinstance(value.value, ast.Name) and value.value.id == "self"):
            names.add(node.attr)
    return names


def wrapper_class(tree: ast.Module) -> ast.ClassDef:
    """The class decorated with ``parameterNodeWrapper`` in widget.py."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
                if name == "parameterNodeWrapper":
                    return node
    raise AssertionError(f"{WIDGET_FILE.name}: no class decorated with @parameterNodeWrapper")


def wrapper_fields(tree: ast.Module) -> Dict[str, ast.AnnAssign]:
    return {
        statement.target.id: statement
        for statement in wrapper_class(tree).body
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
    }


def module_constants(tree: ast.Module) -> Dict[str, ast.expr]:
    """Module-level ``NAME = value`` assignments."""
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            constants[node.targets[0].id] = node.value
    return constants


def annotation_text(field: ast.AnnAssign, constants: Dict[str, ast.expr]) -> str:
    """The annotation as source, with a module-level alias (e.g. ``OrganNode``) expanded."""
    annotation = field.annotation
    if isinstance(annotation, ast.Name) and annotation.id in constants:
        annotation = constants[annotation.id]
    return ast.unparse(annotation)


def imported_modules(node: ast.AST, package: str = "") -> List[Tuple[str, int]]:
    """(absolute-ish module name, level) of every import below ``node``; ``from x import y`` gives x.y too."""
    found = []
    for item in ast.walk(node):
        if isinstance(item, ast.Import):
            found += [(alias.name, 0) for alias in item.names]
        elif isinstance(item, ast.ImportFrom):
            base = item.module or ""
            found.append((base, item.level))
            found += [(f"{base}.{alias.name}" if base else alias.name, item.level) for alias in item.names]
    return found


def top_level_imports(tree: ast.Module) -> List[Tuple[str, int]]:
    return [found for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
            for found in imported_modules(node)]


def png_size(path: Path) -> Tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG file"
    return struct.unpack(">II", data[16:24])


# ---------------------------------------------------------------------------- the .ui file
@dataclass(frozen=True)
class Panel:
    """One module's GUI: its .ui file, widget code and module file, and what its .ui must hold."""

    name: str  # the module name: the .ui's top widget and class, ``MODULE_NAME`` in widget.py
    ui_file: Path
    widget_file: Path
    module_file: Path
    section_titles: FrozenSet[str]
    buttons: FrozenSet[str]
    panel_state_file: Path  # its Qt-free decisions (settings, rows, controller)
    unbound_fields: FrozenSet[str] = frozenset()  # parameter-node fields set by code, not by a widget
    section_files: Tuple[Path, ...] = ()  # further Qt files binding sections of the same .ui
    controller_files: Tuple[Path, ...] = ()  # further Qt-free files deciding for those sections

    @property
    def gui_files(self) -> Tuple[Path, ...]:
        # RunPanelBase (run_panel.py) serves both panels
        return (self.widget_file, *self.section_files, RUN_PANEL_FILE, self.module_file)


PANELS = (
    Panel("OrganGuidance", UI_FILE, WIDGET_FILE, MODULE_FILE, frozenset(SECTION_TITLES),
          frozenset({"applyButton", "cancelButton"}), PANEL_STATE_FILE),
    Panel("CRCSegmentation", CRC_UI_FILE, CRC_WIDGET_FILE, CRC_MODULE_FILE, frozenset(CRC_SECTION_TITLES),
          frozenset({"applyButton", "cancelButton", "exportButton"}), CRC_PANEL_STATE_FILE,
          frozenset(CRC_UNBOUND_FIELDS), (CRC_REFINEMENT_PANEL_FILE,), (CRC_REFINEMENT_CONTROLLER_FILE,)),
)
per_panel = pytest.mark.parametrize("panel", PANELS, ids=lambda p: p.name)


@per_panel
def test_ui_is_a_qmrmlwidget_with_unique_names_and_declared_custom_widgets(panel):
    root = ui_tree(panel.ui_file).getroot()
    assert root.find("widget").get("class") == "qMRMLWidget" and root.findtext("class") == panel.name
    names = [w.get("name") for w in root.iter("widget")] + [l.get("name") for l in root.iter("layout")]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"objectNames used twice: {duplicates}"
    assert all(names), "every widget and layout needs an objectName"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    undeclared = sorted(c for c in used if not c.startswith("Q") and c not in declared)
    assert not undeclared, f"classes used but not declared in <customwidgets>: {undeclared}"
    for custom in root.iter("customwidget"):
        assert custom.findtext("header") == f"{custom.findtext('class')}.h"


@per_panel
def test_ui_has_the_sections_and_controls_every_run_panel_needs(panel):
    widgets = ui_widgets(panel.ui_file)
    titles = {ui_property(w, "text").findtext("string") for w in widgets.values()
              if w.get("class") == "ctkCollapsibleButton"}
    assert titles == panel.section_titles
    by_class: Dict[str, Set[str]] = {}
    for name, widget in widgets.items():
        by_class.setdefault(widget.get("class"), set()).add(name)
    assert panel.buttons <= by_class["QPushButton"]
    assert by_class["QProgressBar"] == {"progressBar"} and "statusLabel" in by_class["QLabel"]
    output = widgets["outputSegmentationSelector"]
    assert [s.text for s in ui_property(output, "nodeTypes").iter("string")] == ["vtkMRMLSegmentationNode"]
    for flag in ("noneEnabled", "addEnabled", "renameEnabled"):
        assert ui_property(output, flag).findtext("bool") == "true", flag


@per_panel
def test_every_mrml_widget_receives_the_scene(panel):
    """A qMRML widget shows no nodes unless mrmlSceneChanged reaches its setMRMLScene."""
    root = ui_tree(panel.ui_file).getroot()
    connected = {
        c.findtext("receiver") for c in root.iter("connection")
        if c.findtext("sender") == panel.name and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    mrml_widgets = {name for name, w in ui_widgets(panel.ui_file).items() if w.get("class", "").startswith("qMRML")}
    assert mrml_widgets and mrml_widgets <= connected, f"not connected: {sorted(mrml_widgets - connected)}"


@pytest.mark.parametrize("panel,path", [(panel, path) for panel in PANELS for path in panel.gui_files],
                         ids=lambda value: value.name)
def test_every_ui_attribute_used_in_code_exists_in_the_ui_file(panel, path):
    missing = sorted(ui_attribute_uses(path) - set(ui_widgets(panel.ui_file)))
    assert not missing, f"{path.name} uses ui names that {panel.ui_file.name} lacks: {missing}"


@per_panel
def test_widget_code_uses_the_ui_file(panel):
    assert len(ui_attribute_uses(panel.widget_file)) >= 10  # the check above must not pass on an empty set
    text = panel.widget_file.read_text()
    assert f'MODULE_NAME = "{panel.name}"' in text and '"UI"' in text and "loadUI" in text


@per_panel
def test_slicer_parameter_names_are_wrapper_fields_and_every_field_has_a_widget(panel):
    fields = set(wrapper_fields(parse(panel.widget_file)))
    bound = {name.split(".")[0] for name in ui_parameter_names(panel.ui_file)}
    unknown = sorted(bound - fields)
    assert not unknown, f"SlicerParameterName without a parameter-node field: {unknown}"
    unbound = fields - bound
    assert unbound == panel.unbound_fields, f"parameter-node fields without a widget in {panel.ui_file.name}: {sorted(unbound)}"


@per_panel
def test_each_bound_widget_has_a_connector_for_its_field_type(panel):
    """Mirror of parameterNodeWrapper's GUI connectors: a wrong pairing fails only inside Slicer."""
    tree = parse(panel.widget_file)
    constants = module_constants(tree)
    fields = wrapper_fields(tree)
    widgets = ui_widgets(panel.ui_file)
    for parameter, object_name in ui_parameter_names(panel.ui_file).items():
        text = annotation_text(fields[parameter], constants)
        widget_class = widgets[object_name].get("class")
        if "vtkMRML" in text:
            expected = {"qMRMLNodeComboBox"}
        elif "pathlib.Path" in text or text == "Path":
            expected = {"ctkPathLineEdit"}
        elif text == "bool":
            expected = {"QCheckBox"}
        elif "float" in text:
            expected = {"ctkSliderWidget", "QDoubleSpinBox"}
            assert "WithinRange" in text, f"{parameter}: a bounded float keeps the widget and the engine in step"
        elif "str" in text:
            expected = {"QComboBox"}
            assert "Choice" in text, f"{parameter}: a QComboBox needs the Choice annotation"
        else:
            raise AssertionError(f"{parameter}: no known connector for {text}")
        assert widget_class in expected, f"{parameter} ({text}) is bound to a {widget_class}, expected {expected}"


def module_globals(tree: ast.Module) -> set:
    """Names a module defines at top level (constants, imports, functions, classes) plus builtins."""
    defined = set(module_constants(tree)) | set(dir(builtins))
    for node in tree.body:
        if isinstance(node, ast.Import):
            defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            defined |= {a.asname or a.name for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
    return defined


@per_panel
def test_wrapper_annotations_evaluate_on_python_3_9_and_resolve_in_module_globals(panel):
    """parameterNodeWrapper calls typing.get_type_hints in widget.py's globals: ``X | Y`` would fail on
    Slicer 5.8's Python 3.9, and every name must be a module global."""
    tree = parse(panel.widget_file)
    constants = module_constants(tree)
    defined = module_globals(tree)
    for name, field in wrapper_fields(tree).items():
        annotation = field.annotation
        if isinstance(annotation, ast.Name) and annotation.id in constants:
            annotation = constants[annotation.id]
        assert not any(isinstance(n, ast.BinOp) for n in ast.walk(annotation)), f"{name}: use Union/Optional"
        unknown = {n.id for n in ast.walk(annotation) if isinstance(n, ast.Name)} - defined
        assert not unknown, f"{name}: annotation uses names that are not module globals: {unknown}"

# ---------------------------------------------------------------------------- OrganGuidance parameter node
def test_widget_builds_settings_with_fields_the_engine_has():
    """Keyword arguments of the settings dataclasses in panel_state.py exist (every keyword, run or not)."""
    import dataclasses

    from OrganGuidanceLib.guidance import GuidanceParameters
    from OrganGuidanceLib.logic import OrganGuidanceSettings, OrganSourceChoice

    classes = {c.__name__: c for c in (GuidanceParameters, OrganGuidanceSettings, OrganSourceChoice)}
    seen = set()
    for node in ast.walk(parse(PANEL_STATE_FILE)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in classes:
            cls = classes[node.func.id]
            fields = {f.name for f in dataclasses.fields(cls)}
            unknown = {k.arg for k in node.keywords} - fields
            assert not unknown, f"{cls.__name__} has no fields {unknown}"
            assert not node.args, f"{cls.__name__}: pass fields by name"
            seen.add(cls.__name__)
    assert seen == set(classes)


def test_wrapper_defaults_and_ranges_match_the_engine():
    from OrganGuidanceLib.guidance import GuidanceParameters
    from OrganGuidanceLib.labels import DEFAULT_ORGAN_SET

    tree = parse(WIDGET_FILE)
    fields = wrapper_fields(tree)
    engine = GuidanceParameters()
    for parameter, engine_field in GUIDANCE_FIELDS.items():
        value = fields[parameter].value
        default = DEFAULT_ORGAN_SET if isinstance(value, ast.Name) and value.id == "DEFAULT_ORGAN_SET" \
            else ast.literal_eval(value)
        assert default == getattr(engine, engine_field), f"{parameter} default {default} != {engine_field}"
        for call in ast.walk(fields[parameter].annotation):
            if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "WithinRange":
                for bound in (ast.literal_eval(arg) for arg in call.args):
                    valid, reason = GuidanceParameters(**{engine_field: bound}).is_valid()
                    assert valid, f"{parameter}: the slider allows {bound}, which the engine rejects: {reason}"


def test_wrapper_choices_are_values_the_logic_accepts():
    from OrganGuidanceLib import choices, logic
    from OrganGuidanceLib.labels import ORGAN_SETS

    assert set(choices.PRIMARY_KINDS) <= set(logic.SOURCE_KINDS) - {"none"}
    assert set(choices.SECONDARY_KINDS) <= set(logic.SOURCE_KINDS)
    assert "none" in choices.SECONDARY_KINDS
    assert {"totalsegmentator", "word"} <= set(choices.CONVENTIONS)
    literal_tuples = {k for k, v in module_constants(parse(WIDGET_FILE)).items() if isinstance(v, ast.Tuple)}
    assert not literal_tuples, f"widget.py writes choices of its own: {literal_tuples}"
    wrapper_source = ast.unparse(wrapper_class(parse(WIDGET_FILE)))
    assert set(choices.DEVICES) == set(logic.DEVICES)
    for name in ("PRIMARY_KINDS", "SECONDARY_KINDS", "CONVENTIONS", "DEVICES"):
        assert f"Choice({name})" in wrapper_source, name  # the parameter node offers the registry's tuples
    assert "Choice(tuple(ORGAN_SETS))" in wrapper_source and ORGAN_SETS


# ---------------------------------------------------------------------------- Python 3.9, headless Lib, import order
@pytest.mark.parametrize("path", python_files(*(REPO_ROOT / m for m in MODULES)),
                         ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_module_sources_parse_with_python_3_9_grammar(path):
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path), feature_version=(3, 9))
    # ``X | Y`` in an annotation is only safe on 3.9 when annotations stay strings.
    annotations = [n.annotation for n in ast.walk(tree) if isinstance(n, (ast.arg, ast.AnnAssign)) and n.annotation]
    annotations += [n.returns for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and n.returns]
    uses_union_operator = any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr)
                              for a in annotations for n in ast.walk(a))
    if uses_union_operator:
        assert "from __future__ import annotations" in source, f"{path.name}: X | Y hints need the future import"


LIB_FILES = [p for m in MODULES for p in python_files(REPO_ROOT / m / f"{m}Lib") if p.name not in GUI_LIB_FILE_NAMES]


@pytest.mark.parametrize("path", LIB_FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_lib_stays_headless(path):
    """Only the Qt files (GUI_LIB_FILE_NAMES) may import Qt, CTK or Slicer's application-only Python modules."""
    for name, level in imported_modules(parse(path)):
        if level:
            continue
        bad = [g for g in GUI_IMPORTS if name == g or name.startswith(g + ".")]
        assert not bad, f"{path.relative_to(REPO_ROOT)} imports {name}"


def test_lib_file_list_is_not_empty():
    assert any(p.name == "install.py" for p in LIB_FILES) and any(p.name == "guidance.py" for p in LIB_FILES)


def test_module_file_imports_its_lib_lazily():
    """Slicer must list the module even when the Lib or its dependencies fail to import."""
    for path in (MODULE_FILE, REPO_ROOT / "CRCSegmentation" / "CRCSegmentation.py"):
        libs = [name for name, _ in top_level_imports(parse(path)) if name.split(".")[0].endswith("Lib")]
        assert not libs, f"{path.name} imports {libs} at load time"


def test_widget_imports_only_dependency_free_lib_modules_at_load_time():
    """The engine imports edt and cc3d; the widget (and what it imports) must load before they are installed."""
    def lib_imports(path: Path) -> set:
        found = set()
        for name, level in top_level_imports(parse(path)):
            if level or name.startswith("OrganGuidanceLib"):
                parts = [p for p in name.split(".") if p and p != "OrganGuidanceLib"]
                if parts:
                    found.add(parts[0])
        return found

    widget_imports = lib_imports(WIDGET_FILE)
    assert "run_panel" in widget_imports and widget_imports <= DEPENDENCY_FREE_LIB_MODULES | {"run_panel"}, widget_imports
    assert lib_imports(RUN_PANEL_FILE) <= DEPENDENCY_FREE_LIB_MODULES, lib_imports(RUN_PANEL_FILE)
    if not hasattr(sys, "stdlib_module_names"):
        pytest.skip("the standard-library check needs Python 3.10+ (sys.stdlib_module_names)")
    own = {"OrganGuidanceLib", "CRCSegmentationLib"}
    files = [OG_LIB / f"{module}.py" for module in sorted(DEPENDENCY_FREE_LIB_MODULES)] + [
        CRC_PANEL_STATE_FILE, CRC_REFINEMENT_CONTROLLER_FILE, CRC_CHOICES_FILE]
    for path in files:
        names = {n.split(".")[0] for n, level in top_level_imports(parse(path)) if not level}
        non_stdlib = sorted(n for n in names if n not in sys.stdlib_module_names and n != "__future__" and n not in own)
        assert not non_stdlib, f"{path.name} imports {non_stdlib} at load time"
        if path.name == "labels.py":
            continue  # it imports json_files and validation (numpy, which Slicer bundles): allowed, as before
        # Through each other only: the own modules they import at load time are dependency-free too.
        own_modules = {lib_module(name) for name, level in top_level_imports(parse(path))
                       if not level and name.split(".")[0] in own and "." in name}
        allowed = {f"OrganGuidanceLib.{m}" for m in DEPENDENCY_FREE_LIB_MODULES} | {
            "CRCSegmentationLib.choices", "CRCSegmentationLib.panel_state", "CRCSegmentationLib.refinement_controller"}
        assert own_modules <= allowed, f"{path.name} imports {sorted(own_modules - allowed)} at load time"


def lib_module(name: str) -> str:
    """``OrganGuidanceLib.run_controller.RunController`` -> ``OrganGuidanceLib.run_controller``."""
    return ".".join(name.split(".")[:2])


# ---------------------------------------------------------------------------- resources (CMake: test_installation.py)
@pytest.mark.parametrize("path", [REPO_ROOT / "Resources/Icons/SlicerCRC.png"]
                         + [REPO_ROOT / m / "Resources/Icons" / f"{m}.png" for m in MODULES],
                         ids=lambda p: p.name)
def test_icons_are_128_pixel_pngs(path):
    assert png_size(path) == (128, 128)


# ---------------------------------------------------------------------------- CRCSegmentation module
def test_crc_ui_has_its_own_controls():
    widgets = ui_widgets(CRC_UI_FILE)
    by_class: Dict[str, Set[str]] = {}
    for name, widget in widgets.items():
        by_class.setdefault(widget.get("class"), set()).add(name)
    assert by_class["qMRMLTableView"] == {"statisticsTableView"}
    assert {"modelComboBox", "deviceComboBox", "guidanceSourceComboBox"} <= by_class["QComboBox"]
    guidance = widgets["guidanceNodeSelector"]
    assert [s.text for s in ui_property(guidance, "nodeTypes").iter("string")] == ["vtkMRMLSegmentationNode"]


def test_crc_widget_builds_settings_with_fields_the_engine_has():
    import dataclasses

    from CRCSegmentationLib.core.segmentation import SegmentationParameters
    from CRCSegmentationLib.logic import CRCSegmentationSettings
    from OrganGuidanceLib.logic import OrganGuidanceSettings, OrganSourceChoice

    classes = {c.__name__: c for c in (SegmentationParameters, CRCSegmentationSettings, OrganGuidanceSettings, OrganSourceChoice)}
    seen = set()
    for node in ast.walk(parse(CRC_PANEL_STATE_FILE)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        preset = isinstance(func, ast.Attribute) and func.attr == "for_preset" and getattr(func.value, "id", "") in classes
        name = func.value.id if preset else getattr(func, "id", "")
        if name in classes:
            cls = classes[name]
            unknown = {k.arg for k in node.keywords if k.arg is not None} - {f.name for f in dataclasses.fields(cls)}
            assert not unknown, f"{cls.__name__} has no fields {unknown}"
            assert len(node.args) == (1 if preset else 0), f"{cls.__name__}: pass fields by name"
            seen.add(cls.__name__)
    assert seen == set(classes)


def test_crc_wrapper_defaults_and_ranges_match_the_engine():
    from CRCSegmentationLib.core.segmentation import SegmentationParameters

    fields = wrapper_fields(parse(CRC_WIDGET_FILE))
    engine = SegmentationParameters()
    for parameter, engine_field in SEGMENTATION_FIELDS.items():
        default = ast.literal_eval(fields[parameter].value)
        assert default == getattr(engine, engine_field), f"{parameter} default {default} != {engine_field}"
        for call in ast.walk(fields[parameter].annotation):
            if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "WithinRange":
                for bound in (ast.literal_eval(arg) for arg in call.args):
                    valid, reason = SegmentationParameters(**{engine_field: bound}).is_valid()
                    assert valid, f"{parameter}: the widget allows {bound}, which the engine rejects: {reason}"


def test_crc_spin_box_ranges_and_defaults_match_the_wrapper():
    fields = wrapper_fields(parse(CRC_WIDGET_FILE))
    widgets = ui_widgets(CRC_UI_FILE)
    for parameter, object_name in ui_parameter_names(CRC_UI_FILE).items():
        widget = widgets[object_name]
        if widget.get("class") != "QDoubleSpinBox":
            continue
        bounds = [ast.literal_eval(a) for call in ast.walk(fields[parameter].annotation)
                  if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "WithinRange" for a in call.args]
        ui_bounds = [float(ui_property(widget, p).findtext("double")) for p in ("minimum", "maximum")]
        assert ui_bounds == bounds, f"{object_name}: range {ui_bounds} != {bounds}"
        assert float(ui_property(widget, "value").findtext("double")) == ast.literal_eval(fields[parameter].value)


def test_crc_wrapper_choices_are_values_the_logic_accepts():
    from CRCSegmentationLib import choices, logic, mrml_points
    from CRCSegmentationLib.core import segmentation
    from CRCSegmentationLib.usam import bundle as usam_bundle
    from OrganGuidanceLib import choices as guidance_choices
    from OrganGuidanceLib import logic as guidance_logic

    assert set(choices.GUIDANCE_SOURCES) == set(logic.GUIDANCE_SOURCES)
    assert set(choices.ORGAN_SOURCES) <= set(guidance_logic.SOURCE_KINDS) - {"none"}
    assert choices.DEVICES is guidance_choices.DEVICES  # written once, in OrganGuidanceLib.choices
    assert set(choices.DEVICES) == set(segmentation.DEVICES) == set(guidance_logic.DEVICES)
    assert set(choices.CONVENTIONS) == {"totalsegmentator", "word"}
    assert set(choices.PRESETS) == set(segmentation.PRESETS)
    assert set(choices.POINT_ROLES) == set(mrml_points.POINT_ROLES)
    assert choices.USAM_KIND == usam_bundle.KIND
    wrapper = ast.unparse(wrapper_class(parse(CRC_WIDGET_FILE)))
    for name in ("GUIDANCE_SOURCES", "ORGAN_SOURCES", "CONVENTIONS", "MODEL_SOURCES", "DEVICES", "USAM_MODEL_SOURCES"):
        assert f"Choice({name})" in wrapper, name  # the parameter node offers the registry's tuples
    literal_tuples = {k for k, v in module_constants(parse(CRC_WIDGET_FILE)).items() if isinstance(v, ast.Tuple)}
    assert not literal_tuples, f"widget.py writes choices of its own: {literal_tuples}"


CRC_LOAD_TIME_MODULES = {  # what the CRC panel's files may import when Slicer loads the module
    "OrganGuidanceLib": {"run_panel", "run_controller", "install", "choices"},
    "CRCSegmentationLib": {"choices", "panel_state", "refinement_panel", "refinement_controller"},
}


@pytest.mark.parametrize("path", [CRC_WIDGET_FILE, CRC_REFINEMENT_PANEL_FILE, CRC_PANEL_STATE_FILE,
                                  CRC_REFINEMENT_CONTROLLER_FILE, CRC_CHOICES_FILE],
                         ids=lambda p: p.name)
def test_crc_panel_imports_no_engine_module_at_load_time(path):
    """The engine imports torch and nnU-Net; the panel's files must load before they are installed."""
    for name, level in top_level_imports(parse(path)):
        assert not level, f"{path.name}: relative import {name}"
        package, _, rest = name.partition(".")
        if package in CRC_LOAD_TIME_MODULES and rest:
            assert rest.split(".")[0] in CRC_LOAD_TIME_MODULES[package], f"{path.name} imports {name} at load time"


def test_crc_statistics_role_in_choices_matches_the_lib():
    from CRCSegmentationLib import choices, mrml

    assert choices.STATISTICS_REFERENCE_ROLE == mrml.STATISTICS_REFERENCE_ROLE


def test_crc_module_file_is_thin_and_acknowledges_its_sources():
    text = CRC_MODULE_FILE.read_text(encoding="utf-8")
    for name in ("AG-CRC", "TotalSegmentator", "nnU-Net"):
        assert name in text, name
    tree = parse(CRC_MODULE_FILE)
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes == ["CRCSegmentation", "CRCSegmentationWidget", "CRCSegmentationTest"]
    assert "CRCSegmentationPanel" in text and "onReload" in text


@pytest.mark.parametrize("module", MODULES)
def test_module_self_test_fails_when_its_pytest_suite_cannot_run(module):
    """Slicer's self-test must not pass on a suite that did not run (installed extension, no pytest, no files).

    Read from the source (the module file needs Slicer's application to run): each of the three
    missing-suite branches fails the test, and nothing in the method reports a skip as success.
    """
    tree = parse(REPO_ROOT / module / f"{module}.py")
    method = next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "test_pytest_suite")
    failures = [node for node in ast.walk(method) if isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute) and node.func.attr == "fail"]
    reasons = " ".join(ast.unparse(call.args[0]) for call in failures if call.args)
    for reason in ("no Testing folder", "pytest is not installed", "test files"):
        assert reason in reasons, (module, reason)
    assert not any(isinstance(node, ast.Return) for node in ast.walk(method)), "a branch returns without failing"
    assert "skipped" not in ast.unparse(method)


# ---------------------------------------------------------------------------- Qt binds, Python decides
@pytest.mark.parametrize("path", QT_FREE_PANEL_FILES, ids=lambda p: p.name)
def test_panel_decisions_need_no_application(path):
    """The controllers run under slicer-core: no Qt, no ``slicer.app``, no dialogs (they receive callables)."""
    source = path.read_text(encoding="utf-8")
    for name, _ in imported_modules(parse(path)):
        assert name.split(".")[0] not in ("qt", "ctk", "vtk"), f"{path.name} imports {name}"
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "slicer":
            assert node.attr == "util", f"{path.name} uses slicer.{node.attr}"
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and getattr(node.value.value, "id", "") == "slicer" and node.value.attr == "util"):
            assert node.attr == "pip_install", f"{path.name} uses slicer.util.{node.attr} (a dialog or the GUI)"
    assert "Display(" not in source  # errorDisplay, confirmOkCancelDisplay: the binding's


def test_the_install_flow_is_written_once():
    """Only the run controller checks Slicer's Python, asks and pip-installs; both panels and the refinement use it."""
    callers: Dict[str, Set[str]] = {}
    for path in LIB_FILES + [RUN_PANEL_FILE, WIDGET_FILE, CRC_WIDGET_FILE, CRC_REFINEMENT_PANEL_FILE]:
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in ("unsupported_python_message", "pip_install", "askInstall", "installTorch"):
                    callers.setdefault(name, set()).add(path.name)
    assert callers == {name: {"run_controller.py"} for name in callers} and len(callers) == 4, callers
    assert "self.run.installFlow.ensure(" in CRC_REFINEMENT_CONTROLLER_FILE.read_text()  # the refinement's install


PARAMETER_OBJECTS = {"p", "parameters", "parameterNode"}  # the names the panel files give the parameter node


def parameter_fields_read(path: Path) -> Set[str]:
    """``p.X`` / ``parameters.X`` / ``self.parameters.X`` / ``self.run.parameters.X`` in ``path``."""
    fields = set()
    for node in ast.walk(parse(path)):
        if not isinstance(node, ast.Attribute):
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id in PARAMETER_OBJECTS:
            fields.add(node.attr)
        elif isinstance(value, ast.Attribute) and value.attr == "parameters":
            fields.add(node.attr)
    return fields


@per_panel
def test_panel_state_reads_only_fields_of_the_parameter_node(panel):
    """The Qt-free files read the wrapper's fields by name; a field it lacks would fail only inside Slicer."""
    fields = set(wrapper_fields(parse(panel.widget_file)))
    node_methods = {"disconnectGui", "RemoveObserver", "AddObserver", "connectParametersToGui"}
    for path in (panel.panel_state_file, panel.widget_file, *panel.section_files, *panel.controller_files,
                 RUN_CONTROLLER_FILE):
        used = parameter_fields_read(path) - node_methods
        unknown = sorted(used - fields)
        assert not unknown, f"{path.name} reads {unknown}, which {panel.widget_file.name}'s parameter node lacks"
    assert len(parameter_fields_read(panel.panel_state_file)) >= 8  # the check above must not pass on nothing
