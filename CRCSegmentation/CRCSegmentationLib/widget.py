"""CRC Segmentation panel: the Qt GUI over ``CRCSegmentationLogic``.

The only file of this package that imports Qt, CTK or the Slicer application. It
builds the GUI from ``Resources/UI/CRCSegmentation.ui``, keeps the user's choices in
a parameter node (``CRCSegmentationParameterNode``, saved with the scene) and runs
the engine as Organ Guidance's panel does:

- ``logic.prepare`` on the main thread (reads MRML nodes, opens the model);
- ``logic.compute`` in a worker thread (``OrganGuidanceLib.widget.BackgroundRun``)
  that touches neither Qt nor MRML; a ``QTimer`` polls its progress; Cancel sets a
  ``threading.Event``;
- ``logic.apply`` back on the main thread, only if the run was not cancelled.

Nothing of the engine is imported at load time: it needs PyTorch and nnU-Net, which
may be installed only after the module has loaded.
"""
from __future__ import annotations

import pathlib
import time
import traceback
from typing import Annotated, Any, Dict, List, Optional, Tuple, Union

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from OrganGuidanceLib import install
from OrganGuidanceLib.widget import BackgroundRun, isCancellation, pathText

MODULE_NAME = "CRCSegmentation"
RESOURCES = pathlib.Path(__file__).resolve().parent.parent / "Resources"

# Values stored in the parameter node; they are the strings the logic's settings expect.
GUIDANCE_SOURCES = ("scene", "compute", "none")
ORGAN_SOURCES = ("totalsegmentator", "node", "file")
CONVENTIONS = ("totalsegmentator", "word")
MODEL_SOURCES = ("catalogue", "folder")
DEVICES = ("auto", "cuda", "cpu")
POLL_INTERVAL_MS = 100
PARAMETER_NAME_PROPERTY = "SlicerParameterName"
STATISTICS_REFERENCE_ROLE = "crcSegmentationStatistics"  # = mrml.STATISTICS_REFERENCE_ROLE (mrml needs cc3d)
# The tumor model runs through nnU-Net v2 (which brings its PyTorch needs); PyTorch itself comes
# through the PyTorch extension, as for TotalSegmentator.
NNUNET_REQUIREMENT = install.Requirement("nnunetv2", "nnunetv2==2.8.1", "nnU-Net v2, which runs the tumor model")

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
    restrictToOoi: bool = True
    ooiMarginMm: Annotated[float, WithinRange(0.0, 200.0)] = 20.0
    bodyCrop: bool = True
    keepWithinOoi: bool = True
    minComponentMl: Annotated[float, WithinRange(0.0, 100.0)] = 0.0
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    exportFolder: pathlib.Path


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
        segmentation=SegmentationParameters(
            device=p.device,
            mirroring=p.mirroring,
            restrict_to_ooi=p.restrictToOoi,
            ooi_margin_mm=p.ooiMarginMm,
            body_crop=p.bodyCrop,
            keep_within_ooi=p.keepWithinOoi,
            min_component_ml=p.minComponentMl,
        ),
    )


def getParameterNode(scene) -> CRCSegmentationParameterNode:
    """The module's singleton parameter node in ``scene``, created on first use."""
    node = scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)  # the Python variable owns it now (as ScriptedLoadableModuleLogic does)
        node.SetSingletonTag(MODULE_NAME)
        node.SetName(scene.GenerateUniqueName(MODULE_NAME))
        node.SetAttribute("ModuleName", MODULE_NAME)
        node = scene.AddNode(node)
    return CRCSegmentationParameterNode(node)


class CRCSegmentationPanel(qt.QWidget):
    """The module's GUI. Receives its logic in the constructor so tests can hand it another."""

    def __init__(self, logic: Any = None, parent: Any = None, showDialogs: bool = True) -> None:
        super().__init__(parent)
        self._logic = logic
        self._showDialogs = showDialogs
        self._parameterNode: Optional[CRCSegmentationParameterNode] = None
        self._guiTag: Any = None
        self._parameterObserver: Optional[int] = None
        self._run: Optional[BackgroundRun] = None
        self._runContext: Tuple[Any, Any, Any] = (None, None, None)  # job, output node, CT node

        layout = qt.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._uiWidget = slicer.util.loadUI(str(RESOURCES / "UI" / f"{MODULE_NAME}.ui"))
        layout.addWidget(self._uiWidget)
        self.ui = slicer.util.childWidgetVariables(self._uiWidget)
        self._uiWidget.setMRMLScene(slicer.mrmlScene)

        self.ui.applyButton.clicked.connect(self.onApply)
        self.ui.cancelButton.clicked.connect(self.onCancel)
        self.ui.exportButton.clicked.connect(self.onExport)
        self.ui.modelComboBox.currentIndexChanged.connect(self._onModelChosen)
        self._timer = qt.QTimer(self)
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self._poll)

        self._sceneObservers = [
            slicer.mrmlScene.AddObserver(slicer.mrmlScene.StartCloseEvent, self._onSceneStartClose),
            slicer.mrmlScene.AddObserver(slicer.mrmlScene.EndCloseEvent, self._onSceneEndClose),
        ]
        self._fillModelComboBox()
        self.initializeParameterNode()

    # ------------------------------------------------------------------ logic and settings
    def getLogic(self):
        """Created on first use: importing the engine needs the dependencies installed."""
        if self._logic is None:
            from .logic import CRCSegmentationLogic

            self._logic = CRCSegmentationLogic(slicer.mrmlScene)
        return self._logic

    def parameterNode(self) -> Optional[CRCSegmentationParameterNode]:
        return self._parameterNode

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
        self.setParameterNode(getParameterNode(slicer.mrmlScene))
        p = self._parameterNode
        if p.inputVolume is None:
            volumes = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                       if not n.IsA("vtkMRMLLabelMapVolumeNode")]
            if volumes:
                p.inputVolume = volumes[0]
        if p.guidanceNode is None:
            # The newest Organ Guidance output, recognised by its body-crop reference or its OOI segment.
            for node in reversed(slicer.util.getNodesByClass("vtkMRMLSegmentationNode")):
                if node.GetSegmentation().GetSegmentIdBySegmentName("Organs of interest"):
                    p.guidanceNode = node
                    break
        if not p.modelName and self.ui.modelComboBox.count:
            p.modelName = self.ui.modelComboBox.itemData(0) or ""

    def setParameterNode(self, parameterNode: Optional[CRCSegmentationParameterNode]) -> None:
        if self._parameterNode is not None:
            self._parameterNode.disconnectGui(self._guiTag)
            self._parameterNode.RemoveObserver(self._parameterObserver)
        self._parameterNode = parameterNode
        if parameterNode is None:
            return
        mapping = {
            widget.property(PARAMETER_NAME_PROPERTY): widget
            for widget in self._uiWidget.findChildren(qt.QWidget)
            if widget.property(PARAMETER_NAME_PROPERTY)
        }
        self._guiTag = parameterNode.connectParametersToGui(mapping)
        self._labelComboBoxes()
        self._parameterObserver = parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._updateGui()

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
        for comboBox, texts in labels:
            for index in range(comboBox.count):
                key = comboBox.itemText(index)
                if key in texts:
                    comboBox.setItemText(index, texts[key])  # the connector reads the index, not the text

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
        self._showStatistics(p.outputSegmentation)
        self._updateButtons()

    def _applyBlocker(self) -> str:
        """Why Segment cannot run now, or "" when it can."""
        p = self._parameterNode
        if p is None:
            return _("No parameter node.")
        if p.inputVolume is None:
            return _("Select a CT volume.")
        try:
            valid, reason = self.settings().is_valid()
        except Exception as error:  # e.g. the engine fails to import: say so instead of a silent grey button
            return str(error)
        return "" if valid else reason

    def _updateButtons(self) -> None:
        running = self._run is not None
        blocker = "" if running else self._applyBlocker()
        self.ui.applyButton.setEnabled(not running and not blocker)
        self.ui.applyButton.setToolTip(blocker or _("Segment the colorectal tumor on the CT."))
        self.ui.cancelButton.setEnabled(running and not self._run.cancel.is_set())
        p = self._parameterNode
        canExport = (not running and p is not None and p.outputSegmentation is not None
                     and bool(pathText(p.exportFolder)))
        self.ui.exportButton.setEnabled(canExport)
        if blocker:
            self._setStatus(blocker)

    def _setRunning(self, running: bool) -> None:
        for section in (self.ui.inputsCollapsibleButton, self.ui.modelCollapsibleButton,
                        self.ui.advancedCollapsibleButton, self.ui.outputCollapsibleButton,
                        self.ui.resultsCollapsibleButton):
            section.setEnabled(not running)  # the parameters must not change under a running job
        self._updateButtons()

    def _setStatus(self, text: str) -> None:
        self.ui.statusLabel.setText(text)

    def _setProgress(self, fraction: Optional[float]) -> None:
        if fraction is None:
            self.ui.progressBar.setRange(0, 0)  # busy indicator when the stage gives no fraction
            return
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(int(round(100 * min(max(float(fraction), 0.0), 1.0))))

    def _showStatistics(self, segmentationNode: Any) -> None:
        table = segmentationNode.GetNodeReference(STATISTICS_REFERENCE_ROLE) if segmentationNode is not None else None
        self.ui.statisticsTableView.setMRMLTableNode(table)

    # ------------------------------------------------------------------ dependencies
    def _requirements(self) -> List[Any]:
        p = self._parameterNode
        totalsegmentator = p is not None and p.guidanceSource == "compute" and p.organSource == "totalsegmentator"
        required = install.requirements(totalsegmentator=totalsegmentator)
        torch = [r for r in install.TOTALSEGMENTATOR_REQUIREMENTS if r.import_name == "torch"]
        return required + [r for r in torch if r not in required] + [NNUNET_REQUIREMENT]

    def _ensureDependencies(self) -> bool:
        """True when every package of the run imports; otherwise ask, then install (PyTorch first)."""
        missing = install.missing_requirements(self._requirements())
        if not missing:
            return True
        question = "\n\n".join([
            _("CRC Segmentation needs Python packages that are not installed yet:"),
            install.describe(missing),
            _("Install them now? This needs an internet connection and can take several minutes."),
        ])
        if not self._showDialogs or not slicer.util.confirmOkCancelDisplay(question, windowTitle=_("Install Python packages")):
            self._setStatus(_("Not started: required Python packages are not installed."))
            return False
        try:
            with slicer.util.WaitCursor():
                if any(requirement.installer == "pytorch" for requirement in missing):
                    from OrganGuidanceLib.widget import OrganGuidancePanel

                    OrganGuidancePanel.installTorch()  # the PyTorch extension picks the GPU build
                pipRequirements = install.pip_requirements(missing)
                if pipRequirements:
                    slicer.util.pip_install(" ".join(pipRequirements))
        except Exception as error:
            self._reportError(_("Installing Python packages failed."), error)
            return False
        stillMissing = install.missing_requirements(self._requirements())
        if stillMissing:
            self._reportError(_("These packages are still missing; restart Slicer and try again:"),
                              RuntimeError(install.describe(stillMissing)))
            return False
        self._fillModelComboBox()
        return True

    # ------------------------------------------------------------------ running
    def onApply(self) -> None:
        if self._run is not None or self._parameterNode is None:
            return
        if not self._ensureDependencies():
            self._updateButtons()
            return
        p = self._parameterNode
        ctNode, outputNode = p.inputVolume, p.outputSegmentation
        try:
            settings = self.settings()
            valid, reason = settings.is_valid()
            if not valid:
                raise ValueError(reason)
            if not self._confirmOutputNode(outputNode):
                self._setStatus(_("Not started."))
                return
            self._setStatus(_("Opening the model and reading the inputs..."))
            with slicer.util.WaitCursor():
                job = self.getLogic().prepare(ctNode, settings)
        except Exception as error:
            self._reportError(_("Tumor segmentation could not start."), error)
            return
        self._run = BackgroundRun(self.getLogic().compute, job)
        self._runContext = (job, outputNode, ctNode)
        self._setProgress(0.0)
        self._setStatus(_("Starting..."))
        self._setRunning(True)
        self._run.start()
        self._timer.start()

    def onCancel(self) -> None:
        if self._run is None:
            return
        self._run.cancel.set()
        self._setStatus(_("Cancelling..."))
        self._updateButtons()

    def _poll(self) -> None:
        run = self._run
        if run is None:
            self._timer.stop()
            return
        stage, fraction, done = run.progress()
        if not done:
            if not run.cancel.is_set():
                self._setProgress(fraction)
                if stage:
                    self._setStatus(_("Running: {stage}").format(stage=stage))
            return
        self._timer.stop()
        run.join()
        self._run = None
        self._finishRun(run)

    def _finishRun(self, run: BackgroundRun) -> None:
        result, error, details = run.outcome()
        job, outputNode, ctNode = self._runContext
        self._runContext = (None, None, None)
        try:
            if run.cancel.is_set() or isCancellation(error):
                self._setProgress(0.0)
                self._setStatus(_("Cancelled"))  # apply() is the only step that writes to the scene
                return
            if error is not None:
                self._setProgress(0.0)
                self._reportError(_("Tumor segmentation failed."), error, details)
                return
            with slicer.util.WaitCursor():
                segmentation = self.getLogic().apply(job, result, outputNode)
                self._showResult(segmentation, ctNode)
            self._setProgress(1.0)
            text = _("Done in {seconds:.1f} s on {device}: 'Tumor' in '{name}'.").format(
                seconds=time.monotonic() - run.startTime, device=result.device, name=segmentation.GetName())
            if job.messages:
                text += " " + " ".join(job.messages)  # e.g. fallback to the CPU, empty OOI
            self._setStatus(text)
        except Exception as applyError:
            self._reportError(_("The tumor segmentation could not be added to the scene."), applyError)
        finally:
            self._setRunning(False)

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

    def _confirmOutputNode(self, outputNode: Any) -> bool:
        """Ask before writing into a segmentation that already has segments."""
        if outputNode is None or not self._showDialogs:
            return True
        count = outputNode.GetSegmentation().GetNumberOfSegments()
        if count == 0:
            return True
        return slicer.util.confirmOkCancelDisplay(
            _("The output segmentation '{name}' already holds {count} segment(s). "
              "Write the 'Tumor' segment into it (an existing 'Tumor' segment is replaced)?\n\n"
              "Choose 'Create new segmentation' as output to leave it untouched.").format(
                name=outputNode.GetName(), count=count),
            windowTitle=_("CRC Segmentation"),
        )

    def _showResult(self, segmentation: Any, ctNode: Any) -> None:
        """Select the result, show it over the CT in the slice views and in 3D, and its statistics."""
        segmentation.CreateDefaultDisplayNodes()
        segmentation.CreateClosedSurfaceRepresentation()
        displayNode = segmentation.GetDisplayNode()
        if displayNode is not None:
            displayNode.SetVisibility(True)
            displayNode.SetVisibility3D(True)
        if self._parameterNode is not None:
            self._parameterNode.outputSegmentation = segmentation
        if ctNode is not None and ctNode.GetScene() is not None:
            slicer.util.setSliceViewerLayers(background=ctNode)
        self._showStatistics(segmentation)

    def _reportError(self, message: str, error: BaseException, details: str = "") -> None:
        details = details or "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self._setStatus(f"{message} {error}")
        if self._showDialogs:
            slicer.util.errorDisplay(f"{message}\n\n{error}", detailedText=details)

    # ------------------------------------------------------------------ scene and lifetime
    def _onSceneStartClose(self, caller: Any = None, event: Any = None) -> None:
        if self._run is not None:
            self._run.cancel.set()  # its nodes are going away: discard the result

    def _onSceneEndClose(self, caller: Any = None, event: Any = None) -> None:
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Stop a running job and drop observers (module widget cleanup, application exit)."""
        self._timer.stop()
        if self._run is not None:
            self._run.cancel.set()
            self._run.join(timeout=5.0)
            self._run = None
        for tag in self._sceneObservers:
            slicer.mrmlScene.RemoveObserver(tag)
        self._sceneObservers = []
        self.setParameterNode(None)
