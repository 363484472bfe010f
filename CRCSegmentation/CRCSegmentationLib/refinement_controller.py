"""The interactive-refinement section of the CRC Segmentation panel, without Qt (``RefinementController``).

Prompt modes (``choices.PROMPT_MODES``) start Slicer's place mode for one markups type: positive and
negative points go to the green and red point lists, a box is a markups ROI, a scribble an open curve
and a lasso a closed curve (``mrml_points`` turns them into U-SAM prompts). A placed point is applied
at once; a box or curve when its placement ends. Each prompt refines the "Tumor" segment on its slice
and, with "to 3D" on (the default), carries it up and down the volume; undo and redo step through every
change (``refinement_logic.PointRefinementLogic``). ``refinement_panel.py`` binds this to the .ui and to
keyboard shortcuts (``choices.REFINEMENT_SHORTCUTS``); Testing/test_panel_controllers.py drives it under
slicer-core. Nothing of the engine is imported at the top: it needs PyTorch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from CRCSegmentationLib.choices import DEFAULT_USAM_MODEL, POINT_ROLES, PROMPT_MODES, REFINEMENT_SHORTCUTS, USAM_KIND
from OrganGuidanceLib import install
from OrganGuidanceLib.run_controller import RunController, pathText
from OrganGuidanceLib.run_controller import tr as _

# The markups type each prompt mode places (Slicer's place mode for that class).
PROMPT_NODE_CLASSES = {
    "positive": "vtkMRMLMarkupsFiducialNode",
    "negative": "vtkMRMLMarkupsFiducialNode",
    "box": "vtkMRMLMarkupsROINode",
    "scribble": "vtkMRMLMarkupsCurveNode",
    "lasso": "vtkMRMLMarkupsClosedCurveNode",
}
SHAPE_MODES = ("box", "scribble", "lasso")  # one node per shape, applied when its placement ends
INTERACTION_NODE_ID = "vtkMRMLInteractionNodeSingleton"  # the application's mouse mode (place / view)
SELECTION_NODE_ID = "vtkMRMLSelectionNodeSingleton"  # which markups node a click places into
BUNDLE_METADATA_FILE = "crcseg_model.json"  # choosing it in the file dialog means its bundle folder
MODE_NAMES = {
    "positive": _("positive point"), "negative": _("negative point"), "box": _("box"),
    "scribble": _("scribble"), "lasso": _("lasso"),
}


def refinementSummary(action: str, result: Any) -> str:
    """What one prompt or propagation changed, for the section's status line."""
    slices = list(getattr(result, "slice_indices", []) or [])
    text = _("{action}: slices {slices} replaced.").format(action=action, slices=", ".join(str(k) for k in slices)) \
        if slices else _("{action}: nothing changed.").format(action=action)
    ignored = getattr(result, "ignored_points", None)
    if ignored is not None and len(ignored):
        text += " " + _("{count} point(s) on other slices were not used.").format(count=len(ignored))
    reasons = getattr(result, "stop_reasons", None) or {}
    if reasons:
        text += " " + "; ".join(f"{side}: {why}" for side, why in sorted(reasons.items()))
    return text


def usamModelChoices() -> Tuple[List[Tuple[str, str]], str]:
    """(name, description) of the catalogue's U-SAM models, and "" or why the catalogue is unavailable."""
    try:
        from CRCSegmentationLib.models.catalogue import list_models

        entries = [entry for entry in list_models() if entry.extra.get("kind") == USAM_KIND]
    except Exception as error:  # the file choice still works
        return [], _("Model catalogue unavailable: {error}").format(error=error)
    choices = []
    for entry in entries:
        description = entry.description
        if entry.demonstration:
            description = f"{description} (demonstration model, not for clinical use)".strip()
        choices.append((entry.name, description))
    return choices, ""


def usamModelSource(parameters: Any) -> str:
    """What ``PointRefinementLogic.load_model`` opens: a catalogue name, a checkpoint file or a bundle folder."""
    p = parameters
    if p.usamModelSource == "catalogue":
        return p.usamModelName or ""
    path = pathText(p.usamCheckpoint)
    return str(Path(path).parent) if path and Path(path).name == BUNDLE_METADATA_FILE else path


def refinementRows(parameters: Any) -> Dict[str, bool]:
    """Which model rows of the section are shown, by the parameter they edit."""
    catalogue = parameters.usamModelSource == "catalogue"
    return {"usamModelName": catalogue, "usamCheckpoint": not catalogue}


def _singleton(scene, className: str, nodeId: str) -> Any:
    """The application's interaction or selection node; created in a bare scene (slicer-core, tests)."""
    node = scene.GetNodeByID(nodeId)
    if node is None:
        node = scene.CreateNodeByClass(className)
        node.UnRegister(None)  # the factory's reference: Python holds its own
        node.SetSingletonTag("Singleton")
        node = scene.AddNode(node)
    return node


class RefinementController:
    """The refinement section: prompt modes, "to 3D", undo / redo, the U-SAM model, what its buttons allow.

    ``run`` is the panel's ``CRCSegmentationController`` (parameters, install flow, worker, dialogs).
    ``logic`` (a ``PointRefinementLogic`` with its model set) may be given; otherwise it is created on
    first use and loads the parameter node's U-SAM model (catalogue name or file), after the install flow.
    """

    who = _("Point refinement")

    def __init__(self, run: RunController, logic: Any = None) -> None:
        self.run = run
        self.logic = logic
        self._givenModel = logic is not None and logic.segmenter is not None  # never replaced by a load
        self._loadedModel: Tuple[str, str] = ("", "")  # (source, device) of the loaded model
        self.mode: Optional[str] = None  # the prompt mode being placed, None when not placing
        self.scribblePositive = True  # a scribble follows the last point mode chosen: P then S adds, N then S removes
        self.pointLists: Dict[str, Any] = {}
        self.pending: Any = None  # the box or curve being placed (applied when its placement ends)
        self._observers: List[Tuple[Any, int]] = []
        self.status = ""
        self.onChange: Callable[[], None] = lambda: None
        # Called with the markups node of a prompt just placed; the Qt binding defers it until the
        # markups interaction is over (a refinement inside the event would fight it).
        self.onPromptPlaced: Callable[[Any], None] = self.applyPrompt

    # ------------------------------------------------------------------ state
    def setStatus(self, text: str) -> None:
        self.status = text
        self.onChange()

    def _logicFlag(self, name: str) -> bool:
        return self.logic is not None and bool(getattr(self.logic, name)) and not self.run.running

    @property
    def canUndo(self) -> bool:
        return self._logicFlag("can_undo")

    @property
    def canRedo(self) -> bool:
        return self._logicFlag("can_redo")

    @property
    def canPropagate(self) -> bool:
        return self.logic is not None and self.logic.last_slice is not None and not self.run.running

    def promptReason(self) -> str:
        """Why prompts cannot be placed now ("" when they can); the mode buttons' tooltip when disabled."""
        p = self.run.parameters
        if p is None:
            return _("No parameter node.")
        if self.run.running:
            return _("Wait for the running computation to finish (or cancel it).")
        if p.inputVolume is None:
            return _("Select a CT volume (Inputs).")
        if self._givenModel:
            return ""
        if p.usamModelSource == "catalogue" and not p.usamModelName:
            return _("Choose a U-SAM model: the catalogue offers none; choose a checkpoint file instead.")
        if p.usamModelSource == "file" and not pathText(p.usamCheckpoint):
            return _("Choose a U-SAM model file (a .pt checkpoint or a bundle's crcseg_model.json).")
        return ""

    @property
    def canPrompt(self) -> bool:
        return self.promptReason() == ""

    # ------------------------------------------------------------------ keyboard shortcuts
    def action(self, name: str) -> Callable[[], Any]:
        """The callable a shortcut's action name stands for: a prompt mode, or a method of this class."""
        if name in PROMPT_MODES:
            return lambda: self.setMode(name)
        if name in ("undo", "redo"):
            return getattr(self, name)
        raise KeyError(f"refinement shortcut action {name!r}: not a prompt mode, undo or redo")

    def shortcutActions(self) -> Dict[str, Callable[[], Any]]:
        """Key sequence -> callable, for every entry of ``choices.REFINEMENT_SHORTCUTS``."""
        return {key: self.action(name) for key, name in REFINEMENT_SHORTCUTS.items()}

    # ------------------------------------------------------------------ place modes
    def interactionNode(self) -> Any:
        return _singleton(self.run.scene, "vtkMRMLInteractionNode", INTERACTION_NODE_ID)

    def selectionNode(self) -> Any:
        return _singleton(self.run.scene, "vtkMRMLSelectionNode", SELECTION_NODE_ID)

    def placing(self) -> Optional[str]:
        """The prompt mode Slicer is placing for now (None after the user left place mode or chose another node)."""
        if self.mode is None:
            return None
        interaction = self.interactionNode()
        target = self.pending if self.mode in SHAPE_MODES else self.pointLists.get(self.mode)
        if interaction.GetCurrentInteractionMode() != interaction.Place or target is None:
            return None
        return self.mode if self.selectionNode().GetActivePlaceNodeID() == target.GetID() else None

    def setMode(self, mode: str) -> bool:
        """Start placing ``mode`` prompts (Slicer's place mode on the matching markups node); True when it started."""
        if mode not in PROMPT_MODES:
            raise KeyError(f"prompt mode {mode!r}: not one of {PROMPT_MODES}")
        reason = self.promptReason()
        if reason:
            self.setStatus(reason)
            return False
        try:
            node = self._promptNode(mode)
        except Exception as error:  # the engine (mrml_points) is not installed yet
            self.setStatus(_("Prompts unavailable: {error}").format(error=error))
            return False
        self._dropPending()
        if not self._observers:  # the point lists were never looked for: observe place mode now
            self.observePointLists(create=True)
        if mode in ("positive", "negative"):
            self.scribblePositive = mode == "positive"
        else:
            self.pending = node
        self.mode = mode
        selection, interaction = self.selectionNode(), self.interactionNode()
        selection.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selection.SetActivePlaceNodeID(node.GetID())
        # Points: click after click; a shape: one, then Slicer leaves place mode and the shape is applied.
        interaction.SetPlaceModePersistence(0 if mode in SHAPE_MODES else 1)
        interaction.SetCurrentInteractionMode(interaction.Place)
        self.setStatus(_("Placing: {mode}.").format(mode=self.modeName(mode)))
        return True

    def modeName(self, mode: str) -> str:
        if mode == "scribble":
            return _("positive scribble") if self.scribblePositive else _("negative scribble")
        return MODE_NAMES[mode]

    def stopPlacing(self) -> None:
        """Leave place mode; a box or curve being drawn is removed."""
        self._dropPending()
        self.mode = None
        interaction = self.interactionNode()
        if interaction.GetCurrentInteractionMode() == interaction.Place:
            interaction.SetCurrentInteractionMode(interaction.ViewTransform)
        self.onChange()

    def _promptNode(self, mode: str) -> Any:
        """The (observed) point list of a point mode, or a new box / curve node (``mrml_points.new_prompt_node``)."""
        from CRCSegmentationLib.mrml_points import new_prompt_node

        if mode in POINT_ROLES:
            if self.pointLists.get(mode) is None:
                self.observePointLists(create=True)
            return self.pointLists[mode]
        positive = self.scribblePositive if mode == "scribble" else True
        return new_prompt_node(self.run.scene, mode, positive)

    def _dropPending(self) -> None:
        """Remove the shape being placed: the user chose another mode or stopped before finishing it."""
        node, self.pending = self.pending, None
        if node is not None and node.GetScene() is not None:
            node.GetScene().RemoveNode(node)

    def _onInteractionModeChanged(self, caller: Any = None, event: Any = None) -> None:
        """Slicer left place mode: a finished box or curve becomes a prompt; the mode buttons follow."""
        interaction = self.interactionNode()
        if interaction.GetCurrentInteractionMode() == interaction.Place:
            return
        node = self.pending
        self.mode = None
        if node is not None and node.GetScene() is not None and node.GetNumberOfDefinedControlPoints() > 0:
            self.pending = None  # finished: it stays in the scene as a prompt of its slice
            self.onPromptPlaced(node)
        else:
            self._dropPending()  # left before anything was drawn
        self.onChange()

    # ------------------------------------------------------------------ prompt nodes
    def observePointLists(self, create: bool) -> None:
        """Find (or create) the green and red point lists; observe them and Slicer's place mode."""
        try:
            from CRCSegmentationLib.mrml_points import point_list_node
        except Exception as error:  # engine not installed yet: the section says so
            self.setStatus(_("Point refinement unavailable: {error}").format(error=error))
            return
        self.removeObservers()
        for role in POINT_ROLES:
            node = point_list_node(self.run.scene, role, create=create)
            self.pointLists[role] = node
            if node is not None:
                tag = node.AddObserver(node.PointPositionDefinedEvent,
                                       lambda caller, event: self.onPromptPlaced(caller))
                self._observers.append((node, tag))
        interaction = self.interactionNode()
        tag = interaction.AddObserver(interaction.InteractionModeChangedEvent, self._onInteractionModeChanged)
        self._observers.append((interaction, tag))
        self.onChange()

    def removeObservers(self) -> None:
        for node, tag in self._observers:
            node.RemoveObserver(tag)
        self._observers = []

    def promptNodes(self, last: Any = None) -> List[Any]:
        """Every prompt node of the scene (points, boxes, curves), ``last`` (the one just placed) at the end:
        the prompt is gathered on its slice."""
        from CRCSegmentationLib.mrml_points import prompt_nodes

        return prompt_nodes(self.run.scene, last=last)

    def clearPrompts(self) -> None:
        """Remove all points, boxes and curves (the segment stays as it is)."""
        self.stopPlacing()
        for node in self.pointLists.values():
            if node is not None:
                node.RemoveAllControlPoints()
        try:
            from CRCSegmentationLib.mrml_points import remove_shape_nodes
        except Exception:  # engine not installed: no shape was placed either
            return
        remove_shape_nodes(self.run.scene)
        self.onChange()

    # ------------------------------------------------------------------ model
    def chooseModel(self, offered: List[str]) -> None:
        """When no U-SAM model is chosen yet: the shipped demonstration model, else the first one offered."""
        p = self.run.parameters
        if p is not None and not p.usamModelName and offered:
            p.usamModelName = DEFAULT_USAM_MODEL if DEFAULT_USAM_MODEL in offered else offered[0]

    def requirements(self) -> List[install.Requirement]:
        """The packages U-SAM refinement needs (the panel's run may need others)."""
        return install.requirements(features=[install.REFINEMENT])

    def ensureLogic(self) -> Any:
        """The refinement logic with the chosen U-SAM model loaded (reloaded when it or the device changes).

        None when the packages are missing and not installed; ``InputError`` / ``ModelError`` when the
        model cannot be opened.
        """
        if not self.run.installFlow.ensure(self.requirements(), self.who):
            self.setStatus(self.run.status)
            return None
        if self.logic is None:
            from CRCSegmentationLib.refinement_logic import PointRefinementLogic

            self.logic = PointRefinementLogic(self.run.scene)
        if self._givenModel:
            return self.logic
        p = self.run.parameters
        wanted = (usamModelSource(p), p.device)
        if self.logic.segmenter is None or wanted != self._loadedModel:
            with self.run.dialogs.busy():
                self.logic.load_model(wanted[0], p.device)
            self._loadedModel = wanted
        return self.logic

    # ------------------------------------------------------------------ actions
    def _attempt(self, action: str, work: Callable[[Any], Any]) -> Any:
        """``work(logic)`` on the main thread; input and model errors go to the status line, others are reported."""
        from CRCSegmentationLib.core.errors import ModelError
        from OrganGuidanceLib.validation import InputError

        try:
            logic = self.ensureLogic()
            if logic is None:
                return None
            with self.run.dialogs.busy():
                return work(logic)
        except (InputError, ModelError) as error:
            self.setStatus(str(error))
        except Exception as error:
            self.run.reportError(_("{action} failed.").format(action=action), error)
            self.setStatus(self.run.status)
        return None

    def applyPrompt(self, placed: Any = None) -> bool:
        """Refine the slice of the prompt just placed (``placed``: its markups node) from every prompt on that
        slice. True when it ran, or, with "to 3D" on, when its walk up and down the volume started in the
        panel's worker (progress and Cancel as for a run; the scene changes when it is done, as one undo step).
        """
        from CRCSegmentationLib.usam.refinement import PropagationSettings

        p = self.run.parameters
        reason = self.promptReason()
        if reason:
            self.setStatus(reason)
            return False
        to3d = bool(p.promptTo3d)
        settings = PropagationSettings(max_distance_mm=p.propagationMm)
        job = self._attempt(_("Prompt"), lambda logic: logic.prepare_prompt(
            p.inputVolume, p.outputSegmentation, self.promptNodes(last=placed), to_3d=to3d, settings=settings))
        if job is None:
            return False
        logic = self.logic
        if not to3d:  # one decoder pass on a cached slice encoding: the main thread is fine
            done = self._attempt(_("Prompt"), lambda logic: logic.apply_prompt(job, logic.compute_prompt(job)))
            if done is not None:
                self._show(_("Prompt"), *done)
            return done is not None

        def finish(job: Any, result: Any) -> None:
            segmentation, result = logic.apply_prompt(job, result)
            self._show(_("Prompt in 3D"), segmentation, result)
            self.run.setStatus(_("Prompt in 3D done."))

        started = self.run.runInBackground(logic.compute_prompt, job, finish)
        self.onChange()
        return started

    def _show(self, action: str, segmentation: Any, result: Any) -> None:
        self.run.parameters.outputSegmentation = segmentation
        segmentation.CreateDefaultDisplayNodes()
        self.setStatus(refinementSummary(action, result))

    def propagate(self) -> bool:
        """Start carrying the last prompted slice to its neighbours in the worker; True when it started."""
        from CRCSegmentationLib.usam.refinement import PropagationSettings

        p = self.run.parameters
        if p is None or self.run.running:
            return False
        settings = PropagationSettings(max_distance_mm=p.propagationMm)
        job = self._attempt(_("Propagation"), lambda logic: logic.prepare_propagation(
            p.inputVolume, p.outputSegmentation, settings=settings))
        if job is None:
            return False
        logic = self.logic

        def finish(job: Any, result: Any) -> None:
            segmentation, result = logic.apply_propagation(job, result)
            self._show(_("Propagation"), segmentation, result)
            self.run.setStatus(_("Propagation done."))

        return self.run.runInBackground(logic.compute_propagation, job, finish)

    def _step(self, name: str, done: str, nothing: str) -> bool:
        if self.logic is None or self.run.running:
            return False
        try:
            stepped = getattr(self.logic, name)()
        except Exception as error:
            self.run.reportError(_("{action} failed.").format(action=name.capitalize()), error)
            self.setStatus(self.run.status)
            return False
        self.setStatus(done if stepped else nothing)
        return bool(stepped)

    def undo(self) -> bool:
        """Restore the segment as it was before the last prompt or propagation."""
        return self._step("undo", _("Undone."), _("Nothing to undo."))

    def redo(self) -> bool:
        """Re-apply the last undone prompt or propagation."""
        return self._step("redo", _("Redone."), _("Nothing to redo."))

    # ------------------------------------------------------------------ scene and lifetime
    def sceneClosed(self) -> None:
        self.removeObservers()
        self.pointLists = {}
        self.pending = None
        self.mode = None
        if self.logic is not None:  # its undo steps and cached encodings belong to the closed scene
            self.logic.reset()
        self.onChange()
