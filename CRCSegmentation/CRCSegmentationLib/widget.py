"""CRC Segmentation panel: the Qt GUI over ``CRCSegmentationLogic``.

The only file of this package that imports Qt, CTK or the Slicer application. It
builds the GUI from ``Resources/UI/CRCSegmentation.ui``, keeps the user's choices in
a parameter node (``CRCSegmentationParameterNode``, saved with the scene) and runs
the engine as Organ Guidance's panel does (both build on
``OrganGuidanceLib.run_panel.RunPanelBase``):

- ``logic.prepare`` on the main thread (reads MRML nodes, opens the model);
- ``logic.compute`` in a worker thread (``OrganGuidanceLib.run_panel.BackgroundRun``)
  that touches neither Qt nor MRML; a ``QTimer`` polls its progress; Cancel sets a
  ``threading.Event``;
- ``logic.apply`` back on the main thread, only if the run was not cancelled.

Point refinement (U-SAM) runs on the main thread, one axial slice per placed point
(a decoder pass, the slice's image encoding cached): the panel observes the point
lists' ``PointPositionDefinedEvent`` and calls ``PointRefinementLogic``.

Nothing of the engine is imported at load time: it needs PyTorch and nnU-Net, which
may be installed only after the module has loaded.
"""
from __future__ import annotations

import pathlib
from typing import Annotated, Any, Dict, List, Sequence, Tuple, Union

import qt
import slicer
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from OrganGuidanceLib import install
from OrganGuidanceLib.run_panel import RunMessages, RunPanelBase, pathText, singletonParameterNode

MODULE_NAME = "CRCSegmentation"
RESOURCES = pathlib.Path(__file__).resolve().parent.parent / "Resources"

# Values stored in the parameter node; they are the strings the logic's settings expect.
GUIDANCE_SOURCES = ("scene", "compute", "none")
ORGAN_SOURCES = ("totalsegmentator", "node", "file")
CONVENTIONS = ("totalsegmentator", "word")
MODEL_SOURCES = ("catalogue", "folder")
DEVICES = ("auto", "cuda", "cpu")
STATISTICS_REFERENCE_ROLE = "crcSegmentationStatistics"  # = mrml.STATISTICS_REFERENCE_ROLE (mrml needs cc3d)
POINT_ROLES = ("positive", "negative")  # = mrml_points.POINT_ROLES (mrml_points needs the engine)

OrganNode = Union[slicer.vtkMRMLLabelMapVolumeNode, slicer.vtkMRMLSegmentationNode, None]


@parameterNodeWrapper
class CRCSegmentationParameterNode:
    """What the user chose, saved with the scene; ``settingsFromParameterNode`` makes the settings.

    Defaults equal ``SegmentationParameters``'s (Testing/test_slicer_module_static.py checks
    it); literals, because the engine imports torch. Annotations stay Python 3.9-evaluable.
    ``modelName`` is set from the model combo box (its items come from the catalogue).
    """

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    guidanceSource: Annotated[str, Choice(GUIDANCE_SOURCES)] = "scene"
    guidanceNode: slicer.vtkMRMLSegmentationNode
    guidanceConvention: Annotated[str, Choice(CONVENTIONS)] = "totalsegmentator"
    organSource: Annotated[str, Choice(ORGAN_SOURCES)] = "totalsegmentator"
    organNode: OrganNode
    organFile: pathlib.Path
    organConvention: Annotated[str, Choice(CONVENTIONS)] = "totalsegmentator"
    modelSource: Annotated[str, Choice(MODEL_SOURCES)] = "catalogue"
    modelName: str = ""
    modelFolder: pathlib.Path
    device: Annotated[str, Choice(DEVICES)] = "auto"
    mirroring: bool = True
    fastPreset: bool = False  # FLARE24 §3.2: inference.PRESETS["fast"] (tile step 7/8, no mirroring)
    showOrgans: bool = False  # = SegmentationParameters.keep_organs (organ-interference models)
    sliceFilter: bool = False  # CRCSegmentationSettings.slice_filter: HCF slice classifier clears normal slices
    sliceFilterModel: pathlib.Path  # its bundle folder (HCF or classifier-only)
    restrictToOoi: bool = True
    ooiMarginMm: Annotated[float, WithinRange(0.0, 200.0)] = 20.0
    bodyCrop: bool = True
    keepWithinOoi: bool = True
    minComponentMl: Annotated[float, WithinRange(0.0, 100.0)] = 0.0
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    exportFolder: pathlib.Path
    usamCheckpoint: pathlib.Path
    propagationMm: Annotated[float, WithinRange(0.0, 200.0)] = 40.0  # = interactive.PropagationSettings.max_distance_mm


def settingsFromParameterNode(parameterNode: CRCSegmentationParameterNode):
    """The parameter node as ``CRCSegmentationSettings`` (imports the engine: dependencies must be installed)."""
    from OrganGuidanceLib.logic import OrganGuidanceSettings, OrganSourceChoice

    from .inference import SegmentationParameters
    from .logic import CRCSegmentationSettings

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


def getParameterNode(scene) -> CRCSegmentationParameterNode:
    """The module's singleton parameter node in ``scene``, created on first use."""
    return CRCSegmentationParameterNode(singletonParameterNode(scene, MODULE_NAME))


class CRCSegmentationPanel(RunPanelBase):
    """The module's GUI. Receives its logic in the constructor so tests can hand it another."""

    def __init__(self, logic: Any = None, parent: Any = None, showDialogs: bool = True) -> None:
        uiWidget = slicer.util.loadUI(str(RESOURCES / "UI" / f"{MODULE_NAME}.ui"))
        super().__init__(uiWidget, logic, parent, showDialogs)
        self.ui.exportButton.clicked.connect(self.onExport)
        self.ui.modelComboBox.currentIndexChanged.connect(self._onModelChosen)
        self._fillModelComboBox()
        self._setupRefinement()
        self.initializeParameterNode()

    # ------------------------------------------------------------------ logic and settings
    def _createLogic(self):
        from .logic import CRCSegmentationLogic

        return CRCSegmentationLogic(slicer.mrmlScene)

    def _sceneParameterNode(self) -> CRCSegmentationParameterNode:
        return getParameterNode(slicer.mrmlScene)

    def settings(self):
        return settingsFromParameterNode(self._parameterNode)

    # ------------------------------------------------------------------ models
    def _fillModelComboBox(self) -> None:
        """Catalogue models; the item data is the catalogue name, the text says what it is."""
        comboBox = self.ui.modelComboBox
        comboBox.blockSignals(True)
        comboBox.clear()
        try:
            from .logic import model_choices

            choices = model_choices()
        except Exception as error:  # engine not installed yet: the folder choice still works
            choices = []
            self.ui.modelInfoLabel.setText(_("Model catalogue unavailable: {error}").format(error=error))
        for name, description in choices:
            comboBox.addItem(name, name)
            comboBox.setItemData(comboBox.count - 1, description, qt.Qt.ToolTipRole)
        comboBox.blockSignals(False)

    def _onModelChosen(self, index: int) -> None:
        if self._parameterNode is not None and index >= 0:
            self._parameterNode.modelName = self.ui.modelComboBox.itemData(index) or ""

    # ------------------------------------------------------------------ parameter node <-> GUI
    def initializeParameterNode(self) -> None:
        super().initializeParameterNode()  # also picks the first CT volume
        p = self._parameterNode
        if p.guidanceNode is None:
            # The newest Organ Guidance output, recognised by its body-crop reference or its OOI segment.
            for node in reversed(slicer.util.getNodesByClass("vtkMRMLSegmentationNode")):
                if node.GetSegmentation().GetSegmentIdBySegmentName("Organs of interest"):
                    p.guidanceNode = node
                    break
        if not p.modelName and self.ui.modelComboBox.count:
            p.modelName = self.ui.modelComboBox.itemData(0) or ""
        self._observePointLists(create=False)  # point lists of a loaded scene; new ones when the section opens

    def _labelComboBoxes(self) -> None:
        """Readable item texts; the connectors fill the combo boxes with the raw choice values."""
        labels: List[Tuple[Any, Dict[str, str]]] = [
            (self.ui.guidanceSourceComboBox, {
                "scene": _("Organ Guidance result in the scene"),
                "compute": _("Compute now (Organ Guidance)"),
                "none": _("None (CT-only model)"),
            }),
            (self.ui.organSourceComboBox, {
                "totalsegmentator": _("TotalSegmentator (run on the CT)"),
                "node": _("Label map or segmentation in the scene"),
                "file": _("Label map file"),
            }),
            (self.ui.guidanceConventionComboBox, {"totalsegmentator": _("TotalSegmentator (task total)"), "word": _("WORD")}),
            (self.ui.organConventionComboBox, {"totalsegmentator": _("TotalSegmentator (task total)"), "word": _("WORD")}),
            (self.ui.modelSourceComboBox, {"catalogue": _("Model catalogue"), "folder": _("Model folder")}),
            (self.ui.deviceComboBox, {"auto": _("Auto (GPU when available)"), "cuda": _("GPU (CUDA)"), "cpu": _("CPU")}),
        ]
        self._setItemTexts(labels)

    def _updateGui(self, *args: Any) -> None:
        p = self._parameterNode
        if p is None:
            return
        compute = p.guidanceSource == "compute"
        rows = (
            (self.ui.guidanceNodeLabel, self.ui.guidanceNodeSelector, p.guidanceSource == "scene"),
            (self.ui.guidanceConventionLabel, self.ui.guidanceConventionComboBox, p.guidanceSource == "scene"),
            (self.ui.organSourceLabel, self.ui.organSourceComboBox, compute),
            (self.ui.organNodeLabel, self.ui.organNodeSelector, compute and p.organSource == "node"),
            (self.ui.organFileLabel, self.ui.organFilePathLineEdit, compute and p.organSource == "file"),
            (self.ui.organConventionLabel, self.ui.organConventionComboBox, compute and p.organSource in ("node", "file")),
            (self.ui.modelLabel, self.ui.modelComboBox, p.modelSource == "catalogue"),
            (self.ui.modelFolderLabel, self.ui.modelFolderPathLineEdit, p.modelSource == "folder"),
        )
        for label, field, visible in rows:
            label.setVisible(visible)
            field.setVisible(visible)
        index = self.ui.modelComboBox.findData(p.modelName)
        if index >= 0 and index != self.ui.modelComboBox.currentIndex:
            self.ui.modelComboBox.setCurrentIndex(index)
        if p.modelSource == "catalogue" and index >= 0:
            self.ui.modelInfoLabel.setText(self.ui.modelComboBox.itemData(index, qt.Qt.ToolTipRole) or "")
        self.ui.ooiMarginSpinBox.setEnabled(p.restrictToOoi)
        self.ui.sliceFilterModelLabel.setEnabled(p.sliceFilter)
        self.ui.sliceFilterModelPathLineEdit.setEnabled(p.sliceFilter)
        self._showStatistics(p.outputSegmentation)
        self._updateButtons()

    def _updateButtons(self) -> None:
        super()._updateButtons()
        p = self._parameterNode
        canExport = (self._run is None and p is not None and p.outputSegmentation is not None
                     and bool(pathText(p.exportFolder)))
        self.ui.exportButton.setEnabled(canExport)

    def _sections(self) -> Sequence[Any]:
        return (self.ui.inputsCollapsibleButton, self.ui.modelCollapsibleButton,
                self.ui.advancedCollapsibleButton, self.ui.outputCollapsibleButton,
                self.ui.refinementCollapsibleButton, self.ui.resultsCollapsibleButton)

    def _showStatistics(self, segmentationNode: Any) -> None:
        table = segmentationNode.GetNodeReference(STATISTICS_REFERENCE_ROLE) if segmentationNode is not None else None
        self.ui.statisticsTableView.setMRMLTableNode(table)

    # ------------------------------------------------------------------ dependencies
    def _requirements(self) -> List[Any]:
        p = self._parameterNode
        totalsegmentator = p is not None and p.guidanceSource == "compute" and p.organSource == "totalsegmentator"
        # The packages come from OrganGuidanceLib.install's one table (PyTorch through the PyTorch extension).
        return install.requirements(totalsegmentator=totalsegmentator, features=[install.TUMOR])

    def _ensureDependencies(self) -> bool:
        """True when every package of the run imports; otherwise ask, then install (PyTorch first)."""
        missing = install.missing_requirements(self._requirements())
        if not missing:
            return True
        if not self._checkInstallable(missing):
            return False
        question = "\n\n".join([
            _("CRC Segmentation needs Python packages that are not installed yet:"),
            install.describe(missing),
            _("Install them now? This needs an internet connection and can take several minutes."),
        ])
        if not self._askToInstall(question) or not self._installRequirements(missing):
            return False
        if not self._allInstalled(self._requirements(),
                                  _("These packages are still missing; restart Slicer and try again:")):
            return False
        self._fillModelComboBox()
        return True

    # ------------------------------------------------------------------ running
    def _runMessages(self) -> RunMessages:
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

    def _doneText(self, seconds: float, job: Any, result: Any, segmentation: Any) -> str:
        text = _("Done in {seconds:.1f} s on {device}: 'Tumor' in '{name}'.").format(
            seconds=seconds, device=result.device, name=segmentation.GetName())
        # e.g. fallback to the CPU, empty OOI, an input the model was not trained for (model_fit): one line each
        return text + "".join("\n" + _("Warning: {message}").format(message=message) for message in job.messages)

    def onExport(self) -> None:
        p = self._parameterNode
        if p is None or p.outputSegmentation is None:
            return
        try:
            with slicer.util.WaitCursor():
                files = self.getLogic().export(p.outputSegmentation, pathText(p.exportFolder))
        except Exception as error:
            self._reportError(_("Export failed."), error)
            return
        written = [str(path) for path in (files.segmentation, files.label_map, files.statistics) if path is not None]
        self._setStatus(_("Exported: {files}").format(files=", ".join(written)))

    def _showResult(self, segmentation: Any, ctNode: Any) -> None:
        """Select the result, show it over the CT in the slice views and in 3D, and its statistics."""
        super()._showResult(segmentation, ctNode)
        self._showStatistics(segmentation)

    # ------------------------------------------------------------------ point refinement (U-SAM)
    def _setupRefinement(self) -> None:
        self._refinement: Any = None  # logic.PointRefinementLogic, created on first use
        self._refinementModel: Tuple[str, str] = ("", "")  # (checkpoint, device) of the loaded model
        self._pointLists: Dict[str, Any] = {}
        self._pointObservers: List[Tuple[Any, int]] = []
        self.ui.propagateButton.clicked.connect(self.onPropagate)
        self.ui.undoButton.clicked.connect(self.onUndoRefinement)
        self.ui.clearPointsButton.clicked.connect(self.onClearPoints)
        self.ui.refinementCollapsibleButton.contentsCollapsed.connect(self._onRefinementSectionCollapsed)
        for placeWidget in (self.ui.positivePointsPlaceWidget, self.ui.negativePointsPlaceWidget):
            placeWidget.setMRMLScene(slicer.mrmlScene)
            placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
            placeWidget.buttonsVisible = False
            placeWidget.placeButton().show()
        self._updateRefinementButtons()

    def _onRefinementSectionCollapsed(self, collapsed: bool) -> None:
        if not collapsed:
            self._observePointLists(create=True)

    def _observePointLists(self, create: bool) -> None:
        """Find (or create) the green and red point lists and refine whenever a point is placed."""
        try:
            from .mrml_points import point_list_node
        except Exception as error:  # engine not installed yet: the section says so
            self._setRefinementStatus(_("Point refinement unavailable: {error}").format(error=error))
            return
        self._removePointObservers()
        placeWidgets = {"positive": self.ui.positivePointsPlaceWidget, "negative": self.ui.negativePointsPlaceWidget}
        for role in POINT_ROLES:
            node = point_list_node(slicer.mrmlScene, role, create=create)
            self._pointLists[role] = node
            placeWidgets[role].setCurrentNode(node)
            if node is not None:
                tag = node.AddObserver(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                                       lambda caller, event, role=role: self._onPointPlaced(role))
                self._pointObservers.append((node, tag))

    def _removePointObservers(self) -> None:
        for node, tag in self._pointObservers:
            node.RemoveObserver(tag)
        self._pointObservers = []

    def _onPointPlaced(self, role: str) -> None:
        # After the markups interaction has finished with the point (not inside its event).
        qt.QTimer.singleShot(0, lambda: self.refineAtPoints(role))

    def _refinementLogic(self) -> Any:
        """The refinement logic with the chosen checkpoint loaded (reloaded when it or the device changes)."""
        missing = install.missing_requirements(install.requirements(features=[install.REFINEMENT]))
        if missing and not self._installForRefinement(missing):
            return None
        from .logic import PointRefinementLogic

        if self._refinement is None:
            self._refinement = PointRefinementLogic(slicer.mrmlScene)
        p = self._parameterNode
        wanted = (pathText(p.usamCheckpoint), p.device)
        if self._refinement.segmenter is None or wanted != self._refinementModel:
            with slicer.util.WaitCursor():
                self._refinement.load_model(wanted[0], p.device)  # InputError: no checkpoint, missing file
            self._refinementModel = wanted
        return self._refinement

    def _installForRefinement(self, missing: Sequence[Any]) -> bool:
        if not self._checkInstallable(missing):
            return False
        question = "\n\n".join([
            _("Point refinement needs Python packages that are not installed yet:"),
            install.describe(missing),
            _("Install them now? This needs an internet connection and can take several minutes."),
        ])
        return self._askToInstall(question) and self._installRequirements(missing)

    def _runRefinement(self, action: str, work: Any) -> None:
        """Run one refinement step on the main thread; input errors go to the section's status line."""
        from OrganGuidanceLib.validation import InputError

        p = self._parameterNode
        try:
            logic = self._refinementLogic()
            if logic is None:
                return
            with slicer.util.WaitCursor():
                segmentation, result = work(logic, p)
        except InputError as error:
            self._setRefinementStatus(str(error))
            return
        except Exception as error:
            self._reportError(_("{action} failed.").format(action=action), error)
            return
        self._showRefinement(action, segmentation, result)

    def _showRefinement(self, action: str, segmentation: Any, result: Any) -> None:
        self._parameterNode.outputSegmentation = segmentation
        segmentation.CreateDefaultDisplayNodes()
        slices = result.slice_indices
        text = _("{action}: slices {slices} replaced.").format(action=action, slices=", ".join(str(k) for k in slices)) \
            if slices else _("{action}: nothing changed.").format(action=action)
        if result.ignored_points:
            text += " " + _("{count} point(s) on other slices were not used.").format(count=len(result.ignored_points))
        if result.stop_reasons:
            text += " " + "; ".join(f"{side}: {why}" for side, why in sorted(result.stop_reasons.items()))
        self._setRefinementStatus(text)
        self._updateRefinementButtons()

    def refineAtPoints(self, lastRole: str = "positive") -> None:
        """Refine the axial slice of the point just placed, from the points on that slice."""
        if self._parameterNode is None or self._run is not None:
            return
        lists = self._pointLists
        self._runRefinement(_("Refinement"), lambda logic, p: logic.refine(
            p.inputVolume, p.outputSegmentation, lists.get("positive"), lists.get("negative"), last_role=lastRole))

    def onPropagate(self) -> None:
        """Propagation encodes up to ~26 slices: it runs in the worker, with progress and Cancel."""
        from OrganGuidanceLib.validation import InputError

        from .interactive import PropagationSettings

        p = self._parameterNode
        if p is None or self._run is not None:
            return
        settings = PropagationSettings(max_distance_mm=p.propagationMm)
        try:
            logic = self._refinementLogic()
            if logic is None:
                return
            job = logic.prepare_propagation(p.inputVolume, p.outputSegmentation, settings=settings)
        except InputError as error:
            self._setRefinementStatus(str(error))
            return
        except Exception as error:
            self._reportError(_("Propagation failed."), error)
            return

        def finish(job: Any, result: Any) -> None:
            segmentation, result = logic.apply_propagation(job, result)
            self._showRefinement(_("Propagation"), segmentation, result)
            self._setStatus(_("Propagation done."))

        self.runInBackground(logic.compute_propagation, job, finish)

    def onUndoRefinement(self) -> None:
        if self._refinement is None:
            return
        try:
            undone = self._refinement.undo()
        except Exception as error:
            self._reportError(_("Undo failed."), error)
            return
        self._setRefinementStatus(_("Last refinement undone.") if undone else _("Nothing to undo."))
        self._updateRefinementButtons()

    def onClearPoints(self) -> None:
        for node in self._pointLists.values():
            if node is not None:
                node.RemoveAllControlPoints()

    def _updateRefinementButtons(self) -> None:
        logic = self._refinement
        self.ui.propagateButton.setEnabled(logic is not None and logic.last_slice is not None)
        self.ui.undoButton.setEnabled(logic is not None and bool(logic.undo_stack))

    def _setRefinementStatus(self, text: str) -> None:
        self.ui.refinementStatusLabel.setText(text)

    def _onSceneEndClose(self, caller: Any = None, event: Any = None) -> None:
        self._removePointObservers()
        self._pointLists = {}
        if self._refinement is not None:  # its undo steps and cached encodings belong to the closed scene
            self._refinement.reset()
        super()._onSceneEndClose(caller, event)
        self._updateRefinementButtons()

    def cleanup(self) -> None:
        self._removePointObservers()
        super().cleanup()
