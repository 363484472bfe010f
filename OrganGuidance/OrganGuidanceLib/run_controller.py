"""What a SlicerCRC module panel decides, without Qt: runs, the Apply rule and the install flow.

Both panels (Organ Guidance and CRC Segmentation) run their logic in three steps:

- ``logic.prepare`` on the main thread (reads MRML nodes, checks inputs);
- ``logic.compute`` in a worker thread (``BackgroundRun``) that touches neither Qt nor MRML: it
  only stores its progress under a lock, and the panel's timer calls ``RunController.poll``;
  Cancel sets a ``threading.Event``;
- ``logic.apply`` back on the main thread, only if the run was neither cancelled nor failed, so
  such a run leaves the scene as it was and says why in ``status``.

``InstallFlow`` is the one install template (which packages are missing, ask once, install,
check again, or say which Slicer is needed), used by both panels and the point-refinement section.

Standard library and MRML only, so the tests drive it under slicer-core: the Qt files
(``run_panel.py`` and the widgets) connect widgets to these classes and hand them the dialogs as
callables (``Dialogs``).
"""
from __future__ import annotations

import contextlib
import importlib
import pathlib
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, List, NamedTuple, Optional, Sequence, Tuple

from OrganGuidanceLib import install

try:  # Slicer's translation function; slicer-core (the tests) has none
    from slicer.i18n import tr
except ImportError:  # pragma: no cover - depends on the Slicer build
    def tr(text: str) -> str:
        return text
_ = tr


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


def firstCtVolume(scene) -> Any:
    """The first scalar volume of ``scene`` that is not a label map (a label map is a scalar volume subclass too)."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if not node.IsA("vtkMRMLLabelMapVolumeNode"):
            return node
    return None


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
            target=self._work, args=(compute, job), name="SlicerCRCCompute", daemon=True
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
    from OrganGuidanceLib.progress import RunCancelled  # standard library only

    return isinstance(error, RunCancelled)


class RunMessages(NamedTuple):
    """The user-visible texts in which the panels differ."""

    applyTooltip: str  # the Apply button's tooltip when nothing blocks it
    preparing: str  # status while ``logic.prepare`` runs
    startFailed: str  # the settings or ``logic.prepare`` failed
    runFailed: str  # ``logic.compute`` raised
    applyFailed: str  # ``logic.apply`` raised
    overwriteQuestion: str  # formatted with ``name`` and ``count`` of the output segmentation
    title: str  # window title of the overwrite question and of the panel's messages


def _never(question: str) -> bool:
    return False


def _always(question: str, title: str) -> bool:
    return True


def _quiet(text: str, details: str) -> None:
    return None


@dataclass
class Dialogs:
    """How a controller talks to the user. The Qt binding passes Slicer's dialogs; tests pass recorders.

    The defaults are those of a panel without dialogs (``showDialogs=False``): nothing is installed
    without a question answered, an existing output segmentation is written into, errors go to the status only.
    """

    askInstall: Callable[[str], bool] = _never  # (question) -> install?
    confirmOverwrite: Callable[[str, str], bool] = _always  # (question, title) -> write into it?
    showError: Callable[[str, str], None] = _quiet  # (text, details)
    busy: Callable[[], ContextManager[Any]] = contextlib.nullcontext  # around blocking main-thread steps


@dataclass
class ButtonState:
    """The run buttons as the rules want them; ``applyReason`` says why Apply is disabled ("" when it is not)."""

    applyEnabled: bool
    applyReason: str
    applyTooltip: str
    cancelEnabled: bool


# ---------------------------------------------------------------------------- install flow
def installWithSlicer(missing: Sequence[install.Requirement]) -> None:
    """Install ``missing`` into Slicer's Python: PyTorch first (through the PyTorch extension), then pip."""
    import slicer

    if any(requirement.installer == "pytorch" for requirement in missing):
        installTorch()  # before TotalSegmentator, or pip pulls a generic torch wheel
    pipRequirements = install.pip_requirements(missing)
    if pipRequirements:
        # A space-separated string: every Slicer release's pip_install accepts it.
        slicer.util.pip_install(" ".join(pipRequirements))


def installTorch() -> None:
    """PyTorch and torchvision through the PyTorch extension, which picks the build for the GPU driver."""
    import importlib.util

    import slicer

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


@dataclass
class InstallFlow:
    """Missing packages -> (this Python too old? say which Slicer) -> ask once -> install -> check again.

    ``setStatus`` and ``reportError(message, error, details)`` show the outcome; ``installer`` installs
    (``installWithSlicer`` in Slicer); ``slicerVersion`` only names the application in messages;
    ``pythonVersion`` is the running interpreter unless given.
    """

    dialogs: Dialogs
    setStatus: Callable[[str], None]
    reportError: Callable[[str, BaseException, str], None]
    installer: Callable[[Sequence[install.Requirement]], None] = installWithSlicer
    slicerVersion: str = ""
    pythonVersion: Optional[Sequence[int]] = None
    questions: List[str] = field(default_factory=list)  # every question asked, for the log and the tests

    def ensure(self, required: Sequence[install.Requirement], who: str) -> bool:
        """True when every package of ``required`` imports (after installing, if the user agrees)."""
        missing = install.missing_requirements(required)
        if not missing:
            return True
        problem = install.unsupported_python_message(missing, python_version=self.pythonVersion,
                                                     slicer_version=self.slicerVersion or None)
        if problem is not None:  # no doomed pip run
            self.setStatus(_("Not started: {problem}").format(problem=problem))
            self.dialogs.showError(problem, "")
            return False
        question = "\n\n".join([
            _("{who} needs Python packages that are not installed yet:").format(who=who),
            install.describe(missing),
            _("Install them now? This needs an internet connection and can take several minutes, "
              "during which Slicer does not respond."),
        ])
        self.questions.append(question)
        if not self.dialogs.askInstall(question):
            self.setStatus(_("Not started: required Python packages are not installed."))
            return False
        self.setStatus(_("Installing Python packages..."))
        try:
            with self.dialogs.busy():
                self.installer(missing)
        except Exception as error:
            self.reportError(_("Installing Python packages failed."), error, "")
            return False
        importlib.invalidate_caches()  # find_spec must see what pip just wrote
        stillMissing = install.missing_requirements(required)
        if stillMissing:
            self.reportError(_("These packages are still missing after installation; restart Slicer and try again:"),
                             RuntimeError(install.describe(stillMissing)), "")
            return False
        self.setStatus(_("Python packages installed."))
        return True


# ---------------------------------------------------------------------------- the run state machine
class RunController:
    """The run state machine of a module panel: Apply -> prepare -> compute in a worker -> apply or discard.

    ``parameters`` is the panel's parameter node (or any object with its fields); it has
    ``inputVolume`` (the CT) and ``outputSegmentation``. A subclass (one per panel, in its
    ``panel_state``) implements ``createLogic``, ``settings``, ``requirements``, ``messages`` and
    ``doneText``. The Qt binding calls ``apply``, ``cancel`` and (from a timer) ``poll``, and shows
    ``status``, ``progress`` and ``buttons()``; ``onChange`` tells it that these changed.
    """

    who = "SlicerCRC"  # names the panel in the install question

    def __init__(self, scene, logic: Any = None, dialogs: Optional[Dialogs] = None,
                 installer: Callable[[Sequence[install.Requirement]], None] = installWithSlicer,
                 slicerVersion: str = "", pythonVersion: Optional[Sequence[int]] = None) -> None:
        self.scene = scene
        self._logic = logic
        self.dialogs = dialogs or Dialogs()
        self.parameters: Any = None
        self.status = ""
        self.progress: Optional[float] = 0.0  # None: busy, no fraction known
        self.lastError = ""  # the message of the last failure ("" after a run that reached the scene)
        self.lastSegmentation: Any = None  # the node the last run wrote
        self.onChange: Callable[[], None] = lambda: None
        self.onResult: Callable[[Any, Any], None] = lambda segmentation, ctNode: None  # (result node, CT node)
        self.installFlow = InstallFlow(self.dialogs, self.setStatus, self.reportError, installer, slicerVersion,
                                       pythonVersion)
        self._run: Optional[BackgroundRun] = None
        self._runContext: Tuple[Any, Any, Any] = (None, None, None)  # job, output node, CT node
        self._runFinish: Optional[Callable[[Any, Any], None]] = None  # replaces logic.apply (runInBackground)

    # ------------------------------------------------------------------ hooks
    def createLogic(self) -> Any:
        """The module's logic (import the engine here, not at load time)."""
        raise NotImplementedError

    def settings(self) -> Any:
        """``parameters`` as the logic's settings (imports the engine)."""
        raise NotImplementedError

    def requirements(self) -> List[install.Requirement]:
        """The packages a run with the current parameters needs."""
        raise NotImplementedError

    def messages(self) -> RunMessages:
        raise NotImplementedError

    def doneText(self, seconds: float, job: Any, result: Any, segmentation: Any) -> str:
        """The status after a run that reached the scene."""
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def getLogic(self) -> Any:
        """Created on first use: importing the engine needs the dependencies installed."""
        if self._logic is None:
            self._logic = self.createLogic()
        return self._logic

    @property
    def running(self) -> bool:
        return self._run is not None

    def setParameters(self, parameters: Any) -> None:
        self.parameters = parameters
        if parameters is not None and parameters.inputVolume is None:
            parameters.inputVolume = firstCtVolume(self.scene)

    def setStatus(self, text: str) -> None:
        self.status = text
        self.onChange()

    def reportError(self, message: str, error: BaseException, details: str = "") -> None:
        details = details or "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self.lastError = f"{message} {error}"
        self.setStatus(self.lastError)
        self.dialogs.showError(f"{message}\n\n{error}", details)

    def missingPackages(self) -> List[install.Requirement]:
        return install.missing_requirements(self.requirements())

    def applyBlocker(self) -> str:
        """Why Apply cannot run now, or "" when it can."""
        p = self.parameters
        if p is None:
            return _("No parameter node.")
        if p.inputVolume is None:
            return _("Select a CT volume.")
        if self.missingPackages():
            return ""  # Apply offers to install them first; the settings are checked after that
        try:
            valid, reason = self.settings().is_valid()
        except Exception as error:  # e.g. the engine fails to import: say so instead of a silent grey button
            return str(error)
        return "" if valid else reason

    def buttons(self) -> ButtonState:
        run = self._run
        reason = "" if run is not None else self.applyBlocker()
        return ButtonState(
            applyEnabled=run is None and not reason,
            applyReason=reason,
            applyTooltip=reason or self.messages().applyTooltip,
            cancelEnabled=run is not None and not run.cancel.is_set(),
        )

    # ------------------------------------------------------------------ running
    def ensureDependencies(self) -> bool:
        return self.installFlow.ensure(self.requirements(), self.who)

    def apply(self) -> bool:
        """Apply: install what is missing (after asking), check, prepare, start the worker. True when it started."""
        if self._run is not None or self.parameters is None:
            return False
        blocker = self.applyBlocker()
        if blocker:  # what the disabled button says; a script calling apply() gets the same answer
            self.setStatus(blocker)
            return False
        if not self.ensureDependencies():
            self.onChange()
            return False
        p = self.parameters
        ctNode, outputNode = p.inputVolume, p.outputSegmentation
        messages = self.messages()
        self.lastError = ""
        try:
            settings = self.settings()
            valid, reason = settings.is_valid()
            if not valid:
                raise ValueError(reason)
            if not self._confirmOutputNode(outputNode):
                self.setStatus(_("Not started."))
                return False
            self.setStatus(messages.preparing)
            with self.dialogs.busy():
                job = self.getLogic().prepare(ctNode, settings)
        except Exception as error:
            self.reportError(messages.startFailed, error)
            return False
        self._start(self.getLogic().compute, job, (job, outputNode, ctNode), None)
        return True

    def runInBackground(self, compute: Callable, job: Any, finish: Callable[[Any, Any], None]) -> bool:
        """Run another step (e.g. U-SAM propagation) like Apply: in the worker, with progress and Cancel.

        ``compute(job, cancel, report)`` runs in the worker thread without MRML; ``finish(job, result)``
        writes the result on the main thread. False when a run is going on already.
        """
        if self._run is not None:
            return False
        self._start(compute, job, (job, None, None), finish)
        return True

    def _start(self, compute: Callable, job: Any, context: Tuple[Any, Any, Any],
               finish: Optional[Callable[[Any, Any], None]]) -> None:
        self._run = BackgroundRun(compute, job)
        self._runContext = context
        self._runFinish = finish
        self.progress = 0.0
        self.setStatus(_("Starting..."))
        self._run.start()

    def cancel(self) -> None:
        if self._run is None:
            return
        self._run.cancel.set()
        self.setStatus(_("Cancelling..."))

    def poll(self) -> bool:
        """Show the worker's progress; once it is done, apply or discard its result. True while it runs."""
        run = self._run
        if run is None:
            return False
        stage, fraction, done = run.progress()
        if not done:
            if not run.cancel.is_set():
                self.progress = fraction
                if stage:
                    self.setStatus(_("Running: {stage}").format(stage=stage))
            return True
        run.join()
        self._run = None
        self._finish(run)
        return False

    def wait(self, timeout: float = 600.0, interval: float = 0.05) -> None:
        """Poll until the run is over (console scripts and tests; the panel's timer polls instead)."""
        deadline = time.monotonic() + timeout
        while self.poll():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the run did not end within {timeout} s")
            time.sleep(interval)

    def _finish(self, run: BackgroundRun) -> None:
        result, error, details = run.outcome()
        job, outputNode, ctNode = self._runContext
        self._runContext = (None, None, None)
        finish, self._runFinish = self._runFinish, None
        messages = self.messages()
        try:
            if run.cancel.is_set() or isCancellation(error):
                # Nothing reaches the scene: apply() is the only step that writes to it.
                self.progress = 0.0
                self.setStatus(_("Cancelled"))
                return
            if error is not None:
                self.progress = 0.0
                self.reportError(messages.runFailed, error, details)
                return
            with self.dialogs.busy():
                if finish is not None:
                    finish(job, result)
                    self.progress = 1.0
                    return
                segmentation = self.getLogic().apply(job, result, outputNode)
                self._showResult(segmentation, ctNode)
            self.progress = 1.0
            self.lastSegmentation = segmentation
            self.setStatus(self.doneText(time.monotonic() - run.startTime, job, result, segmentation))
        except Exception as applyError:
            self.progress = 0.0
            self.reportError(messages.applyFailed, applyError)
        finally:
            self.onChange()

    def _confirmOutputNode(self, outputNode: Any) -> bool:
        """Ask before writing into a segmentation that already has segments."""
        if outputNode is None:
            return True
        count = outputNode.GetSegmentation().GetNumberOfSegments()
        if count == 0:
            return True
        messages = self.messages()
        return self.dialogs.confirmOverwrite(
            messages.overwriteQuestion.format(name=outputNode.GetName(), count=count), messages.title)

    def _showResult(self, segmentation: Any, ctNode: Any) -> None:
        """Select the result and make it visible in the slice views and in 3D (the binding sets the layers)."""
        segmentation.CreateDefaultDisplayNodes()
        segmentation.CreateClosedSurfaceRepresentation()
        displayNode = segmentation.GetDisplayNode()
        if displayNode is not None:
            displayNode.SetVisibility(True)
            displayNode.SetVisibility3D(True)
        if self.parameters is not None:
            self.parameters.outputSegmentation = segmentation
        self.onResult(segmentation, ctNode)

    # ------------------------------------------------------------------ scene and lifetime
    def sceneClosing(self) -> None:
        if self._run is not None:
            self._run.cancel.set()  # its nodes are going away: discard the result

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel a running job and wait for its worker (module cleanup, application exit)."""
        if self._run is not None:
            self._run.cancel.set()
            self._run.join(timeout=timeout)
            self._run = None
