"""The refinement section's key map, prompt modes and widgets, checked against each other from the sources.

``choices.REFINEMENT_SHORTCUTS`` is bound by ``refinement_panel.py`` (Qt, not runnable here) to the
actions of ``refinement_controller.RefinementController`` (Qt-free, driven in test_panel_controllers.py):
so the key map, the controller's methods, the .ui's buttons and the README are read and compared here.
"""
from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List

from CRCSegmentationLib.choices import PROMPT_MODES, REFINEMENT_SHORTCUTS
from CRCSegmentationLib.refinement_controller import MODE_NAMES, PROMPT_NODE_CLASSES, SHAPE_MODES

REPO_ROOT = Path(__file__).resolve().parents[1]
CRC_LIB = REPO_ROOT / "CRCSegmentation" / "CRCSegmentationLib"
CHOICES_FILE = CRC_LIB / "choices.py"
CONTROLLER_FILE = CRC_LIB / "refinement_controller.py"
SECTION_FILE = CRC_LIB / "refinement_panel.py"
UI_FILE = REPO_ROOT / "CRCSegmentation" / "Resources" / "UI" / "CRCSegmentation.ui"
README = REPO_ROOT / "README.md"
KEY_FORMAT = re.compile(r"^(Ctrl\+)?(Shift\+)?(Alt\+)?([A-Z0-9]|F[0-9]{1,2})$")  # QKeySequence's portable text


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def shortcut_literal() -> ast.Dict:
    """The ``REFINEMENT_SHORTCUTS = {...}`` literal as written (a dict value would hide a repeated key)."""
    for node in parse(CHOICES_FILE).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "REFINEMENT_SHORTCUTS":
            assert isinstance(node.value, ast.Dict), "REFINEMENT_SHORTCUTS must be a dict literal"
            return node.value
    raise AssertionError("choices.py has no REFINEMENT_SHORTCUTS")


def controller_methods() -> List[str]:
    tree = parse(CONTROLLER_FILE)
    controller = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "RefinementController")
    return [n.name for n in controller.body if isinstance(n, ast.FunctionDef)]


def ui_widgets() -> Dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def ui_text(widget: ET.Element, name: str) -> str:
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop.findtext("string") or ""
    return ""


def test_every_key_is_written_once_and_is_a_key_sequence():
    literal = shortcut_literal()
    keys = [ast.literal_eval(k) for k in literal.keys]
    normalised = [k.upper().replace(" ", "") for k in keys]
    assert len(set(normalised)) == len(normalised), f"a key is bound twice: {keys}"
    assert keys == list(REFINEMENT_SHORTCUTS)
    bad = [k for k in keys if not KEY_FORMAT.match(k)]
    assert not bad, f"not QKeySequence text (e.g. 'P', 'Ctrl+Z'): {bad}"
    actions = list(REFINEMENT_SHORTCUTS.values())
    assert len(set(actions)) == len(actions), "an action has two keys"


def test_the_key_map_covers_every_prompt_mode_and_undo_redo():
    assert set(REFINEMENT_SHORTCUTS.values()) == set(PROMPT_MODES) | {"undo", "redo"}
    assert REFINEMENT_SHORTCUTS["Ctrl+Z"] == "undo" and REFINEMENT_SHORTCUTS["Ctrl+Y"] == "redo"


def test_each_action_exists_on_the_controller():
    """A mode goes to ``setMode``; any other action is a method of ``RefinementController`` named so."""
    methods = controller_methods()
    assert {"setMode", "action", "shortcutActions", "stopPlacing", "applyPrompt"} <= set(methods)
    missing = [a for a in REFINEMENT_SHORTCUTS.values() if a not in PROMPT_MODES and a not in methods]
    assert not missing, f"RefinementController lacks {missing}"


def test_each_prompt_mode_has_its_markups_type_and_name():
    assert set(PROMPT_NODE_CLASSES) == set(MODE_NAMES) == set(PROMPT_MODES)
    assert set(SHAPE_MODES) == set(PROMPT_MODES) - {"positive", "negative"}
    assert PROMPT_NODE_CLASSES["box"] == "vtkMRMLMarkupsROINode"
    assert {PROMPT_NODE_CLASSES[m] for m in ("positive", "negative")} == {"vtkMRMLMarkupsFiducialNode"}


def test_the_prompt_glue_places_the_same_markups_types():
    """``mrml_points`` creates the nodes the controller places into: their classes must agree."""
    from CRCSegmentationLib import mrml_points

    assert mrml_points.SHAPE_ROLES["box"][0] == PROMPT_NODE_CLASSES["box"]
    assert mrml_points.SHAPE_ROLES["lasso"][0] == PROMPT_NODE_CLASSES["lasso"]
    assert mrml_points.SHAPE_ROLES["scribble"][0] == mrml_points.SHAPE_ROLES["negative scribble"][0] \
        == PROMPT_NODE_CLASSES["scribble"]


def test_each_mode_has_a_button_in_the_ui_that_names_its_key():
    """``refinement_panel.MODE_BUTTONS`` reaches the buttons with ``getattr``: the static ui check cannot see them."""
    assert 'f"{mode}ModeButton"' in SECTION_FILE.read_text(encoding="utf-8"), "MODE_BUTTONS changed: update this test"
    widgets = ui_widgets()
    keys = {action: key for key, action in REFINEMENT_SHORTCUTS.items()}
    for mode in PROMPT_MODES:
        button = widgets.get(f"{mode}ModeButton")
        assert button is not None and button.get("class") == "QPushButton", f"{mode}ModeButton"
        assert ui_text(button, "text").endswith(f"({keys[mode]})"), ui_text(button, "text")
        assert ui_text(button, "toolTip"), f"{mode}ModeButton has no tooltip"
    for name, action in (("undoButton", "undo"), ("redoButton", "redo")):
        assert widgets[name].get("class") == "QPushButton" and keys[action] in ui_text(widgets[name], "toolTip")
    assert widgets["promptTo3dCheckBox"].get("class") == "QCheckBox"


def test_the_section_binds_every_shortcut_through_the_controller():
    """Qt binds, Python decides: one QShortcut per entry of ``controller.shortcutActions()``, nothing else bound."""
    source = SECTION_FILE.read_text(encoding="utf-8")
    assert "self.controller.shortcutActions().items()" in source and "qt.QShortcut(qt.QKeySequence(key)" in source
    literals = {n.value for n in ast.walk(parse(SECTION_FILE)) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    written = sorted(literals & set(REFINEMENT_SHORTCUTS))
    assert not written, f"refinement_panel.py writes keys of its own: {written}"
    assert "setShortcutsActive" in source and "setEnabled(active)" in source  # off while the section is closed


def test_the_readme_lists_every_key():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## For Slicer users"):text.index("## For console users")]
    missing = [key for key in REFINEMENT_SHORTCUTS if f"`{key}`" not in section]
    assert not missing, f'README "For Slicer users" does not list {missing}'
