"""The module panels' decisions, driven under slicer-core through whole runs (no Qt).

``OrganGuidanceController`` and ``CRCSegmentationController`` are what the panels' Apply,
Cancel, progress bar and status line are bound to; ``RefinementController`` is the
refinement section (prompt modes and Slicer's place mode, prompts, to 3D, undo / redo, shortcuts). Inputs are the abdominal phantom's CT and its organ label map
(imported, so no TotalSegmentator weights are needed) and the shipped ``demo_phantom``
model. The parameter objects have exactly the fields of the panels' parameter-node
wrappers, read from widget.py, so a field the controllers use and the wrapper lacks fails here.
"""
from __future__ import annotations

import ast
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import pytest
from scipy import ndimage

from CRCSegmentationLib.choices import DEFAULT_USAM_MODEL, PROMPT_MODES, REFINEMENT_SHORTCUTS
from CRCSegmentationLib.panel_state import (
    CRCSegmentationController,
    catalogueChoices,
    statisticsTable,
    visibleRows,
)
from CRCSegmentationLib.refinement_controller import (
    PROMPT_NODE_CLASSES,
    RefinementController,
    usamModelChoices,
    usamModelSource,
)
from OrganGuidanceLib import install
from OrganGuidanceLib.image import Image
from OrganGuidanceLib.labels import DEFAULT_ORGAN_SET
from OrganGuidanceLib.mrml import add_volume_node
from OrganGuidanceLib.panel_state import OrganGuidanceController, enabledGroups
from OrganGuidanceLib.panel_state import visibleRows as organ_guidance_rows
from OrganGuidanceLib.phantom import make_abdominal_phantom
from OrganGuidanceLib.run_controller import Dialogs

REPO_ROOT = Path(__file__).resolve().parents[1]
OG_WIDGET = REPO_ROOT / "OrganGuidance" / "OrganGuidanceLib" / "widget.py"
CRC_WIDGET = REPO_ROOT / "CRCSegmentation" / "CRCSegmentationLib" / "widget.py"
# A requirement that no environment has: the install flow must find it missing every time.
NOT_INSTALLED = install.Requirement("slicercrc_no_such_module", "slicercrc-no-such-package==0.0.1",
                                    "a package that does not exist", requires_python=">=3.10")


# ---------------------------------------------------------------------------- helpers
def parameters_like(widget_file: Path, **values: Any) -> Any:
    """An object with exactly the fields of ``widget_file``'s parameter-node wrapper, at its defaults."""
    tree = ast.parse(widget_file.read_text(encoding="utf-8"))
    wrapper = next(node for node in tree.body if isinstance(node, ast.ClassDef)
                   and any("parameterNodeWrapper" in ast.unparse(d) for d in node.decorator_list))
    defaults = {}
    for statement in wrapper.body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            value = statement.value
            if value is None:
                defaults[statement.target.id] = None  # nodes and paths: unset
            elif isinstance(value, ast.Name) and value.id == "DEFAULT_ORGAN_SET":
                defaults[statement.target.id] = DEFAULT_ORGAN_SET
            else:
                defaults[statement.target.id] = ast.literal_eval(value)
    unknown = set(values) - set(defaults)
    assert not unknown, f"not fields of {widget_file.name}'s parameter node: {unknown}"
    parameters = type("Parameters", (), {"__slots__": tuple(defaults)})()  # no attribute outside the wrapper's
    for name, value in {**defaults, **values}.items():
        setattr(parameters, name, value)
    return parameters


@dataclass
class User:
    """Answers the controller's questions and records every question, error and status change."""

    agrees: bool = False  # the answer to "install them now?"
    questions: List[str] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)
    overwrites: List[str] = field(default_factory=list)

    def dialogs(self) -> Dialogs:
        def ask(question: str) -> bool:
            self.questions.append(question)
            return self.agrees

        def overwrite(question: str, title: str) -> bool:
            self.overwrites.append(question)
            return True

        return Dialogs(askInstall=ask, confirmOverwrite=overwrite,
                       showError=lambda text, details: self.errors.append(text))


def watch(controller: Any) -> List[Tuple[str, Optional[float], bool]]:
    """(status, progress, running) at every change the controller announces, as the panel would show them."""
    seen: List[Tuple[str, Optional[float], bool]] = []
    controller.onChange = lambda: seen.append((controller.status, controller.progress, controller.running))
    return seen


def run_to_end(controller: Any, timeout: float = 300.0) -> List[Tuple[str, Optional[float]]]:
    """Poll as the panel's timer does (more often), recording the status and progress between polls."""
    polled = []
    deadline = time.monotonic() + timeout
    while controller.poll():
        polled.append((controller.status, controller.progress))
        assert time.monotonic() < deadline, "the run did not end"
        time.sleep(0.01)
    return polled


def scene_state(scene) -> Tuple[int, List[Tuple[str, List[str]]]]:
    """Node count and every segmentation's segment names."""
    segmentations = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLSegmentationNode")
        segmentation = node.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        segmentations.append((node.GetName(), names))
    return scene.GetNumberOfNodes(), segmentations


def segment_names(node) -> List[str]:
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


@pytest.fixture(scope="module")
def phantom():
    return make_abdominal_phantom()


@pytest.fixture
def labels_node(mrml_scene, phantom):
    # Added before the CT: the controller must still pick the CT, not this label map, as the input volume.
    return add_volume_node(mrml_scene, phantom.labels, "Phantom organs", labelmap=True)


@pytest.fixture
def ct_node(mrml_scene, phantom, labels_node):
    return add_volume_node(mrml_scene, phantom.ct, "Phantom CT")


def organ_guidance(scene, user: User, **values: Any) -> Tuple[OrganGuidanceController, Any]:
    controller = OrganGuidanceController(scene, dialogs=user.dialogs())
    parameters = parameters_like(OG_WIDGET, **values)
    controller.setParameters(parameters)
    return controller, parameters


def imported_organs(labels_node) -> dict:
    return dict(primaryKind="node", primaryNode=labels_node, primaryConvention="totalsegmentator")


# ---------------------------------------------------------------------------- Organ Guidance panel
def test_organ_guidance_run_from_apply_to_the_scene(mrml_scene, ct_node, labels_node):
    user = User()
    controller, parameters = organ_guidance(mrml_scene, user, **imported_organs(labels_node))
    assert parameters.inputVolume is ct_node  # the first CT, not the label map added before it
    state = controller.buttons()
    assert state.applyEnabled and state.applyReason == "" and not state.cancelEnabled
    assert "organs-of-interest" in state.applyTooltip
    seen = watch(controller)

    assert controller.apply()
    running = controller.buttons()
    assert controller.running and running.applyReason == ""
    assert not running.applyEnabled and running.cancelEnabled
    run_to_end(controller)

    assert not controller.running and controller.progress == 1.0 and not user.errors
    node = parameters.outputSegmentation  # the result is selected as the output
    assert node is controller.lastSegmentation and node.GetScene() is mrml_scene
    names = segment_names(node)
    assert {"Organs of interest", "Bowel wall"} <= set(names) and "colon" in " ".join(names).lower()
    assert controller.status.startswith("Done in") and f"{len(names)} segments in '{node.GetName()}'" in controller.status
    assert node.GetDisplayNode() is not None and node.GetDisplayNode().GetVisibility3D()
    statuses = [status for status, _, _ in seen]
    assert statuses[:2] == ["Preparing inputs...", "Starting..."] and statuses[-1] == controller.status
    assert [running for _, _, running in seen][1] is True and seen[-1][2] is False
    assert controller.buttons().applyEnabled  # ready for the next run


def test_organ_guidance_cancel_leaves_the_scene_as_it_was(mrml_scene, ct_node, labels_node):
    user = User()
    controller, parameters = organ_guidance(mrml_scene, user, **imported_organs(labels_node))
    before = scene_state(mrml_scene)
    assert controller.apply()
    controller.cancel()
    assert controller.status == "Cancelling..." and not controller.buttons().cancelEnabled  # pressed once
    controller.wait(timeout=60)
    assert controller.status == "Cancelled" and controller.progress == 0.0
    assert scene_state(mrml_scene) == before and parameters.outputSegmentation is None
    assert not user.errors


def test_organ_guidance_failed_start_shows_its_message(mrml_scene, phantom, labels_node):
    user = User()
    ct = phantom.ct
    scout = add_volume_node(mrml_scene, Image(ct.array[30:31], ct.spacing, ct.origin, ct.direction), "Scout slice")
    controller, parameters = organ_guidance(mrml_scene, user, **imported_organs(labels_node))
    assert parameters.inputVolume is scout
    before = scene_state(mrml_scene)
    assert not controller.apply() and not controller.running
    assert controller.status.startswith("Organ guidance could not start.") and "single slice" in controller.status
    assert len(user.errors) == 1 and "Scout slice" in user.errors[0]
    assert scene_state(mrml_scene) == before


def test_organ_guidance_mismatched_label_map_fails_with_its_message(mrml_scene, phantom, ct_node):
    user = User()
    labels = phantom.labels
    elsewhere = Image(labels.array, labels.spacing, tuple(np.asarray(labels.origin) + 1000.0), labels.direction)
    mismatched = add_volume_node(mrml_scene, elsewhere, "Organs of another case", labelmap=True)
    controller, parameters = organ_guidance(mrml_scene, user, **imported_organs(mismatched))
    before = scene_state(mrml_scene)
    if controller.apply():  # wherever the check is (prepare or compute), the message reaches the status
        run_to_end(controller)
    assert controller.status.startswith(("Organ guidance could not start.", "Organ guidance failed."))
    assert "Organs of another case: does not overlap" in controller.status, controller.status
    assert controller.lastError == controller.status and len(user.errors) == 1
    assert scene_state(mrml_scene) == before and parameters.outputSegmentation is None


def test_organ_guidance_ct_removed_during_the_run_is_reported(mrml_scene, ct_node, labels_node):
    user = User()
    controller, parameters = organ_guidance(mrml_scene, user, **imported_organs(labels_node))
    assert controller.apply()
    mrml_scene.RemoveNode(ct_node)  # the user deletes the CT while the worker runs
    before = scene_state(mrml_scene)
    run_to_end(controller)
    assert controller.status.startswith("The organ guidance result could not be added to the scene.")
    assert "removed from the scene during the run" in controller.status and len(user.errors) == 1
    assert scene_state(mrml_scene) == before


def test_apply_is_disabled_with_the_reason_for_missing_inputs(mrml_scene, phantom, labels_node):
    user = User()
    controller = OrganGuidanceController(mrml_scene, dialogs=user.dialogs())
    assert controller.buttons().applyReason == "No parameter node."
    parameters = parameters_like(OG_WIDGET, primaryKind="node", primaryConvention="totalsegmentator")
    controller.setParameters(parameters)  # the scene holds a label map only: no CT to pick
    state = controller.buttons()
    assert parameters.inputVolume is None
    assert not state.applyEnabled and state.applyReason == state.applyTooltip == "Select a CT volume."
    assert not controller.apply() and not user.errors and controller.status == "Select a CT volume."

    parameters.inputVolume = add_volume_node(mrml_scene, phantom.ct, "Phantom CT")
    state = controller.buttons()
    assert not state.applyEnabled and "first organ source: no label map or segmentation node" in state.applyReason
    parameters.primaryNode = labels_node
    assert controller.buttons().applyEnabled
    parameters.dilationMm = -1.0
    assert "OOI dilation -1" in controller.buttons().applyReason


def test_organ_guidance_rows_follow_the_sources():
    p = parameters_like(OG_WIDGET, primaryKind="file", secondaryKind="node", secondaryConvention="json")
    rows = organ_guidance_rows(p)
    assert rows["primaryFile"] and rows["primaryConvention"] and not rows["primaryNode"]
    assert not rows["primaryMappingFile"]  # the primary convention is TotalSegmentator's by default
    assert rows["secondaryNode"] and rows["secondaryMappingFile"]
    assert enabledGroups(p) == {"totalSegmentator": False, "bodyCrop": True}


# ---------------------------------------------------------------------------- the install flow
class NeedsAMissingPackage(OrganGuidanceController):
    """The Organ Guidance panel on a Slicer where one package of its run is missing."""

    def requirements(self) -> List[install.Requirement]:
        return [*super().requirements(), NOT_INSTALLED]


def test_missing_packages_are_offered_once_and_a_no_starts_nothing(mrml_scene, ct_node, labels_node):
    user = User(agrees=False)
    installed: List[Sequence[install.Requirement]] = []
    controller = NeedsAMissingPackage(mrml_scene, dialogs=user.dialogs(), installer=installed.append)
    controller.setParameters(parameters_like(OG_WIDGET, **imported_organs(labels_node)))
    before = scene_state(mrml_scene)
    assert controller.buttons().applyEnabled  # Apply offers the install, it is not blocked by it
    assert not controller.apply()
    assert len(user.questions) == 1 and not installed and not controller.running
    question = user.questions[0]
    assert question.startswith("Organ Guidance needs Python packages") and NOT_INSTALLED.pip_requirement in question
    assert "edt==" not in question  # only what is missing
    assert controller.status == "Not started: required Python packages are not installed."
    assert scene_state(mrml_scene) == before


def test_an_install_that_leaves_the_package_missing_says_so(mrml_scene, ct_node, labels_node):
    user = User(agrees=True)
    installed: List[Sequence[install.Requirement]] = []
    controller = NeedsAMissingPackage(mrml_scene, dialogs=user.dialogs(), installer=installed.append)
    controller.setParameters(parameters_like(OG_WIDGET, **imported_organs(labels_node)))
    assert not controller.apply()
    assert len(user.questions) == 1 and installed == [[NOT_INSTALLED]]  # installed once, only what was missing
    assert "still missing after installation" in controller.status and NOT_INSTALLED.pip_requirement in controller.status
    assert len(user.errors) == 1 and not controller.running


def test_too_old_a_python_gets_the_slicer_it_needs_instead_of_a_question(mrml_scene, ct_node, labels_node):
    user = User(agrees=True)
    installed: List[Sequence[install.Requirement]] = []
    controller = NeedsAMissingPackage(mrml_scene, dialogs=user.dialogs(), installer=installed.append,
                                      slicerVersion="5.8.1", pythonVersion=(3, 9, 10))
    controller.setParameters(parameters_like(OG_WIDGET, **imported_organs(labels_node)))
    assert not controller.apply()
    assert not user.questions and not installed
    assert controller.status.startswith("Not started: ") and "Slicer 5.10 or later" in controller.status
    assert "Slicer 5.8.1" in controller.status and len(user.errors) == 1


# ---------------------------------------------------------------------------- CRC Segmentation panel
def crc_segmentation(scene, user: User, **values: Any) -> Tuple[CRCSegmentationController, Any]:
    controller = CRCSegmentationController(scene, dialogs=user.dialogs())
    controller.modelNames = [name for name, _ in catalogueChoices()[0]]
    parameters = parameters_like(CRC_WIDGET, **values)
    controller.setParameters(parameters)
    return controller, parameters


def demo_run(labels_node) -> dict:
    """The shipped demonstration model on the phantom, organ guidance computed from the imported label map."""
    return dict(guidanceSource="compute", organSource="node", organNode=labels_node, organConvention="totalsegmentator",
                modelName="demo_phantom", device="cpu", fastPreset=True)


def test_crc_run_with_the_demo_model_from_apply_to_the_statistics(mrml_scene, ct_node, labels_node, tmp_path):
    user = User()
    choices, problem = catalogueChoices()
    assert "demo_phantom" in [name for name, _ in choices] and problem == ""
    controller, parameters = crc_segmentation(mrml_scene, user, **demo_run(labels_node))
    assert parameters.inputVolume is ct_node and controller.buttons().applyEnabled
    assert not controller.canExport()  # no result yet
    assert controller.apply()
    polled = run_to_end(controller)

    assert not user.errors, user.errors
    fractions = [fraction for status, fraction in polled if fraction is not None]
    assert any(0.0 < f < 1.0 for f in fractions) and fractions == sorted(fractions)  # progress seen, never backwards
    stages = {status for status, _ in polled}
    assert any(s.startswith("Running: organ guidance") for s in stages) and "Running: tumor model" in stages
    node = parameters.outputSegmentation
    assert node is controller.lastSegmentation and "Tumor" in segment_names(node)
    assert statisticsTable(node) is not None and statisticsTable(node).GetNumberOfRows() == 1
    assert controller.status.startswith("Done in") and "on cpu: 'Tumor' in" in controller.status
    assert controller.progress == 1.0

    parameters.exportFolder = tmp_path
    assert controller.canExport()
    written = controller.export()
    assert written and all(Path(path).is_file() for path in written) and controller.status.startswith("Exported: ")


def test_crc_cancel_during_the_model_leaves_the_scene_as_it_was(mrml_scene, ct_node, labels_node):
    user = User()
    controller, parameters = crc_segmentation(mrml_scene, user, **demo_run(labels_node))
    before = scene_state(mrml_scene)
    assert controller.apply()
    deadline = time.monotonic() + 120
    while controller.poll() and controller.status != "Running: tumor model":
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert controller.running, "the run ended before the model started"
    controller.cancel()
    run_to_end(controller)
    assert controller.status == "Cancelled" and not user.errors
    assert scene_state(mrml_scene) == before and parameters.outputSegmentation is None


def test_crc_failed_start_shows_its_message(mrml_scene, ct_node, labels_node):
    user = User()
    controller, parameters = crc_segmentation(mrml_scene, user, **{**demo_run(labels_node), "modelName": "no_such_model"})
    before = scene_state(mrml_scene)
    assert controller.buttons().applyEnabled  # the name is checked when the model opens
    assert not controller.apply()
    assert controller.status.startswith("Tumor segmentation could not start.") and "no_such_model" in controller.status
    assert len(user.errors) == 1 and scene_state(mrml_scene) == before


def test_crc_apply_reasons_and_rows(mrml_scene, ct_node):
    user = User()
    controller, parameters = crc_segmentation(mrml_scene, user, modelName="demo_phantom")
    assert parameters.guidanceSource == "scene" and parameters.guidanceNode is None  # no Organ Guidance result yet
    assert "no Organ Guidance segmentation selected" in controller.buttons().applyReason
    parameters.modelName = ""
    assert "choose a model" in controller.buttons().applyReason
    rows = visibleRows(parameters)
    assert rows["guidanceNode"] and not rows["organSource"] and rows["modelName"] and not rows["modelFolder"]


# ---------------------------------------------------------------------------- interactive refinement
def refinement(scene, logic: Any = None, user: Optional[User] = None, **values: Any):
    """The refinement section over a CRC panel whose parameters have ``values``; (section, run, parameters)."""
    run, parameters = crc_segmentation(scene, user or User(), modelName="demo_phantom", **values)
    return RefinementController(run, logic), run, parameters


def disc_logic(scene, radius: float = 8.0):
    from usam_stand_ins import DiscModel

    from CRCSegmentationLib.refinement_logic import PointRefinementLogic

    return PointRefinementLogic(scene, DiscModel(radius=radius))


def slice_ras(image: Image, i: float, j: float, k: float) -> np.ndarray:
    """RAS of the voxel (i, j, k) of ``image`` (column, row, slice)."""
    return (image.index_to_ras @ np.array([i, j, k, 1.0]))[:3]


def segment_voxels(segmentation, image: Image) -> np.ndarray:
    """The "Tumor" segment on ``image``'s grid, slice by slice (k x rows x cols, bool)."""
    from CRCSegmentationLib.mrml import tumor_segment_id
    from CRCSegmentationLib.mrml_points import read_segment_slices

    masks = read_segment_slices(segmentation, tumor_segment_id(segmentation), image, range(image.shape[0]))
    return np.stack([masks[k] for k in range(image.shape[0])])


def place_box(node, image: Image, k: int, centre_ij: Tuple[float, float], half: float) -> None:
    """An axial box of ``2 * half`` voxels around ``centre_ij`` on slice ``k``, as the ROI placement leaves it."""
    node.AddControlPoint(*slice_ras(image, centre_ij[0] - half, centre_ij[1] - half, k))
    node.AddControlPoint(*slice_ras(image, centre_ij[0] + half, centre_ij[1] + half, k))


def test_each_prompt_mode_starts_place_mode_for_its_markups_type(mrml_scene, ct_node):
    section, run, parameters = refinement(mrml_scene, disc_logic(mrml_scene))
    section.observePointLists(create=True)
    interaction, selection = section.interactionNode(), section.selectionNode()
    for mode in PROMPT_MODES:
        assert section.setMode(mode), section.status
        node = mrml_scene.GetNodeByID(selection.GetActivePlaceNodeID())
        assert node.GetClassName() == PROMPT_NODE_CLASSES[mode] == selection.GetActivePlaceNodeClassName()
        assert interaction.GetCurrentInteractionMode() == interaction.Place and section.placing() == mode
        # Points are placed click after click; a shape once, then Slicer leaves place mode and it is applied.
        assert interaction.GetPlaceModePersistence() == (mode in ("positive", "negative"))
        if mode in ("positive", "negative"):
            assert node is section.pointLists[mode]
        assert section.status == f"Placing: {section.modeName(mode)}."
    # A shape left empty (the user chose another mode before drawing it) does not stay in the scene.
    boxes = mrml_scene.GetNodesByClass("vtkMRMLMarkupsROINode").GetNumberOfItems()
    closed = mrml_scene.GetNodesByClass("vtkMRMLMarkupsClosedCurveNode").GetNumberOfItems()
    assert boxes == 0 and closed == 1  # the lasso being placed
    section.stopPlacing()
    assert section.placing() is None and interaction.GetCurrentInteractionMode() == interaction.ViewTransform
    assert mrml_scene.GetNodesByClass("vtkMRMLMarkupsClosedCurveNode").GetNumberOfItems() == 0
    # A scribble follows the last point mode: after N it removes (a red, negative curve).
    assert section.setMode("negative") and section.setMode("scribble")
    scribble = mrml_scene.GetNodeByID(selection.GetActivePlaceNodeID())
    assert section.modeName("scribble") == "negative scribble" and "(-)" in scribble.GetName()
    # The user leaving place mode (Escape, the toolbar) is seen: no mode is shown as active.
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)
    assert section.mode is None and section.placing() is None
    # A curve half drawn when another mode is chosen is abandoned: it leaves the scene, nothing is prompted.
    prompted: List[Any] = []
    section.onPromptPlaced = prompted.append
    assert section.setMode("lasso")
    section.pending.AddControlPoint(0.0, 0.0, 0.0)
    assert section.setMode("positive") and not prompted
    assert mrml_scene.GetNodesByClass("vtkMRMLMarkupsClosedCurveNode").GetNumberOfItems() == 0


def test_prompting_is_refused_with_the_reason(mrml_scene, phantom, labels_node):
    section, run, parameters = refinement(mrml_scene)
    assert parameters.inputVolume is None and section.promptReason() == "Select a CT volume (Inputs)."
    assert not section.setMode("positive") and section.status == "Select a CT volume (Inputs)."
    parameters.inputVolume = add_volume_node(mrml_scene, phantom.ct, "Phantom CT")
    parameters.usamModelName = ""
    assert section.promptReason().startswith("Choose a U-SAM model")
    parameters.usamModelSource = "file"
    assert section.promptReason().startswith("Choose a U-SAM model file") and not section.canPrompt
    parameters.usamCheckpoint = Path("/no/such/usam.pt")
    assert section.canPrompt  # the file is opened with the first prompt
    assert not section.applyPrompt() and "/no/such/usam.pt" in section.status and section.logic.segmenter is None


def test_model_choices_offer_the_catalogues_usam_models(tmp_path):
    choices, problem = usamModelChoices()
    assert problem == ""
    segmentation_models = [name for name, _ in catalogueChoices()[0]]
    assert not set(segmentation_models) & {name for name, _ in choices}  # each panel row offers its own kind
    if DEFAULT_USAM_MODEL not in [name for name, _ in choices]:
        pytest.skip(f"the shipped {DEFAULT_USAM_MODEL} is not in the catalogue yet")
    assert "not for clinical use" in dict(choices)[DEFAULT_USAM_MODEL]


def test_the_model_source_is_a_catalogue_name_a_file_or_a_bundle_folder(mrml_scene, ct_node, tmp_path):
    section, run, parameters = refinement(mrml_scene)
    section.chooseModel(["another_usam", DEFAULT_USAM_MODEL])
    assert parameters.usamModelName == DEFAULT_USAM_MODEL and usamModelSource(parameters) == DEFAULT_USAM_MODEL
    section.chooseModel(["another_usam"])  # a choice is kept
    assert parameters.usamModelName == DEFAULT_USAM_MODEL
    parameters.usamModelSource = "file"
    parameters.usamCheckpoint = tmp_path / "usam.pt"
    assert usamModelSource(parameters) == str(tmp_path / "usam.pt")
    parameters.usamCheckpoint = tmp_path / "bundle" / "crcseg_model.json"  # a bundle is chosen by its metadata
    assert usamModelSource(parameters) == str(tmp_path / "bundle")


def test_a_box_is_applied_when_its_placement_ends_and_undo_redo_follow(mrml_scene, phantom, ct_node):
    section, run, parameters = refinement(mrml_scene, disc_logic(mrml_scene), promptTo3d=False)
    section.observePointLists(create=True)
    assert not section.canUndo and not section.canRedo
    ct = phantom.ct
    k = ct.shape[0] // 2
    assert section.setMode("box")
    box = section.pending
    place_box(box, ct, k, (64.0, 64.0), 6.0)
    assert parameters.outputSegmentation is None  # nothing runs while the box is drawn
    interaction = section.interactionNode()
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)  # Slicer ends a single placement so
    assert section.status == f"Prompt: slices {k} replaced.", section.status
    assert section.mode is None and box.GetScene() is mrml_scene  # the box stays: later points on k join it
    segmentation = parameters.outputSegmentation
    after = segment_voxels(segmentation, ct)
    assert after[k].any() and not np.delete(after, k, axis=0).any()  # that slice only
    rows, cols = np.nonzero(after[k])
    assert abs(cols.mean() - 64) <= 1.5 and abs(rows.mean() - 64) <= 1.5  # the box's place

    assert section.canUndo and not section.canRedo
    assert REFINEMENT_SHORTCUTS["Ctrl+Z"] == "undo"
    section.shortcutActions()["Ctrl+Z"]()
    assert section.status == "Undone." and not segment_voxels(segmentation, ct).any()
    assert section.canRedo and not section.canUndo
    section.shortcutActions()["Ctrl+Y"]()
    assert section.status == "Redone." and np.array_equal(segment_voxels(segmentation, ct), after)
    assert not section.redo() and section.status == "Nothing to redo."


def test_a_point_prompts_to_3d_in_the_worker_and_undo_restores_every_voxel(mrml_scene, phantom, ct_node):
    section, run, parameters = refinement(mrml_scene, disc_logic(mrml_scene), propagationMm=10.0)
    assert parameters.promptTo3d  # one prompt to 3D is the default
    placed: List[Any] = []
    section.onPromptPlaced = placed.append  # the Qt binding defers the prompt until the click is over
    section.observePointLists(create=True)
    ct = phantom.ct
    k = ct.shape[0] // 2
    first = section.pointLists["positive"]
    assert section.setMode("positive")
    first.AddControlPoint(*slice_ras(ct, 40.0, 40.0, k))
    assert placed == [first]
    assert section.applyPrompt(first) and run.running  # in the worker, with progress and Cancel
    assert not section.canPrompt and not section.canUndo and not section.applyPrompt(first)
    run_to_end(run)
    assert run.status == "Prompt in 3D done." and section.status.startswith("Prompt in 3D: slices ")
    segmentation = parameters.outputSegmentation
    once = segment_voxels(segmentation, ct)
    changed = [int(s) for s in np.nonzero(once.any(axis=(1, 2)))[0]]
    assert k in changed and len(changed) > 1, changed  # carried up and down from one click

    # A second click (2D this time) on top of the first result, then undo it: every voxel as before.
    parameters.promptTo3d = False
    first.AddControlPoint(*slice_ras(ct, 90.0, 90.0, k))
    assert section.applyPrompt(first) and not run.running
    twice = segment_voxels(segmentation, ct)
    assert twice[k].sum() > once[k].sum() and np.array_equal(np.delete(twice, k, 0), np.delete(once, k, 0))
    assert section.undo() and np.array_equal(segment_voxels(segmentation, ct), once)
    assert section.undo() and not segment_voxels(segmentation, ct).any()
    assert section.redo() and section.redo() and np.array_equal(segment_voxels(segmentation, ct), twice)

    section.clearPrompts()
    assert first.GetNumberOfControlPoints() == 0 and np.array_equal(segment_voxels(segmentation, ct), twice)
    section.sceneClosed()
    assert not section.canUndo and not section.canRedo and section.pointLists == {}


def test_shortcuts_map_to_the_controllers_actions(mrml_scene, ct_node):
    section, run, parameters = refinement(mrml_scene, disc_logic(mrml_scene))
    actions = section.shortcutActions()
    assert set(actions) == set(REFINEMENT_SHORTCUTS) and all(callable(a) for a in actions.values())
    for key, action in REFINEMENT_SHORTCUTS.items():
        if action in PROMPT_MODES:
            actions[key]()
            assert section.placing() == action, key
    actions["Ctrl+Z"]()
    assert section.status == "Nothing to undo."
    with pytest.raises(KeyError, match="not a prompt mode"):
        section.action("erase")


class RefinementNeedsAMissingPackage(RefinementController):
    def requirements(self) -> List[install.Requirement]:
        return [*super().requirements(), NOT_INSTALLED]


def test_refinement_offers_missing_packages_through_the_same_flow(mrml_scene, ct_node):
    user = User(agrees=False)
    installed: List[Sequence[install.Requirement]] = []
    run = CRCSegmentationController(mrml_scene, dialogs=user.dialogs(), installer=installed.append)
    run.setParameters(parameters_like(CRC_WIDGET, modelName="demo_phantom", usamModelName=DEFAULT_USAM_MODEL))
    section = RefinementNeedsAMissingPackage(run)
    assert not section.applyPrompt() and section.logic is None  # nothing loaded
    assert len(user.questions) == 1 and user.questions[0].startswith("Point refinement needs Python packages")
    assert section.status == "Not started: required Python packages are not installed." and not installed


def test_the_shipped_model_is_loaded_by_name_and_prompts_the_phantoms_tumor(mrml_scene):
    """The path of a fresh install: the catalogue's demonstration model, three clicks on the tumor, to 3D."""
    if DEFAULT_USAM_MODEL not in [name for name, _ in usamModelChoices()[0]]:
        pytest.skip(f"the shipped {DEFAULT_USAM_MODEL} is not in the catalogue yet")
    from CRCTraining.data.phantoms_ct import make_phantom_case

    case = make_phantom_case(0, seed=20260)  # not a training seed
    ct_node = add_volume_node(mrml_scene, case.ct, "Phantom CT")
    section, run, parameters = refinement(mrml_scene, inputVolume=ct_node, device="cpu")
    section.chooseModel([name for name, _ in usamModelChoices()[0]])
    assert parameters.usamModelName == DEFAULT_USAM_MODEL and section.canPrompt
    tumor = case.tumor.array > 0
    k = int(np.argmax(tumor.sum(axis=(1, 2))))
    depth = ndimage.distance_transform_edt(tumor[k])
    rows, cols = np.nonzero(depth >= 0.5 * depth.max())  # well inside, as a user clicks
    section.onPromptPlaced = lambda node: None  # the three clicks are applied together below
    assert section.setMode("positive")
    points = section.pointLists["positive"]
    for n in np.linspace(0, len(rows) - 1, 3).astype(int):  # three clicks inside the tumor
        points.AddControlPoint(*slice_ras(case.ct, float(cols[n]), float(rows[n]), k))
    assert section.applyPrompt(points) and run.running
    run_to_end(run)
    assert section.logic.segmenter is not None and section.status.startswith("Prompt in 3D: slices "), section.status
    mask = segment_voxels(parameters.outputSegmentation, case.ct)
    dice = 2 * (mask & tumor).sum() / (mask.sum() + tumor.sum())
    print(f"\nshipped {DEFAULT_USAM_MODEL} through the panel: 3 clicks on slice {k}, to 3D: Dice {dice:.3f}")
    assert dice >= 0.6, dice


def test_a_catalogue_usam_model_is_offered_and_loaded_by_name(mrml_scene, phantom, ct_node, tmp_path, monkeypatch):
    """Catalogue name -> bundle -> network, through the section (random weights: the path, not the quality)."""
    import json

    import torch

    from CRCSegmentationLib.networks.usam import USAM, USAMConfig
    from CRCSegmentationLib.usam.bundle import write_usam_bundle

    torch.manual_seed(0)
    write_usam_bundle(tmp_path / "Models" / "tiny_usam", USAM(USAMConfig.preset("small")), "tiny_usam", "0.1.0",
                      "A random U-SAM for the panel test.", demonstration=True)
    catalogue = tmp_path / "models.json"
    catalogue.write_text(json.dumps({"models": [
        {"name": "tiny_usam", "version": "0.1.0", "path": "Models/tiny_usam", "input_channels": ["CT"],
         "kind": "usam", "description": "A random U-SAM.", "demonstration": True},
    ]}), encoding="utf-8")
    monkeypatch.setenv("SLICERCRC_MODEL_CATALOGUE", str(catalogue))
    choices, problem = usamModelChoices()
    assert problem == "" and [name for name, _ in choices] == ["tiny_usam"] and catalogueChoices()[0] == []
    assert "not for clinical use" in choices[0][1]

    section, run, parameters = refinement(mrml_scene, promptTo3d=False, device="cpu")
    section.chooseModel(["tiny_usam"])
    assert parameters.usamModelName == "tiny_usam"
    section.observePointLists(create=True)
    ct = phantom.ct
    section.pointLists["positive"].AddControlPoint(*slice_ras(ct, 64.0, 64.0, ct.shape[0] // 2))
    assert section.logic is not None and section.logic.segmenter is not None  # loaded on the first prompt
    assert section.status.startswith("Prompt: "), section.status
