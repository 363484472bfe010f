"""The point-refinement section of the CRC Segmentation panel: the Qt binding of ``panel_state.RefinementController``.

The controller (Qt-free, tested under slicer-core) observes the green and red point lists,
loads U-SAM, refines, propagates in the panel's worker and undoes; this file connects the
section's place widgets and buttons to it and shows its status.
"""
from __future__ import annotations

from typing import Any

import qt
import slicer

from CRCSegmentationLib.panel_state import RefinementController


class RefinementSection:
    """The widgets of the "Point refinement" section (in the panel's .ui) bound to a ``RefinementController``."""

    def __init__(self, panel: Any, logic: Any = None) -> None:
        self.panel = panel
        self.ui = panel.ui
        self.controller = RefinementController(panel.controller, logic)
        self.controller.onChange = self._showState
        # After the markups interaction has finished with the point (not inside its event).
        self.controller.onPointPlaced = lambda role: qt.QTimer.singleShot(0, lambda: self.controller.refine(role))
        self.ui.propagateButton.clicked.connect(self.onPropagate)
        self.ui.undoButton.clicked.connect(self.controller.undo)
        self.ui.clearPointsButton.clicked.connect(self.controller.clearPoints)
        self.ui.refinementCollapsibleButton.contentsCollapsed.connect(self._onCollapsed)
        for placeWidget in (self.ui.positivePointsPlaceWidget, self.ui.negativePointsPlaceWidget):
            placeWidget.setMRMLScene(slicer.mrmlScene)
            placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
            placeWidget.buttonsVisible = False
            placeWidget.placeButton().show()
        self.updateButtons()

    def _onCollapsed(self, collapsed: bool) -> None:
        if not collapsed:
            self.observePointLists(create=True)

    def observePointLists(self, create: bool) -> None:
        self.controller.observePointLists(create)
        lists = self.controller.pointLists
        self.ui.positivePointsPlaceWidget.setCurrentNode(lists.get("positive"))
        self.ui.negativePointsPlaceWidget.setCurrentNode(lists.get("negative"))

    def onPropagate(self) -> None:
        """Propagation runs in the panel's worker, with its progress bar and Cancel."""
        if self.controller.propagate():
            self.panel.startPolling()

    def _showState(self) -> None:
        self.ui.refinementStatusLabel.setText(self.controller.status)
        self.updateButtons()

    def updateButtons(self) -> None:
        self.ui.propagateButton.setEnabled(self.controller.canPropagate)
        self.ui.undoButton.setEnabled(self.controller.canUndo)

    def sceneClosed(self) -> None:
        self.controller.sceneClosed()

    def cleanup(self) -> None:
        self.controller.removePointObservers()
