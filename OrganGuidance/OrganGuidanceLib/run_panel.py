"""The Qt half of both SlicerCRC module panels: a ``RunController`` bound to a .ui file.

Every decision (the run state machine, the Apply rule, the install flow) is in
``run_controller.RunController`` and the panels' ``panel_state`` modules, which the tests drive
under slicer-core. This file only connects widgets to them: the parameter node to the .ui's
widgets, Apply and Cancel to the controller, a ``QTimer`` to ``RunController.poll``, the
controller's status, progress and button state back to the widgets, and Slicer's dialogs
to the controller's ``Dialogs``. Like the widget files, it runs only inside Slicer.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import qt
import slicer
import vtk
from slicer.i18n import tr as _

from OrganGuidanceLib.run_controller import (  # noqa: F401 - BackgroundRun and friends: the names this module had
    BackgroundRun,
    Dialogs,
    RunController,
    RunMessages,
    installTorch,
    installWithSlicer,
    isCancellation,
    pathText,
    singletonParameterNode,
)

POLL_INTERVAL_MS = 100
PARAMETER_NAME_PROPERTY = "SlicerParameterName"


def slicerDialogs(showDialogs: bool = True) -> Dialogs:
    """Slicer's message boxes as a controller's ``Dialogs`` (``showDialogs=False``: the silent defaults)."""
    if not showDialogs:
        return Dialogs(busy=slicer.util.WaitCursor)
    return Dialogs(
        askInstall=lambda question: bool(
            slicer.util.confirmOkCancelDisplay(question, windowTitle=_("Install Python packages"))),
        confirmOverwrite=lambda question, title: bool(slicer.util.confirmOkCancelDisplay(question, windowTitle=title)),
        showError=lambda text, details: slicer.util.errorDisplay(text, detailedText=details),
        busy=slicer.util.WaitCursor,
    )


def installShowingStatus(missing: Sequence[Any]) -> None:
    """``installWithSlicer``, after letting the status line say "Installing..." (pip blocks the GUI)."""
    slicer.app.processEvents()
    installWithSlicer(missing)


class RunPanelBase(qt.QWidget):
    """A module panel: the .ui widget, its parameter node and a ``RunController`` connected to each other.

    The .ui file has ``applyButton``, ``cancelButton``, ``statusLabel`` and ``progressBar``. A subclass
    loads its .ui file and builds its controller, hands both to this constructor, connects what else it
    has, calls ``initializeParameterNode`` and implements ``_sceneParameterNode``, ``_updateGui`` and
    ``_sections`` (and ``_labelComboBoxes`` where its combo boxes need readable texts).
    """

    def __init__(self, uiWidget: Any, controller: RunController, parent: Any = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self._guiTag: Any = None
        self._parameterObserver: Optional[int] = None

        layout = qt.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._uiWidget = uiWidget
        layout.addWidget(self._uiWidget)
        self.ui = slicer.util.childWidgetVariables(self._uiWidget)
        self._uiWidget.setMRMLScene(slicer.mrmlScene)

        self.ui.applyButton.clicked.connect(self.onApply)
        self.ui.cancelButton.clicked.connect(self.onCancel)
        self._timer = qt.QTimer(self)
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self._poll)
        controller.onChange = self._showRunState
        controller.onResult = self._showResult

        self._sceneObservers = [
            slicer.mrmlScene.AddObserver(slicer.mrmlScene.StartCloseEvent, self._onSceneStartClose),
            slicer.mrmlScene.AddObserver(slicer.mrmlScene.EndCloseEvent, self._onSceneEndClose),
        ]

    # ------------------------------------------------------------------ hooks
    def _sceneParameterNode(self) -> Any:
        """The module's parameter node in ``slicer.mrmlScene``."""
        raise NotImplementedError

    def _updateGui(self, *args: Any) -> None:
        """Show the parameter node's state (called whenever it is modified)."""
        raise NotImplementedError

    def _sections(self) -> Sequence[Any]:
        """The sections whose parameters must not change under a running job."""
        raise NotImplementedError

    def _labelComboBoxes(self) -> None:
        """Readable item texts; the connectors fill the combo boxes with the raw choice values."""

    # ------------------------------------------------------------------ logic and parameter node
    def getLogic(self) -> Any:
        return self.controller.getLogic()

    def parameterNode(self) -> Any:
        return self.controller.parameters

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self._sceneParameterNode())

    def setParameterNode(self, parameterNode: Any) -> None:
        previous = self.controller.parameters
        if previous is not None:
            previous.disconnectGui(self._guiTag)
            previous.RemoveObserver(self._parameterObserver)
        self.controller.setParameters(parameterNode)  # also picks the first CT volume
        if parameterNode is None:
            return
        # An explicit mapping (the same one connectGui builds) because connectParametersToGui
        # returns the tag that disconnectGui needs when the scene closes.
        mapping = {
            widget.property(PARAMETER_NAME_PROPERTY): widget
            for widget in self._uiWidget.findChildren(qt.QWidget)
            if widget.property(PARAMETER_NAME_PROPERTY)
        }
        self._guiTag = parameterNode.connectParametersToGui(mapping)
        self._labelComboBoxes()
        self._parameterObserver = parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._updateGui()

    @staticmethod
    def _setItemTexts(labels: Sequence[Tuple[Any, Dict[str, str]]]) -> None:
        """Replace each combo box's raw choice values by the readable texts given for them."""
        for comboBox, texts in labels:
            for index in range(comboBox.count):
                key = comboBox.itemText(index)
                if key in texts:
                    comboBox.setItemText(index, texts[key])  # the connector reads the index, not the text

    @staticmethod
    def _showRows(rows: Dict[str, bool], widgets: Dict[str, Tuple[Any, ...]]) -> None:
        """Show or hide each parameter's (label, field) widgets as ``rows`` says."""
        for name, visible in rows.items():
            for widget in widgets[name]:
                widget.setVisible(visible)

    # ------------------------------------------------------------------ controller -> widgets
    def _showRunState(self) -> None:
        controller = self.controller
        for section in self._sections():
            section.setEnabled(not controller.running)  # the parameters must not change under a running job
        self._setProgress(controller.progress)
        self.ui.statusLabel.setText(controller.status)
        self._updateButtons()

    def _updateButtons(self) -> None:
        """Apply, Cancel and Apply's tooltip as the controller's rule says; a blocker also goes to the status line."""
        state = self.controller.buttons()
        self.ui.applyButton.setEnabled(state.applyEnabled)
        self.ui.applyButton.setToolTip(state.applyTooltip)
        self.ui.cancelButton.setEnabled(state.cancelEnabled)
        if state.applyReason:
            self.ui.statusLabel.setText(state.applyReason)

    def _setProgress(self, fraction: Optional[float]) -> None:
        if fraction is None:
            self.ui.progressBar.setRange(0, 0)  # busy indicator when the stage gives no fraction
            return
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(int(round(100 * min(max(float(fraction), 0.0), 1.0))))

    def _setStatus(self, text: str) -> None:
        self.controller.setStatus(text)

    def _reportError(self, message: str, error: BaseException) -> None:
        self.controller.reportError(message, error)

    def _showResult(self, segmentation: Any, ctNode: Any) -> None:
        """Show the result over the CT in the slice views."""
        if ctNode is not None and ctNode.GetScene() is not None:
            slicer.util.setSliceViewerLayers(background=ctNode)

    # ------------------------------------------------------------------ widgets -> controller
    def onApply(self) -> None:
        if self.controller.apply():
            self.startPolling()

    def startPolling(self) -> None:
        """Poll the controller's worker (started by Apply or another step, e.g. propagation) until it ends."""
        self._showRunState()
        self._timer.start()

    def onCancel(self) -> None:
        self.controller.cancel()

    def _poll(self) -> None:
        if not self.controller.poll():
            self._timer.stop()
        self._showRunState()

    # ------------------------------------------------------------------ scene and lifetime
    def _onSceneStartClose(self, caller: Any = None, event: Any = None) -> None:
        self.controller.sceneClosing()

    def _onSceneEndClose(self, caller: Any = None, event: Any = None) -> None:
        self.initializeParameterNode()  # the scene's parameter node was reset

    def cleanup(self) -> None:
        """Stop a running job and drop observers (module widget cleanup, application exit)."""
        self._timer.stop()
        self.controller.stop()
        for tag in self._sceneObservers:
            slicer.mrmlScene.RemoveObserver(tag)
        self._sceneObservers = []
        self.setParameterNode(None)
