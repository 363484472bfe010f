"""The interactive-refinement section of the CRC Segmentation panel: the Qt binding of ``RefinementController``.

The controller (``refinement_controller``, Qt-free, tested under slicer-core) decides: prompt modes and
Slicer's place mode, the U-SAM model, prompt / propagate / undo / redo and what each button allows. This
file connects the section's widgets to it, shows its status and binds ``choices.REFINEMENT_SHORTCUTS``
as ``QShortcut``s on the main window (as the Segment Editor binds its keys), active while the panel is
shown and the section is open.
"""
from __future__ import annotations

from typing import Any, List, Tuple

import qt
import slicer

from CRCSegmentationLib.choices import PROMPT_MODES
from CRCSegmentationLib.refinement_controller import RefinementController, refinementRows, usamModelChoices

# Prompt mode -> its checkable button in the .ui (the button text names the mode's key).
MODE_BUTTONS = {mode: f"{mode}ModeButton" for mode in PROMPT_MODES}



def fillCatalogueComboBox(comboBox: Any, choices: List[Tuple[str, str]]) -> None:
    """Catalogue models in a combo box: the item data is the catalogue name, the tooltip says what it is."""
    comboBox.blockSignals(True)
    comboBox.clear()
    for name, description in choices:
        comboBox.addItem(name, name)
        comboBox.setItemData(comboBox.count - 1, description, qt.Qt.ToolTipRole)
    comboBox.blockSignals(False)

class RefinementSection:
    """The widgets of the "Point refinement" section (in the panel's .ui) bound to a ``RefinementController``."""

    def __init__(self, panel: Any, logic: Any = None) -> None:
        self.panel = panel
        self.ui = panel.ui
        self.controller = RefinementController(panel.controller, logic)
        self.controller.onChange = self._showState
        # After the markups interaction has finished with the prompt (not inside its event).
        self.controller.onPromptPlaced = lambda node: qt.QTimer.singleShot(0, lambda: self.applyPrompt(node))
        self.modeButtons = {mode: getattr(self.ui, name) for mode, name in MODE_BUTTONS.items()}
        for mode, button in self.modeButtons.items():
            button.setCheckable(True)
            button.clicked.connect(lambda checked, mode=mode: self._onModeClicked(mode, checked))
        self.ui.propagateButton.clicked.connect(self.onPropagate)
        self.ui.undoButton.clicked.connect(self.controller.undo)
        self.ui.redoButton.clicked.connect(self.controller.redo)
        self.ui.clearPromptsButton.clicked.connect(self.controller.clearPrompts)
        self.ui.usamModelComboBox.currentIndexChanged.connect(self._onModelChosen)
        self.ui.refinementCollapsibleButton.contentsCollapsed.connect(self._onCollapsed)
        self.shortcuts: List[Any] = []
        self._fillModelComboBox()
        self._bindShortcuts()
        self.updateButtons()

    # ------------------------------------------------------------------ shortcuts
    def _bindShortcuts(self) -> None:
        """One QShortcut per key on the main window (the keys work over the slice views), off until active."""
        mainWindow = slicer.util.mainWindow()
        for key, action in self.controller.shortcutActions().items():
            shortcut = qt.QShortcut(qt.QKeySequence(key), mainWindow if mainWindow is not None else self.panel)
            shortcut.setEnabled(False)
            shortcut.activated.connect(action)
            self.shortcuts.append(shortcut)

    def setShortcutsActive(self, visible: bool) -> None:
        """Keys act only while the panel is shown and the section is open (elsewhere they are Slicer's)."""
        active = bool(visible) and not self.ui.refinementCollapsibleButton.collapsed
        for shortcut in self.shortcuts:
            shortcut.setEnabled(active)

    # ------------------------------------------------------------------ models
    def _fillModelComboBox(self) -> None:
        """The catalogue's U-SAM models; the item data is the catalogue name, the tooltip what it is."""
        choices, problem = usamModelChoices()
        fillCatalogueComboBox(self.ui.usamModelComboBox, choices)
        self.modelNames = [name for name, _description in choices]
        self.modelProblem = problem  # shown instead of a description: the file choice still works

    def _onModelChosen(self, index: int) -> None:
        p = self.panel.parameterNode()
        if p is not None and index >= 0:
            p.usamModelName = self.ui.usamModelComboBox.itemData(index) or ""

    def updateGui(self, parameters: Any) -> None:
        """Rows and the model combo box from the parameter node (called by the panel's GUI update)."""
        self.controller.chooseModel(self.modelNames)
        rows = refinementRows(parameters)
        ui = self.ui
        for widget in (ui.usamModelLabel, ui.usamModelComboBox, ui.usamModelInfoLabel):
            widget.setVisible(rows["usamModelName"])
        for widget in (ui.usamCheckpointLabel, ui.usamCheckpointPathLineEdit):
            widget.setVisible(rows["usamCheckpoint"])
        index = ui.usamModelComboBox.findData(parameters.usamModelName)
        if index >= 0 and index != ui.usamModelComboBox.currentIndex:
            ui.usamModelComboBox.setCurrentIndex(index)
        if index >= 0:
            ui.usamModelInfoLabel.setText(ui.usamModelComboBox.itemData(index, qt.Qt.ToolTipRole) or "")
        elif self.modelProblem:
            ui.usamModelInfoLabel.setText(self.modelProblem)
        self.updateButtons()

    # ------------------------------------------------------------------ prompts
    def _onCollapsed(self, collapsed: bool) -> None:
        if not collapsed:
            self.controller.observePointLists(create=True)
        else:
            self.controller.stopPlacing()
        self.setShortcutsActive(self.panel.isVisible())

    def _onModeClicked(self, mode: str, checked: bool) -> None:
        if checked:
            self.controller.setMode(mode)
        else:
            self.controller.stopPlacing()
        self.updateButtons()

    def observePointLists(self, create: bool) -> None:
        self.controller.observePointLists(create)

    def applyPrompt(self, node: Any) -> None:
        """A prompt to 3D runs in the panel's worker, with its progress bar and Cancel."""
        if self.controller.applyPrompt(node) and self.panel.controller.running:
            self.panel.startPolling()

    def onPropagate(self) -> None:
        """Propagation runs in the panel's worker, with its progress bar and Cancel."""
        if self.controller.propagate():
            self.panel.startPolling()

    def _showState(self) -> None:
        self.ui.refinementStatusLabel.setText(self.controller.status)
        self.updateButtons()

    def updateButtons(self) -> None:
        controller = self.controller
        reason = controller.promptReason()
        placing = controller.placing()
        for mode, button in self.modeButtons.items():
            button.setEnabled(reason == "")
            button.setChecked(placing == mode)
        self.ui.modeReasonLabel.setText(reason)
        self.ui.modeReasonLabel.setVisible(bool(reason))
        self.ui.propagateButton.setEnabled(controller.canPropagate)
        self.ui.undoButton.setEnabled(controller.canUndo)
        self.ui.redoButton.setEnabled(controller.canRedo)

    # ------------------------------------------------------------------ lifetime
    def sceneClosed(self) -> None:
        self.controller.sceneClosed()

    def cleanup(self) -> None:
        self.controller.removeObservers()
        for shortcut in self.shortcuts:
            shortcut.setEnabled(False)
            shortcut.setParent(None)
        self.shortcuts = []
