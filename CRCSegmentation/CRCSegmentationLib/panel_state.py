"""What the CRC Segmentation panel shows, enables and runs, without Qt (``widget.py`` and
``refinement_panel.py`` bind it to the .ui; the tests drive it under slicer-core).

- ``CRCSegmentationController``: the automatic run (``OrganGuidanceLib.run_controller.RunController``
  with this panel's settings, packages and texts), the rows shown for each choice, export.
- ``RefinementController``: the point-refinement section: the point lists it observes, the U-SAM
  model it loads, refine / propagate (in the worker, like a run) / undo, and what its buttons allow.

``parameters`` is the panel's parameter node (``widget.CRCSegmentationParameterNode``) or any object
with its fields. Nothing of the engine is imported at the top: it needs PyTorch and nnU-Net, which
may be installed only after Slicer has loaded the module.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from CRCSegmentationLib.choices import POINT_ROLES, STATISTICS_REFERENCE_ROLE
from OrganGuidanceLib import install
from OrganGuidanceLib.run_controller import RunController, RunMessages, pathText
from OrganGuidanceLib.run_controller import tr as _

ORGAN_GUIDANCE_SEGMENT = "Organs of interest"  # how an Organ Guidance output is recognised in the scene


def settingsFromParameterNode(parameterNode: Any):
    """The parameter node as ``CRCSegmentationSettings`` (imports the engine: dependencies must be installed)."""
    from CRCSegmentationLib.core.segmentation import SegmentationParameters
    from CRCSegmentationLib.logic import CRCSegmentationSettings
    from OrganGuidanceLib.logic import OrganGuidanceSettings, OrganSourceChoice

    p = parameterNode
    model = p.modelName if p.modelSource == "catalogue" else pathText(p.modelFolder)
    organs = OrganSourceChoice(
        kind=p.organSource,
        node=p.organNode if p.organSource == "node" else None,
        file_path=pathText(p.organFile) if p.organSource == "file" else "",
        convention="totalsegmentator" if p.organSource == "totalsegmentator" else p.organConvention,
    )
    return CRCSegmentationSettings(
        model=model or "",
        guidance_source=p.guidanceSource,
        guidance_node=p.guidanceNode if p.guidanceSource == "scene" else None,
        organ_guidance=OrganGuidanceSettings(primary=organs, device=p.device),
        convention=p.guidanceConvention,
        slice_filter=pathText(p.sliceFilterModel) if p.sliceFilter else "",
        segmentation=SegmentationParameters.for_preset(
            "fast" if p.fastPreset else "default",
            device=p.device,
            restrict_to_ooi=p.restrictToOoi,
            ooi_margin_mm=p.ooiMarginMm,
            body_crop=p.bodyCrop,
            keep_within_ooi=p.keepWithinOoi,
            min_component_ml=p.minComponentMl,
            keep_organs=p.showOrgans,
            **({} if p.fastPreset else {"mirroring": p.mirroring}),
        ),
    )


def visibleRows(parameters: Any) -> Dict[str, bool]:
    """Which (label, field) rows are shown, by the parameter they edit."""
    p = parameters
    scene, compute = p.guidanceSource == "scene", p.guidanceSource == "compute"
    return {
        "guidanceNode": scene,
        "guidanceConvention": scene,
        "organSource": compute,
        "organNode": compute and p.organSource == "node",
        "organFile": compute and p.organSource == "file",
        "organConvention": compute and p.organSource in ("node", "file"),
        "modelName": p.modelSource == "catalogue",
        "modelFolder": p.modelSource == "folder",
    }


def enabledFields(parameters: Any) -> Dict[str, bool]:
    """Fields that only mean something when another choice is on."""
    return {"ooiMarginMm": bool(parameters.restrictToOoi), "sliceFilterModel": bool(parameters.sliceFilter)}


def statisticsTable(segmentationNode: Any) -> Any:
    """The statistics table node of a tumour segmentation (None when it has none)."""
    return segmentationNode.GetNodeReference(STATISTICS_REFERENCE_ROLE) if segmentationNode is not None else None


def organGuidanceNode(scene) -> Any:
    """The newest Organ Guidance output in ``scene`` (recognised by its organs-of-interest segment), or None."""
    count = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    for index in reversed(range(count)):
        node = scene.GetNthNodeByClass(index, "vtkMRMLSegmentationNode")
        if node.GetSegmentation().GetSegmentIdBySegmentName(ORGAN_GUIDANCE_SEGMENT):
            return node
    return None


class CRCSegmentationController(RunController):
    """The CRC Segmentation panel's automatic run: CT (+ organ guidance) -> "Tumor" segment + statistics."""

    who = _("CRC Segmentation")
    modelNames: Sequence[str] = ()  # the catalogue models the panel offers (its model combo box)

    def createLogic(self) -> Any:
        from CRCSegmentationLib.logic import CRCSegmentationLogic

        return CRCSegmentationLogic(self.scene)

    def settings(self) -> Any:
        return settingsFromParameterNode(self.parameters)

    def requirements(self) -> List[install.Requirement]:
        p = self.parameters
        totalsegmentator = p is not None and p.guidanceSource == "compute" and p.organSource == "totalsegmentator"
        return install.requirements(totalsegmentator=totalsegmentator, features=[install.TUMOR])

    def setParameters(self, parameters: Any) -> None:
        """Also pick the newest Organ Guidance output and, when none is chosen, the first offered model."""
        super().setParameters(parameters)
        if parameters is None:
            return
        if parameters.guidanceNode is None:
            parameters.guidanceNode = organGuidanceNode(self.scene)
        if not parameters.modelName and self.modelNames:
            parameters.modelName = self.modelNames[0]

    def canExport(self) -> bool:
        p = self.parameters
        return not self.running and p is not None and p.outputSegmentation is not None and bool(pathText(p.exportFolder))

    def export(self) -> Optional[List[str]]:
        """Export the output segmentation to the export folder; the files written (None after a reported failure)."""
        p = self.parameters
        if p is None or p.outputSegmentation is None:
            return None
        try:
            with self.dialogs.busy():
                files = self.getLogic().export(p.outputSegmentation, pathText(p.exportFolder))
        except Exception as error:
            self.reportError(_("Export failed."), error)
            return None
        written = [str(path) for path in (files.segmentation, files.label_map, files.statistics) if path is not None]
        self.setStatus(_("Exported: {files}").format(files=", ".join(written)))
        return written

    def messages(self) -> RunMessages:
        return RunMessages(
            applyTooltip=_("Segment the colorectal tumor on the CT."),
            preparing=_("Opening the model and reading the inputs..."),
            startFailed=_("Tumor segmentation could not start."),
            runFailed=_("Tumor segmentation failed."),
            applyFailed=_("The tumor segmentation could not be added to the scene."),
            overwriteQuestion=_("The output segmentation '{name}' already holds {count} segment(s). "
                                "Write the 'Tumor' segment into it (an existing 'Tumor' segment is replaced)?\n\n"
                                "Choose 'Create new segmentation' as output to leave it untouched."),
            title=_("CRC Segmentation"),
        )

    def doneText(self, seconds: float, job: Any, result: Any, segmentation: Any) -> str:
        text = _("Done in {seconds:.1f} s on {device}: 'Tumor' in '{name}'.").format(
            seconds=seconds, device=result.device, name=segmentation.GetName())
        # e.g. fallback to the CPU, empty OOI, an input the model was not trained for (model_fit): one line each
        return text + "".join("\n" + _("Warning: {message}").format(message=message) for message in job.messages)


def refinementSummary(action: str, result: Any) -> str:
    """What one refinement or propagation changed, for the section's status line."""
    slices = result.slice_indices
    text = _("{action}: slices {slices} replaced.").format(action=action, slices=", ".join(str(k) for k in slices)) \
        if slices else _("{action}: nothing changed.").format(action=action)
    if result.ignored_points:
        text += " " + _("{count} point(s) on other slices were not used.").format(count=len(result.ignored_points))
    if result.stop_reasons:
        text += " " + "; ".join(f"{side}: {why}" for side, why in sorted(result.stop_reasons.items()))
    return text


class RefinementController:
    """The point-refinement section: U-SAM refines the "Tumor" segment at placed points; propagate; undo.

    A click refines on the main thread (one decoder pass on a cached slice encoding); propagation
    encodes up to ~26 slices, so it runs in the run controller's worker, with progress and Cancel.
    ``logic`` (a ``PointRefinementLogic`` with its model set) may be given; otherwise it is created on
    first use and loads the parameter node's U-SAM checkpoint, after the install flow.
    """

    who = _("Point refinement")

    def __init__(self, run: CRCSegmentationController, logic: Any = None) -> None:
        self.run = run
        self.logic = logic
        self._givenModel = logic is not None and logic.segmenter is not None  # never replaced by a checkpoint
        self._loadedModel: Tuple[str, str] = ("", "")  # (checkpoint, device) of the loaded model
        self.pointLists: Dict[str, Any] = {}
        self._pointObservers: List[Tuple[Any, int]] = []
        self.status = ""
        self.onChange: Callable[[], None] = lambda: None
        # Called with the role of a point just placed; the Qt binding defers it until the markups
        # interaction is over (a refinement inside the event would fight it).
        self.onPointPlaced: Callable[[str], None] = self.refine

    # ------------------------------------------------------------------ state
    def setStatus(self, text: str) -> None:
        self.status = text
        self.onChange()

    @property
    def canPropagate(self) -> bool:
        return self.logic is not None and self.logic.last_slice is not None and not self.run.running

    @property
    def canUndo(self) -> bool:
        return self.logic is not None and bool(self.logic.undo_stack) and not self.run.running

    # ------------------------------------------------------------------ point lists
    def observePointLists(self, create: bool) -> None:
        """Find (or create) the green and red point lists and refine whenever a point is placed."""
        try:
            from CRCSegmentationLib.mrml_points import point_list_node
        except Exception as error:  # engine not installed yet: the section says so
            self.setStatus(_("Point refinement unavailable: {error}").format(error=error))
            return
        self.removePointObservers()
        for role in POINT_ROLES:
            node = point_list_node(self.run.scene, role, create=create)
            self.pointLists[role] = node
            if node is not None:
                tag = node.AddObserver(node.PointPositionDefinedEvent,
                                       lambda caller, event, role=role: self.onPointPlaced(role))
                self._pointObservers.append((node, tag))
        self.onChange()

    def removePointObservers(self) -> None:
        for node, tag in self._pointObservers:
            node.RemoveObserver(tag)
        self._pointObservers = []

    def clearPoints(self) -> None:
        for node in self.pointLists.values():
            if node is not None:
                node.RemoveAllControlPoints()

    # ------------------------------------------------------------------ model
    def requirements(self) -> List[install.Requirement]:
        """The packages U-SAM point refinement needs (the panel's run may need others)."""
        return install.requirements(features=[install.REFINEMENT])

    def ensureLogic(self) -> Any:
        """The refinement logic with the chosen checkpoint loaded (reloaded when it or the device changes).

        None when the packages are missing and not installed; ``InputError`` when no checkpoint is usable.
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
        wanted = (pathText(p.usamCheckpoint), p.device)
        if self.logic.segmenter is None or wanted != self._loadedModel:
            with self.run.dialogs.busy():
                self.logic.load_model(wanted[0], p.device)  # InputError: no checkpoint, missing file
            self._loadedModel = wanted
        return self.logic

    # ------------------------------------------------------------------ actions
    def _attempt(self, action: str, work: Callable[[Any], Any]) -> Any:
        """``work(logic)`` on the main thread; input errors go to the section's status, others are reported."""
        from OrganGuidanceLib.validation import InputError

        try:
            logic = self.ensureLogic()
            if logic is None:
                return None
            with self.run.dialogs.busy():
                return work(logic)
        except InputError as error:
            self.setStatus(str(error))
        except Exception as error:
            self.run.reportError(_("{action} failed.").format(action=action), error)
            self.setStatus(self.run.status)
        return None

    def _show(self, action: str, segmentation: Any, result: Any) -> None:
        self.run.parameters.outputSegmentation = segmentation
        segmentation.CreateDefaultDisplayNodes()
        self.setStatus(refinementSummary(action, result))

    def refine(self, lastRole: str = "positive") -> bool:
        """Refine the axial slice of the point just placed, from the points on that slice. True when it ran."""
        p = self.run.parameters
        if p is None or self.run.running:
            return False
        lists = self.pointLists
        done = self._attempt(_("Refinement"), lambda logic: logic.refine(
            p.inputVolume, p.outputSegmentation, lists.get("positive"), lists.get("negative"), last_role=lastRole))
        if done is None:
            return False
        self._show(_("Refinement"), *done)
        return True

    def propagate(self) -> bool:
        """Start carrying the last refined slice to its neighbours in the worker; True when it started."""
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

    def undo(self) -> bool:
        if self.logic is None or self.run.running:
            return False
        try:
            undone = self.logic.undo()
        except Exception as error:
            self.run.reportError(_("Undo failed."), error)
            return False
        self.setStatus(_("Last refinement undone.") if undone else _("Nothing to undo."))
        return undone

    # ------------------------------------------------------------------ scene and lifetime
    def sceneClosed(self) -> None:
        self.removePointObservers()
        self.pointLists = {}
        if self.logic is not None:  # its undo steps and cached encodings belong to the closed scene
            self.logic.reset()
        self.onChange()


def catalogueChoices() -> Tuple[List[Tuple[str, str]], str]:
    """(name, description) of the catalogue models, and "" or why the catalogue is unavailable (engine not installed)."""
    try:
        from CRCSegmentationLib.logic import model_choices

        return list(model_choices()), ""
    except Exception as error:  # the folder choice still works
        return [], _("Model catalogue unavailable: {error}").format(error=error)
