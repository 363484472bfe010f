"""Organ Guidance panel: the Qt GUI over ``OrganGuidanceLogic``.

It builds the GUI from ``Resources/UI/OrganGuidance.ui`` and keeps the user's choices in a
parameter node (``OrganGuidanceParameterNode``, saved with the scene); running the engine
(prepare on the main thread, compute in a worker thread with Cancel, apply on the main
thread) and installing missing packages are ``run_panel.RunPanelBase``'s, shared with the
CRC Segmentation panel. Only this file, ``run_panel`` and the module file import Qt, CTK or
the Slicer application.

Only dependency-free modules of the package (``install``, ``labels``) are
imported at the top: the engine imports ``edt`` and ``cc3d``, which may not be
installed yet when Slicer loads the module, so it is imported after the
dependency check has offered to install them.
"""
from __future__ import annotations

import importlib
import pathlib
from typing import Annotated, Any, Dict, List, Optional, Sequence, Tuple, Union

import slicer
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from . import install
from .labels import DEFAULT_ORGAN_SET, ORGAN_SETS
from .run_panel import RunMessages, RunPanelBase, pathText, singletonParameterNode

MODULE_NAME = "OrganGuidance"
RESOURCES = pathlib.Path(__file__).resolve().parent.parent / "Resources"

# Values stored in the parameter node; they are the strings OrganSourceChoice expects.
PRIMARY_KINDS = ("totalsegmentator", "node", "file")
SECONDARY_KINDS = ("none", "node", "file")  # TotalSegmentator twice would add nothing
CONVENTIONS = ("totalsegmentator", "word", "json")  # "json": the mapping file field gives the path
DEVICES = ("auto", "cuda", "cpu")

OrganNode = Union[slicer.vtkMRMLLabelMapVolumeNode, slicer.vtkMRMLSegmentationNode, None]


@parameterNodeWrapper
class OrganGuidanceParameterNode:
    """What the user chose, saved with the scene; ``settingsFromParameterNode`` makes the settings.

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


def sourceChoice(kind: str, node: Any, filePath: Optional[pathlib.Path], convention: str,
                 mappingFile: Optional[pathlib.Path]):
    """One organ source of the GUI as the logic's ``OrganSourceChoice``."""
    from .logic import OrganSourceChoice

    if kind == "totalsegmentator":
        convention = "totalsegmentator"  # its own labels, whatever the hidden combo box says
    elif convention == "json":
        convention = pathText(mappingFile)
    return OrganSourceChoice(
        kind=kind,
        node=node if kind == "node" else None,
        file_path=pathText(filePath) if kind == "file" else "",
        convention=convention,
    )


def settingsFromParameterNode(parameterNode: OrganGuidanceParameterNode):
    """The parameter node as ``OrganGuidanceSettings`` (imports the engine: dependencies must be installed)."""
    from .guidance import GuidanceParameters
    from .logic import OrganGuidanceSettings

    p = parameterNode
    return OrganGuidanceSettings(
        primary=sourceChoice(p.primaryKind, p.primaryNode, p.primaryFile, p.primaryConvention, p.primaryMappingFile),
        secondary=sourceChoice(
            p.secondaryKind, p.secondaryNode, p.secondaryFile, p.secondaryConvention, p.secondaryMappingFile
        ),
        guidance=GuidanceParameters(
            organ_set=p.organSet,
            dilation_mm=p.dilationMm,
            wall_width_mm=p.wallWidthMm,
            body_crop=p.bodyCrop,
            body_threshold_hu=p.bodyThresholdHu,
            crop_margin_mm=p.cropMarginMm,
        ),
        fast=p.fast,
        device=p.device,
    )


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
        super().__init__(uiWidget, logic, parent, showDialogs)
        self._coreMissing = bool(install.missing_requirements(install.CORE_REQUIREMENTS))
        self.initializeParameterNode()

    # ------------------------------------------------------------------ logic and settings
    def _createLogic(self):
        from .logic import OrganGuidanceLogic

        return OrganGuidanceLogic(slicer.mrmlScene)

    def _sceneParameterNode(self) -> OrganGuidanceParameterNode:
        return getParameterNode(slicer.mrmlScene)

    def settings(self):
        return settingsFromParameterNode(self._parameterNode)

    def usesTotalSegmentator(self) -> bool:
        p = self._parameterNode
        return p is not None and "totalsegmentator" in (p.primaryKind, p.secondaryKind)

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
        deviceLabels = {"auto": _("Auto (GPU when available)"), "cuda": _("GPU (CUDA)"), "cpu": _("CPU")}
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
        p = self._parameterNode
        if p is None:
            return
        primaryImported = p.primaryKind in ("node", "file")
        secondaryImported = p.secondaryKind in ("node", "file")
        rows: Sequence[Tuple[Any, Any, bool]] = (
            (self.ui.primaryNodeLabel, self.ui.primaryNodeSelector, p.primaryKind == "node"),
            (self.ui.primaryFileLabel, self.ui.primaryFilePathLineEdit, p.primaryKind == "file"),
            (self.ui.primaryConventionLabel, self.ui.primaryConventionComboBox, primaryImported),
            (self.ui.primaryMappingLabel, self.ui.primaryMappingPathLineEdit,
             primaryImported and p.primaryConvention == "json"),
            (self.ui.secondaryNodeLabel, self.ui.secondaryNodeSelector, p.secondaryKind == "node"),
            (self.ui.secondaryFileLabel, self.ui.secondaryFilePathLineEdit, p.secondaryKind == "file"),
            (self.ui.secondaryConventionLabel, self.ui.secondaryConventionComboBox, secondaryImported),
            (self.ui.secondaryMappingLabel, self.ui.secondaryMappingPathLineEdit,
             secondaryImported and p.secondaryConvention == "json"),
        )
        for label, field, visible in rows:
            label.setVisible(visible)
            field.setVisible(visible)
        usesTotalSegmentator = self.usesTotalSegmentator()
        for widget in (self.ui.fastCheckBox, self.ui.deviceLabel, self.ui.deviceComboBox):
            widget.setEnabled(usesTotalSegmentator)
        for widget in (self.ui.bodyThresholdLabel, self.ui.bodyThresholdSpinBox,
                       self.ui.cropMarginLabel, self.ui.cropMarginSpinBox):
            widget.setEnabled(p.bodyCrop)
        self._updateButtons()

    def _sections(self) -> Sequence[Any]:
        return (self.ui.inputsCollapsibleButton, self.ui.organMasksCollapsibleButton,
                self.ui.guidanceCollapsibleButton, self.ui.outputCollapsibleButton,
                self.ui.advancedCollapsibleButton)

    # ------------------------------------------------------------------ dependencies
    def _ensureDependencies(self) -> bool:
        """True when every package of the run imports; otherwise ask, then install (if this Python can)."""
        required = install.requirements(totalsegmentator=self.usesTotalSegmentator())
        missing = install.missing_requirements(required)
        if not missing:
            return True
        if not self._checkInstallable(missing):
            return False
        question = "\n\n".join([
            _("Organ Guidance needs Python packages that are not installed yet:"),
            install.describe(missing),
            _("Install them now? This needs an internet connection and can take several minutes, "
              "during which Slicer does not respond."),
        ])
        if not self._askToInstall(question):
            return False
        self._setStatus(_("Installing Python packages..."))
        slicer.app.processEvents()
        if not self._installRequirements(missing):
            return False
        importlib.invalidate_caches()
        self._coreMissing = bool(install.missing_requirements(install.CORE_REQUIREMENTS))
        if not self._allInstalled(
            required, _("These packages are still missing after installation; restart Slicer and try again:")
        ):
            return False
        self._setStatus(_("Python packages installed."))
        return True

    # ------------------------------------------------------------------ running
    def _runMessages(self) -> RunMessages:
        return RunMessages(
            applyTooltip=_("Compute the organs-of-interest mask, the bowel wall and the body crop."),
            preparing=_("Preparing inputs..."),
            startFailed=_("Organ guidance could not start."),
            runFailed=_("Organ guidance failed."),
            applyFailed=_("The organ guidance result could not be added to the scene."),
            overwriteQuestion=_("The output segmentation '{name}' already holds {count} segment(s). "
                                "Write the organ guidance segments into it?\n\n"
                                "Choose 'Create new segmentation' as output to leave it untouched."),
            title=_("Organ Guidance"),
        )

    def _doneText(self, seconds: float, job: Any, result: Any, segmentation: Any) -> str:
        return _("Done in {seconds:.1f} s: {count} segments in '{name}'.").format(
            seconds=seconds,
            count=segmentation.GetSegmentation().GetNumberOfSegments(),
            name=segmentation.GetName(),
        )
