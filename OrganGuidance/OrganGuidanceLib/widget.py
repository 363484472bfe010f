"""Organ Guidance panel: the Qt binding of ``panel_state.OrganGuidanceController``.

It builds the GUI from ``Resources/UI/OrganGuidance.ui``, keeps the user's choices in a
parameter node (``OrganGuidanceParameterNode``, saved with the scene) and connects the widgets
to the controller, which decides what runs, what Apply needs and what to install
(``panel_state`` and ``run_controller``, Qt-free and tested under slicer-core).

Only dependency-free modules of the package are imported at the top: the engine imports
``edt`` and ``cc3d``, which may not be installed yet when Slicer loads the module.
"""
from __future__ import annotations

import pathlib
from typing import Annotated, Any, Dict, List, Sequence, Tuple, Union

import slicer
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from OrganGuidanceLib.choices import CONVENTIONS, DEVICE_LABELS, DEVICES, PRIMARY_KINDS, SECONDARY_KINDS
from OrganGuidanceLib.labels import DEFAULT_ORGAN_SET, ORGAN_SETS
from OrganGuidanceLib.panel_state import OrganGuidanceController, enabledGroups, visibleRows
from OrganGuidanceLib.run_panel import RunPanelBase, installShowingStatus, singletonParameterNode, slicerDialogs

MODULE_NAME = "OrganGuidance"
RESOURCES = pathlib.Path(__file__).resolve().parent.parent / "Resources"

OrganNode = Union[slicer.vtkMRMLLabelMapVolumeNode, slicer.vtkMRMLSegmentationNode, None]


@parameterNodeWrapper
class OrganGuidanceParameterNode:
    """What the user chose, saved with the scene; ``panel_state.settingsFromParameterNode`` makes the settings.

    The numeric defaults equal ``GuidanceParameters``'s (Testing/test_slicer_module_static.py
    checks it). They are literals because guidance.py imports edt and cc3d, which may not
    be installed when this module loads. Annotations stay Python 3.9-evaluable (no ``X | Y``):
    parameterNodeWrapper evaluates them with ``typing.get_type_hints``.
    """

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    primaryKind: Annotated[str, Choice(PRIMARY_KINDS)] = "totalsegmentator"
    primaryNode: OrganNode
    primaryFile: pathlib.Path
    primaryConvention: Annotated[str, Choice(CONVENTIONS)] = "totalsegmentator"
    primaryMappingFile: pathlib.Path
    secondaryKind: Annotated[str, Choice(SECONDARY_KINDS)] = "none"
    secondaryNode: OrganNode
    secondaryFile: pathlib.Path
    secondaryConvention: Annotated[str, Choice(CONVENTIONS)] = "word"
    secondaryMappingFile: pathlib.Path
    organSet: Annotated[str, Choice(tuple(ORGAN_SETS))] = DEFAULT_ORGAN_SET
    dilationMm: Annotated[float, WithinRange(0.0, 50.0)] = 5.0
    wallWidthMm: Annotated[float, WithinRange(0.5, 20.0)] = 3.0
    bodyCrop: bool = True
    bodyThresholdHu: Annotated[float, WithinRange(-1000.0, 1000.0)] = 50.0
    cropMarginMm: Annotated[float, WithinRange(0.0, 100.0)] = 10.0
    fast: bool = True
    device: Annotated[str, Choice(DEVICES)] = "auto"
    outputSegmentation: slicer.vtkMRMLSegmentationNode


def getParameterNode(scene) -> OrganGuidanceParameterNode:
    """The module's singleton parameter node in ``scene``, created on first use."""
    return OrganGuidanceParameterNode(singletonParameterNode(scene, MODULE_NAME))


def organSetLabel(key: str) -> str:
    titles = {"gi_tract": _("GI tract"), "lower_gi": _("Lower GI tract"), "colorectum": _("Colon and rectum")}
    organs = ", ".join(organ.replace("_", " ") for organ in ORGAN_SETS[key])
    return f"{titles.get(key, key)} ({organs})"


class OrganGuidancePanel(RunPanelBase):
    """The module's GUI. Receives its logic in the constructor so tests can hand it another."""

    def __init__(self, logic: Any = None, parent: Any = None, showDialogs: bool = True) -> None:
        uiWidget = slicer.util.loadUI(str(RESOURCES / "UI" / f"{MODULE_NAME}.ui"))
        controller = OrganGuidanceController(slicer.mrmlScene, logic, slicerDialogs(showDialogs),
                                             installShowingStatus, slicer.app.applicationVersion)
        super().__init__(uiWidget, controller, parent)
        self.initializeParameterNode()

    def _sceneParameterNode(self) -> OrganGuidanceParameterNode:
        return getParameterNode(slicer.mrmlScene)

    def settings(self):
        return self.controller.settings()

    # ------------------------------------------------------------------ parameter node <-> GUI
    def _labelComboBoxes(self) -> None:
        """Readable item texts; the connectors fill the combo boxes with the raw choice values."""
        sourceLabels = {
            "totalsegmentator": _("TotalSegmentator (run on the CT)"),
            "node": _("Label map or segmentation in the scene"),
            "file": _("Label map file"),
            "none": _("None"),
        }
        conventionLabels = {
            "totalsegmentator": _("TotalSegmentator (task total)"),
            "word": _("WORD"),
            "json": _("JSON mapping file"),
        }
        deviceLabels = {name: _(label) for name, label in DEVICE_LABELS.items()}
        labels: List[Tuple[Any, Dict[str, str]]] = [
            (self.ui.primarySourceComboBox, sourceLabels),
            (self.ui.secondarySourceComboBox, sourceLabels),
            (self.ui.primaryConventionComboBox, conventionLabels),
            (self.ui.secondaryConventionComboBox, conventionLabels),
            (self.ui.organSetComboBox, {key: organSetLabel(key) for key in ORGAN_SETS}),
            (self.ui.deviceComboBox, deviceLabels),
        ]
        self._setItemTexts(labels)

    def _updateGui(self, *args: Any) -> None:
        p = self.parameterNode()
        if p is None:
            return
        ui = self.ui
        self._showRows(visibleRows(p), {
            "primaryNode": (ui.primaryNodeLabel, ui.primaryNodeSelector),
            "primaryFile": (ui.primaryFileLabel, ui.primaryFilePathLineEdit),
            "primaryConvention": (ui.primaryConventionLabel, ui.primaryConventionComboBox),
            "primaryMappingFile": (ui.primaryMappingLabel, ui.primaryMappingPathLineEdit),
            "secondaryNode": (ui.secondaryNodeLabel, ui.secondaryNodeSelector),
            "secondaryFile": (ui.secondaryFileLabel, ui.secondaryFilePathLineEdit),
            "secondaryConvention": (ui.secondaryConventionLabel, ui.secondaryConventionComboBox),
            "secondaryMappingFile": (ui.secondaryMappingLabel, ui.secondaryMappingPathLineEdit),
        })
        enabled = enabledGroups(p)
        for widget in (ui.fastCheckBox, ui.deviceLabel, ui.deviceComboBox):
            widget.setEnabled(enabled["totalSegmentator"])
        for widget in (ui.bodyThresholdLabel, ui.bodyThresholdSpinBox, ui.cropMarginLabel, ui.cropMarginSpinBox):
            widget.setEnabled(enabled["bodyCrop"])
        self._updateButtons()

    def _sections(self) -> Sequence[Any]:
        return (self.ui.inputsCollapsibleButton, self.ui.organMasksCollapsibleButton,
                self.ui.guidanceCollapsibleButton, self.ui.outputCollapsibleButton,
                self.ui.advancedCollapsibleButton)
