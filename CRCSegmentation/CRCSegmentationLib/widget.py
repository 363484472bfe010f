"""CRC Segmentation panel: the Qt binding of ``panel_state.CRCSegmentationController``.

It builds the GUI from ``Resources/UI/CRCSegmentation.ui``, keeps the user's choices in a
parameter node (``CRCSegmentationParameterNode``, saved with the scene) and connects the widgets
to the controller, which decides what runs (prepare, compute in a worker, apply or discard),
what Apply needs and what to install (``panel_state`` and ``OrganGuidanceLib.run_controller``,
Qt-free and tested under slicer-core). The point-refinement section is ``refinement_panel``.

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

from CRCSegmentationLib.choices import (
    CONVENTIONS,
    DEVICE_LABELS,
    DEVICES,
    GUIDANCE_SOURCES,
    MODEL_SOURCES,
    ORGAN_SOURCES,
    USAM_MODEL_SOURCES,
)
from CRCSegmentationLib.panel_state import (
    CRCSegmentationController,
    catalogueChoices,
    enabledFields,
    statisticsTable,
    visibleRows,
)
from CRCSegmentationLib.refinement_panel import RefinementSection, fillCatalogueComboBox
from OrganGuidanceLib.run_panel import RunPanelBase, installShowingStatus, singletonParameterNode, slicerDialogs

MODULE_NAME = "CRCSegmentation"
RESOURCES = pathlib.Path(__file__).resolve().parent.parent / "Resources"

OrganNode = Union[slicer.vtkMRMLLabelMapVolumeNode, slicer.vtkMRMLSegmentationNode, None]


@parameterNodeWrapper
class CRCSegmentationParameterNode:
    """What the user chose, saved with the scene; ``panel_state.settingsFromParameterNode`` makes the settings.

    Defaults equal ``SegmentationParameters``'s (Testing/test_slicer_module_static.py checks
    it); literals, because the engine imports torch. Annotations stay Python 3.9-evaluable.
    ``modelName`` and ``usamModelName`` are set from their combo boxes (items from the catalogue).
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
    fastPreset: bool = False  # FLARE24 §3.2: core.segmentation.PRESETS["fast"] (tile step 7/8, no mirroring)
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
    exportDicom: bool = False  # also DICOM SEG, RTSTRUCT and SR (a CT loaded from DICOM)
    usamModelSource: Annotated[str, Choice(USAM_MODEL_SOURCES)] = "catalogue"
    usamModelName: str = ""  # set from the U-SAM combo box (catalogue models of kind "usam")
    usamCheckpoint: pathlib.Path  # a .pt checkpoint or a bundle's crcseg_model.json (usamModelSource "file")
    promptTo3d: bool = True  # one prompt to 3D: usam.refinement.prompt_to_3d; off: the prompted slice only
    propagationMm: Annotated[float, WithinRange(0.0, 200.0)] = 40.0  # = usam.refinement.PropagationSettings.max_distance_mm


def getParameterNode(scene) -> CRCSegmentationParameterNode:
    """The module's singleton parameter node in ``scene``, created on first use."""
    return CRCSegmentationParameterNode(singletonParameterNode(scene, MODULE_NAME))


class CRCSegmentationPanel(RunPanelBase):
    """The module's GUI. Receives its logic in the constructor so tests can hand it another."""

    def __init__(self, logic: Any = None, parent: Any = None, showDialogs: bool = True) -> None:
        uiWidget = slicer.util.loadUI(str(RESOURCES / "UI" / f"{MODULE_NAME}.ui"))
        controller = CRCSegmentationController(slicer.mrmlScene, logic, slicerDialogs(showDialogs),
                                               installShowingStatus, slicer.app.applicationVersion)
        super().__init__(uiWidget, controller, parent)
        self.ui.exportButton.clicked.connect(self.onExport)
        self.ui.modelComboBox.currentIndexChanged.connect(self._onModelChosen)
        self._fillModelComboBox()
        self.refinement = RefinementSection(self)
        self.initializeParameterNode()

    def _sceneParameterNode(self) -> CRCSegmentationParameterNode:
        return getParameterNode(slicer.mrmlScene)

    def settings(self):
        return self.controller.settings()

    # ------------------------------------------------------------------ models
    def _fillModelComboBox(self) -> None:
        """Catalogue models; the item data is the catalogue name, the text says what it is."""
        choices, problem = catalogueChoices()
        if problem:
            self.ui.modelInfoLabel.setText(problem)
        fillCatalogueComboBox(self.ui.modelComboBox, choices)
        self.controller.modelNames = [name for name, _description in choices]

    def _onModelChosen(self, index: int) -> None:
        p = self.parameterNode()
        if p is not None and index >= 0:
            p.modelName = self.ui.modelComboBox.itemData(index) or ""

    # ------------------------------------------------------------------ parameter node <-> GUI
    def initializeParameterNode(self) -> None:
        super().initializeParameterNode()  # the controller picks the CT, the guidance node and the model
        self.refinement.observePointLists(create=False)  # point lists of a loaded scene; new ones when it opens

    def _labelComboBoxes(self) -> None:
        """Readable item texts; the connectors fill the combo boxes with the raw choice values."""
        conventions = {"totalsegmentator": _("TotalSegmentator (task total)"), "word": _("WORD")}
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
            (self.ui.guidanceConventionComboBox, conventions),
            (self.ui.organConventionComboBox, conventions),
            (self.ui.modelSourceComboBox, {"catalogue": _("Model catalogue"), "folder": _("Model folder")}),
            (self.ui.usamModelSourceComboBox, {"catalogue": _("Model catalogue"), "file": _("Checkpoint or bundle file")}),
            (self.ui.deviceComboBox, {name: _(label) for name, label in DEVICE_LABELS.items()}),
        ]
        self._setItemTexts(labels)

    def _updateGui(self, *args: Any) -> None:
        p = self.parameterNode()
        if p is None:
            return
        ui = self.ui
        self._showRows(visibleRows(p), {
            "guidanceNode": (ui.guidanceNodeLabel, ui.guidanceNodeSelector),
            "guidanceConvention": (ui.guidanceConventionLabel, ui.guidanceConventionComboBox),
            "organSource": (ui.organSourceLabel, ui.organSourceComboBox),
            "organNode": (ui.organNodeLabel, ui.organNodeSelector),
            "organFile": (ui.organFileLabel, ui.organFilePathLineEdit),
            "organConvention": (ui.organConventionLabel, ui.organConventionComboBox),
            "modelName": (ui.modelLabel, ui.modelComboBox),
            "modelFolder": (ui.modelFolderLabel, ui.modelFolderPathLineEdit),
        })
        index = ui.modelComboBox.findData(p.modelName)
        if index >= 0 and index != ui.modelComboBox.currentIndex:
            ui.modelComboBox.setCurrentIndex(index)
        if p.modelSource == "catalogue" and index >= 0:
            ui.modelInfoLabel.setText(ui.modelComboBox.itemData(index, qt.Qt.ToolTipRole) or "")
        enabled = enabledFields(p)
        ui.ooiMarginSpinBox.setEnabled(enabled["ooiMarginMm"])
        ui.sliceFilterModelLabel.setEnabled(enabled["sliceFilterModel"])
        ui.sliceFilterModelPathLineEdit.setEnabled(enabled["sliceFilterModel"])
        ui.statisticsTableView.setMRMLTableNode(statisticsTable(p.outputSegmentation))
        if hasattr(self, "refinement"):  # built after the run's widgets
            self.refinement.updateGui(p)
        self._updateButtons()

    def _updateButtons(self) -> None:
        super()._updateButtons()
        self.ui.exportButton.setEnabled(self.controller.canExport())
        self.ui.exportDicomCheckBox.setEnabled(self.controller.canExportDicom())
        if hasattr(self, "refinement"):  # the run buttons are set up before the refinement section
            self.refinement.updateButtons()

    def _sections(self) -> Sequence[Any]:
        return (self.ui.inputsCollapsibleButton, self.ui.modelCollapsibleButton,
                self.ui.advancedCollapsibleButton, self.ui.outputCollapsibleButton,
                self.ui.refinementCollapsibleButton, self.ui.resultsCollapsibleButton)

    # ------------------------------------------------------------------ running
    def onExport(self) -> None:
        self.controller.export()

    def _showResult(self, segmentation: Any, ctNode: Any) -> None:
        """Show the result over the CT in the slice views, and its statistics."""
        super()._showResult(segmentation, ctNode)
        self.ui.statisticsTableView.setMRMLTableNode(statisticsTable(segmentation))

    # ------------------------------------------------------------------ scene and lifetime
    def showEvent(self, event: Any) -> None:
        """The refinement keys act while the module is shown (Slicer hides the panel of another module)."""
        self.refinement.setShortcutsActive(True)

    def hideEvent(self, event: Any) -> None:
        self.refinement.setShortcutsActive(False)

    def _onSceneEndClose(self, caller: Any = None, event: Any = None) -> None:
        self.refinement.sceneClosed()
        super()._onSceneEndClose(caller, event)

    def cleanup(self) -> None:
        self.refinement.cleanup()
        super().cleanup()
