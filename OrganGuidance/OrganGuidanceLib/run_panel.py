"""The part of a SlicerCRC module panel that does not depend on the module: runs and installs.

Both modules' panels (``OrganGuidanceLib.widget.OrganGuidancePanel`` and
``CRCSegmentationLib.widget.CRCSegmentationPanel``) subclass ``RunPanelBase``, which runs
the engine in three steps:

- ``logic.prepare`` on the main thread (reads MRML nodes, checks inputs);
- ``logic.compute`` in a worker thread (``BackgroundRun``) that touches neither Qt nor MRML;
  it only stores its progress under a lock, and a ``QTimer`` on the main thread polls it;
  Cancel sets a ``threading.Event``;
- ``logic.apply`` back on the main thread, only if the run was not cancelled, so a
  cancelled run leaves the scene as it was;

and offers to pip-install missing packages (``install``) after asking, unless this Slicer's
Python is too old for their pinned releases (then it says which Slicer is needed). Like the widget
files, it imports Qt and the Slicer application and runs only inside Slicer.
"""
from __future__ import annotations

import pathlib
import threading
import time
import traceback
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import qt
import slicer
import vtk
from slicer.i18n import tr as _

from . import install

POLL_INTERVAL_MS = 100
PARAMETER_NAME_PROPERTY = "SlicerParameterName"


def pathText(path: Optional[pathlib.Path]) -> str:
    """A path field as text; an empty ctkPathLineEdit reads back as Path('.')."""
    text = str(path) if path is not None else ""
    return "" if text in ("", ".") else text


def singletonParameterNode(scene, moduleName: str):
    """The scripted-module node that holds ``moduleName``'s parameters in ``scene``, created on first use."""
    node = scene.GetSingletonNode(moduleName, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)  # the Python variable owns it now (as ScriptedLoadableModuleLogic does)
        node.SetSingletonTag(moduleName)
        node.SetName(scene.GenerateUniqueName(moduleName))
        node.SetAttribute("ModuleName", moduleName)
        node = scene.AddNode(node)
    return node


class BackgroundRun:
    """One ``compute`` call in a worker thread, polled from the GUI thread.

    The worker only writes plain Python values under a lock: Qt objects and MRML
    nodes are used from the main thread only.
    """

    def __init__(self, compute: Callable, job: Any) -> None:
        self.cancel = threading.Event()
        self.startTime = time.monotonic()
        self._lock = threading.Lock()
        self._stage = ""
        self._fraction: Optional[float] = 0.0
        self._done = False
        self._result: Any = None
        self._error: Optional[BaseException] = None
        self._details = ""
        self._thread = threading.Thread(
            target=self._work, args=(compute, job), name="OrganGuidanceCompute", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: Optional[float] = None) -> None:
        self._thread.join(timeout)

    def report(self, stage: str, fraction: Optional[float]) -> None:
        """The progress callback handed to ``compute`` (runs in the worker thread)."""
        with self._lock:
            self._stage, self._fraction = str(stage), fraction

    def _work(self, compute: Callable, job: Any) -> None:
        result, error, details = None, None, ""
        try:
            result = compute(job, self.cancel, self.report)
        except Exception as exc:  # handed to the GUI thread, which reports it
            error, details = exc, traceback.format_exc()
        with self._lock:
            self._result, self._error, self._details, self._done = result, error, details, True

    def progress(self) -> Tuple[str, Optional[float], bool]:
        with self._lock:
            return self._stage, self._fraction, self._done

    def outcome(self) -> Tuple[Any, Optional[BaseException], str]:
        with self._lock:
            return self._result, self._error, self._details


def isCancellation(error: Optional[BaseException]) -> bool:
    if error is None:
        return False
    try:
        from .providers import RunCancelled
    except ImportError:
        return False
    return isinstance(error, RunCancelled)


class RunMessages(NamedTuple):
    """The user-visible texts in which the panels built on ``RunPanelBase`` differ."""

    applyTooltip: str  # the Apply button's tooltip when nothing blocks it
    preparing: str  # status while ``logic.prepare`` runs
    startFailed: str  # the settings or ``logic.prepare`` failed
    runFailed: str  # ``logic.compute`` raised
    applyFailed: str  # ``logic.apply`` raised
    overwriteQuestion: str  # formatted with ``name`` and ``count`` of the output segmentation
    title: str  # window title of the overwrite question


class RunPanelBase(qt.QWidget):
    """What a module panel needs to run its logic as prepare / compute in a worker / apply.

    Shared by ``OrganGuidancePanel`` and CRCSegmentation's panel. The panel's parameter node
    has ``inputVolume`` (the CT) and ``outputSegmentation``; its .ui file has ``applyButton``,
    ``cancelButton``, ``statusLabel`` and ``progressBar``; its logic has ``prepare(ct, settings)``,
    ``compute(job, cancel, report)`` and ``apply(job, result, outputNode)``. A subclass loads its
    .ui file, hands it to this constructor, sets up what else it needs, calls
    ``initializeParameterNode`` and implements the hooks: ``_createLogic``, ``_sceneParameterNode``,
    ``settings``, ``_updateGui``, ``_sections``, ``_ensureDependencies``, ``_runMessages`` and
    ``_doneText`` (and ``_labelComboBoxes`` where its combo boxes need readable texts).
    """

    def __init__(self, uiWidget: Any, logic: Any = None, parent: Any = None, showDialogs: bool = True) -> None:
        super().__init__(parent)
        self._logic = logic
        self._showDialogs = showDialogs
        self._parameterNode: Any = None
        self._guiTag: Any = None
        self._parameterObserver: Optional[int] = None
        self._run: Optional[BackgroundRun] = None
        self._runContext: Tuple[Any, Any, Any] = (None, None, None)  # job, output node, CT node
        # Set by runInBackground: called on the main thread with (job, result) instead of logic.apply.
        self._runFinish: Optional[Callable[[Any, Any], None]] = None
        # True while the packages the settings need are missing: Apply then offers to install
        # them instead of being blocked by a failing settings check.
        self._coreMissing = False

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

        self._sceneObservers = [
            slicer.mrmlScene.AddObserver(slicer.mrmlScene.StartCloseEvent, self._onSceneStartClose),
            slicer.mrmlScene.AddObserver(slicer.mrmlScene.EndCloseEvent, self._onSceneEndClose),
        ]

    # ------------------------------------------------------------------ hooks
    def _createLogic(self) -> Any:
        """The module's logic (import the engine here, not at load time)."""
        raise NotImplementedError

    def _sceneParameterNode(self) -> Any:
        """The module's parameter node in ``slicer.mrmlScene``."""
        raise NotImplementedError

    def settings(self) -> Any:
        """The parameter node as the logic's settings."""
        raise NotImplementedError

    def _updateGui(self, *args: Any) -> None:
        """Show the parameter node's state (called whenever it is modified)."""
        raise NotImplementedError

    def _sections(self) -> Sequence[Any]:
        """The sections whose parameters must not change under a running job."""
        raise NotImplementedError

    def _ensureDependencies(self) -> bool:
        """True when every package of the run imports; otherwise ask, then install."""
        raise NotImplementedError

    def _runMessages(self) -> RunMessages:
        raise NotImplementedError

    def _doneText(self, seconds: float, job: Any, result: Any, segmentation: Any) -> str:
        """The status after a run that reached the scene."""
        raise NotImplementedError

    # ------------------------------------------------------------------ logic and parameter node
    def getLogic(self):
        """Created on first use: importing the engine needs the dependencies installed."""
        if self._logic is None:
            self._logic = self._createLogic()
        return self._logic

    def parameterNode(self) -> Any:
        return self._parameterNode

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self._sceneParameterNode())
        if self._parameterNode.inputVolume is None:
            # A label map is a scalar volume subclass too; a CT is what is wanted here.
            volumes = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                       if not n.IsA("vtkMRMLLabelMapVolumeNode")]
            if volumes:
                self._parameterNode.inputVolume = volumes[0]

    def setParameterNode(self, parameterNode: Any) -> None:
        if self._parameterNode is not None:
            self._parameterNode.disconnectGui(self._guiTag)
            self._parameterNode.RemoveObserver(self._parameterObserver)
        self._parameterNode = parameterNode
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

    def _labelComboBoxes(self) -> None:
        """Readable item texts; the connectors fill the combo boxes with the raw choice values."""

    @staticmethod
    def _setItemTexts(labels: Sequence[Tuple[Any, Dict[str, str]]]) -> None:
        """Replace each combo box's raw choice values by the readable texts given for them."""
        for comboBox, texts in labels:
            for index in range(comboBox.count):
                key = comboBox.itemText(index)
                if key in texts:
                    comboBox.setItemText(index, texts[key])  # the connector reads the index, not the text

    # ------------------------------------------------------------------ state shown in the GUI
    def _applyBlocker(self) -> str:
        """Why Apply cannot run now, or "" when it can."""
        p = self._parameterNode
        if p is None:
            return _("No parameter node.")
        if p.inputVolume is None:
            return _("Select a CT volume.")
        if self._coreMissing:
            return ""  # Apply offers to install first; the settings are checked after that
        try:
            valid, reason = self.settings().is_valid()
        except Exception as error:  # e.g. the engine fails to import: say so instead of a silent grey button
            return str(error)
        return "" if valid else reason

    def _updateButtons(self) -> None:
        running = self._run is not None
        blocker = "" if running else self._applyBlocker()
        self.ui.applyButton.setEnabled(not running and not blocker)
        self.ui.applyButton.setToolTip(blocker or self._runMessages().applyTooltip)
        self.ui.cancelButton.setEnabled(running and not self._run.cancel.is_set())
        if blocker:
            self._setStatus(blocker)

    def _setRunning(self, running: bool) -> None:
        for section in self._sections():
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

    def _reportError(self, message: str, error: BaseException, details: str = "") -> None:
        details = details or "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self._setStatus(f"{message} {error}")
        if self._showDialogs:
            slicer.util.errorDisplay(f"{message}\n\n{error}", detailedText=details)

    # ------------------------------------------------------------------ dependencies
    def _checkInstallable(self, missing: Sequence[Any]) -> bool:
        """False (after showing why) when ``missing`` cannot install on this Slicer's Python: no doomed pip run."""
        problem = install.unsupported_python_message(missing, slicer_version=slicer.app.applicationVersion)
        if problem is None:
            return True
        self._setStatus(_("Not started: {problem}").format(problem=problem))
        if self._showDialogs:
            slicer.util.errorDisplay(problem, windowTitle=_("Install Python packages"))
        return False

    def _askToInstall(self, question: str) -> bool:
        """Ask ``question``; False (and the status says why nothing started) unless the user agrees."""
        if not self._showDialogs or not slicer.util.confirmOkCancelDisplay(
            question, windowTitle=_("Install Python packages")
        ):
            self._setStatus(_("Not started: required Python packages are not installed."))
            return False
        return True

    def _installRequirements(self, missing: Sequence[Any]) -> bool:
        """Install ``missing`` (PyTorch first); False after reporting a failure."""
        if not self._checkInstallable(missing):  # the panels check before asking; this guards other callers
            return False
        try:
            with slicer.util.WaitCursor():
                if any(requirement.installer == "pytorch" for requirement in missing):
                    self.installTorch()  # before TotalSegmentator, or pip pulls a generic torch wheel
                pipRequirements = install.pip_requirements(missing)
                if pipRequirements:
                    # A space-separated string: every Slicer release's pip_install accepts it.
                    slicer.util.pip_install(" ".join(pipRequirements))
        except Exception as error:
            self._reportError(_("Installing Python packages failed."), error)
            return False
        return True

    def _allInstalled(self, required: Sequence[Any], stillMissingMessage: str) -> bool:
        """True when every package of ``required`` imports now; otherwise report the missing ones."""
        stillMissing = install.missing_requirements(required)
        if stillMissing:
            self._reportError(stillMissingMessage, RuntimeError(install.describe(stillMissing)))
            return False
        return True

    @staticmethod
    def installTorch() -> None:
        """PyTorch and torchvision through the PyTorch extension, which picks the build for the GPU driver."""
        import importlib.util

        vision = install.TORCHVISION_REQUIREMENT.pip_requirement
        try:
            import PyTorchUtils
        except ImportError:
            # Without the extension, PyPI's default build (CPU-only on Windows) still runs, slower.
            slicer.util.pip_install(f"{install.TORCH_REQUIREMENT.pip_requirement} {vision}")
            return
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            torch = torchLogic.installTorch(
                askConfirmation=True, torchVersionRequirement=install.TORCH_VERSION_REQUIREMENT,
                torchvisionVersionRequirement=install.TORCHVISION_VERSION_REQUIREMENT,
            )
            if torch is None:
                raise RuntimeError(_("PyTorch was not installed; the run cannot start without it."))
        if importlib.util.find_spec("torchvision") is None:
            # PyTorchUtils installs torchvision only together with torch; the pin keeps the installed torch build.
            slicer.util.pip_install(vision)

    # ------------------------------------------------------------------ running
    def onApply(self) -> None:
        if self._run is not None or self._parameterNode is None:
            return
        if not self._ensureDependencies():
            self._updateButtons()
            return
        p = self._parameterNode
        ctNode, outputNode = p.inputVolume, p.outputSegmentation
        messages = self._runMessages()
        try:
            settings = self.settings()
            valid, reason = settings.is_valid()
            if not valid:
                raise ValueError(reason)
            if not self._confirmOutputNode(outputNode):
                self._setStatus(_("Not started."))
                return
            self._setStatus(messages.preparing)
            with slicer.util.WaitCursor():
                job = self.getLogic().prepare(ctNode, settings)
        except Exception as error:
            self._reportError(messages.startFailed, error)
            return
        self._run = BackgroundRun(self.getLogic().compute, job)
        self._runContext = (job, outputNode, ctNode)
        self._setProgress(0.0)
        self._setStatus(_("Starting..."))
        self._setRunning(True)
        self._run.start()
        self._timer.start()

    def runInBackground(self, compute: Callable, job: Any, finish: Callable[[Any, Any], None]) -> bool:
        """Run another step (e.g. U-SAM propagation) like Apply: in the worker, with progress and Cancel.

        ``compute(job, cancel, report)`` runs in the worker thread without MRML; ``finish(job, result)``
        writes the result on the main thread. False when a run is going on already.
        """
        if self._run is not None:
            return False
        self._run = BackgroundRun(compute, job)
        self._runContext = (job, None, None)
        self._runFinish = finish
        self._setProgress(0.0)
        self._setStatus(_("Starting..."))
        self._setRunning(True)
        self._run.start()
        self._timer.start()
        return True

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
        finish, self._runFinish = self._runFinish, None
        messages = self._runMessages()
        try:
            if run.cancel.is_set() or isCancellation(error):
                # Nothing reaches the scene: apply() is the only step that writes to it.
                self._setProgress(0.0)
                self._setStatus(_("Cancelled"))
                return
            if error is not None:
                self._setProgress(0.0)
                self._reportError(messages.runFailed, error, details)
                return
            if finish is not None:
                with slicer.util.WaitCursor():
                    finish(job, result)
                self._setProgress(1.0)
                return
            with slicer.util.WaitCursor():
                segmentation = self.getLogic().apply(job, result, outputNode)
                self._showResult(segmentation, ctNode)
            self._setProgress(1.0)
            self._setStatus(self._doneText(time.monotonic() - run.startTime, job, result, segmentation))
        except Exception as applyError:
            self._reportError(messages.applyFailed, applyError)
        finally:
            self._setRunning(False)

    def _confirmOutputNode(self, outputNode: Any) -> bool:
        """Ask before writing into a segmentation that already has segments."""
        if outputNode is None or not self._showDialogs:
            return True
        count = outputNode.GetSegmentation().GetNumberOfSegments()
        if count == 0:
            return True
        messages = self._runMessages()
        return slicer.util.confirmOkCancelDisplay(
            messages.overwriteQuestion.format(name=outputNode.GetName(), count=count),
            windowTitle=messages.title,
        )

    def _showResult(self, segmentation: Any, ctNode: Any) -> None:
        """Select the result and show it over the CT in the slice views and in 3D."""
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

    # ------------------------------------------------------------------ scene and lifetime
    def _onSceneStartClose(self, caller: Any = None, event: Any = None) -> None:
        if self._run is not None:
            self._run.cancel.set()  # its nodes are going away: discard the result

    def _onSceneEndClose(self, caller: Any = None, event: Any = None) -> None:
        self.initializeParameterNode()  # the scene's parameter node was reset

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
